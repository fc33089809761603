"""A real etcd server for tests and the demo: temp data dir, free ports, low-latency flags.

``EtcdServer()`` runs in the current namespace on 127.0.0.1 with free ports; ``EtcdServer(host)`` runs
inside a lab host's namespace, listening on the host's underlay IP (and on 127.0.0.1 there). The data
dir is a fresh directory under /tmp holding etcd's log (``etcd.log``); ``stop()`` removes it,
``kill()`` and ``restart()`` keep it. Several servers with the same ``initial_cluster`` form a cluster
(start each with ``wait=False``, then ``wait_healthy()``); :func:`start_etcd_cluster` does that on
lab hosts. ``EtcdServer(..., tls=TlsFiles(...))`` serves clients over https (optionally demanding a
client certificate); ``start(local_only=True)`` serves 127.0.0.1 only, so flanneld hosts cannot reach
it while a test edits the data "behind their back" (changes and compaction during an outage).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from pyflannel.lab.netns import CommandError, Host, Lab, run, terminate

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0


def free_port(ip: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (bind to port 0 and let the kernel pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        port: int = s.getsockname()[1]
        return port


def etcd_bin() -> str:
    return os.environ.get("ETCD_BIN", "/usr/bin/etcd")


def etcdctl_bin() -> str:
    return os.environ.get("ETCDCTL_BIN") or shutil.which("etcdctl") or "/usr/bin/etcdctl"


def available() -> bool:
    """True if the etcd and etcdctl binaries exist."""
    return os.access(etcd_bin(), os.X_OK) and os.access(etcdctl_bin(), os.X_OK)


class EtcdError(RuntimeError):
    pass


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for an https etcd: its certificate and key, the CA it trusts for client
    certificates, and the client certificate etcdctl presents (when ``client_cert_auth``)."""

    ca: str
    cert: str
    key: str
    client_cert_auth: bool = False
    client_cert: str | None = None
    client_key: str | None = None


class EtcdServer:
    """One etcd member; a context manager (``start()`` on enter, ``stop()`` on exit)."""

    def __init__(
        self,
        host: Host | None = None,
        client_ip: str = "127.0.0.1",
        client_port: int | None = None,
        peer_port: int | None = None,
        extra_args: Sequence[str] = (),
        name: str = "default",
        initial_cluster: str | None = None,
        cluster_token: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.host = host
        self.ip = str(host.ip) if host is not None and client_ip == "127.0.0.1" else client_ip
        # Inside a host namespace every port is free; in the root namespace ask the kernel.
        self.client_port = client_port or (2379 if host is not None else free_port(self.ip))
        self.peer_port = peer_port or (2380 if host is not None else free_port(self.ip))
        self.name = name
        self.extra_args = list(extra_args)
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        # Members of one cluster must share the token (it seeds the cluster ID).
        self.cluster_token = cluster_token or f"pyflannel-{name}-{os.getpid()}"
        self.tls = tls
        self.local_only = False
        self.data_dir: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        where = self.host.netns if self.host is not None else "root netns"
        return f"EtcdServer({self.name!r}, {self.endpoint}, {where})"

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.ip}:{self.client_port}"

    @property
    def local_endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:{self.peer_port}"

    @property
    def log_path(self) -> str | None:
        return os.path.join(self.data_dir, "etcd.log") if self.data_dir else None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def command(self) -> list[str]:
        assert self.data_dir is not None
        listen = [self.endpoint]
        if self.ip != "127.0.0.1":
            listen.append(self.local_endpoint)
        if self.local_only:
            listen = [self.local_endpoint]
        tls: list[str] = []
        if self.tls is not None:
            tls = [f"--cert-file={self.tls.cert}", f"--key-file={self.tls.key}"]
            if self.tls.client_cert_auth:
                tls += ["--client-cert-auth", f"--trusted-ca-file={self.tls.ca}"]
        return [
            etcd_bin(),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={','.join(listen)}",
            f"--advertise-client-urls={listen[0]}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self.cluster_token}",
            # Tests want fast elections and no background snapshots; the quota stays at its default.
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--snapshot-count=1000000",
            "--logger=zap",
            "--log-outputs=stderr",
            *tls,
            *self.extra_args,
        ]

    def start(self, wait: bool = True, local_only: bool = False) -> None:
        """Start etcd (a fresh data dir unless one is kept from before); wait until healthy.

        ``local_only``: listen on 127.0.0.1 only (inside its namespace), unreachable from lab hosts.
        """
        if self.proc is not None and self.proc.poll() is None:
            return
        self.local_only = local_only
        if self.data_dir is None:
            self.data_dir = tempfile.mkdtemp(prefix=f"pyflannel-etcd-{self.name}-", dir="/tmp")
        cmd = self.command()
        assert self.log_path is not None
        if self.host is not None:
            self.proc = self.host.popen(*cmd, log_path=self.log_path)
        else:
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        log.debug("%r: started pid %d", self, self.proc.pid)
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Poll ``etcdctl endpoint health`` until it passes; raise :class:`EtcdError` with the log tail."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc is not None else None
                raise EtcdError(f"{self!r} exited with {code} while starting\n{self.log_tail()}")
            if self.healthy():
                return
            if time.monotonic() >= deadline:
                raise EtcdError(f"{self!r} not healthy after {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.1)

    def healthy(self) -> bool:
        try:
            self.etcdctl("endpoint", "health", "--dial-timeout=1s", "--command-timeout=1s", timeout=5)
        except (CommandError, subprocess.TimeoutExpired):
            return False
        return True

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, errors="replace") as f:
                return "\n".join(f.read().splitlines()[-lines:])
        except OSError:
            return ""

    def _terminate(self, sig: int) -> None:
        if self.proc is not None:
            terminate(self.proc, sig, timeout=10)
            self.proc = None

    def stop(self) -> None:
        """SIGTERM (then SIGKILL) etcd and remove its data dir. Idempotent."""
        self._terminate(signal.SIGTERM)
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def down(self) -> None:
        """SIGTERM etcd (an admin's ``systemctl stop``); the data dir stays for ``start()``."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL etcd, as a crash would; the data dir stays, so ``start()`` brings the data back."""
        self._terminate(signal.SIGKILL)

    def restart(self) -> None:
        """Stop etcd cleanly and start it again on the same data dir and ports."""
        self._terminate(signal.SIGTERM)
        self.start()

    def etcdctl(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        """``ETCDCTL_API=3 etcdctl --endpoints=<endpoint> args...`` (in the server's namespace); stdout."""
        endpoint = self.local_endpoint if self.local_only else self.endpoint
        tls: list[str] = []
        if self.tls is not None:
            tls.append(f"--cacert={self.tls.ca}")
            if self.tls.client_cert and self.tls.client_key:
                tls += [f"--cert={self.tls.client_cert}", f"--key={self.tls.client_key}"]
        cmd = ["env", "ETCDCTL_API=3", etcdctl_bin(), f"--endpoints={endpoint}", *tls, *args]
        netns = self.host.netns if self.host is not None else None
        return run(*cmd, check=check, timeout=timeout, netns=netns).stdout


def start_etcd_cluster(lab: Lab, size: int = 3, prefix: str = "etcd") -> list[EtcdServer]:
    """``size`` etcd members forming one cluster, each on a lab host of its own.

    Hosts ``<prefix>1``..``<prefix>N`` take the underlay addresses .253, .252, ... (as
    :meth:`Lab.start_etcd` does); the lab stops the members when it closes.
    """
    hosts = [lab.add_host(f"{prefix}{i + 1}", index=253 - len(lab.etcd_servers) - i) for i in range(size)]
    initial = ",".join(f"{prefix}{i + 1}=http://{h.ip}:2380" for i, h in enumerate(hosts))
    token = f"pyflannel-{lab.prefix}-{prefix}"
    servers = [
        EtcdServer(h, client_ip=str(h.ip), client_port=2379, peer_port=2380, name=f"{prefix}{i + 1}",
                   initial_cluster=initial, cluster_token=token)
        for i, h in enumerate(hosts)
    ]
    lab.etcd_servers.extend(servers)
    for s in servers:
        s.start(wait=False)
    for s in servers:
        s.wait_healthy(timeout=20)
    return servers
