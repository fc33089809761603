"""A multi-host lab on one machine: network namespaces as "hosts" on one bridge.

Layout of a :class:`Lab` with prefix ``pfab12cd`` and the default underlay 192.168.77.0/24::

    netns pfab12cd-ul       bridge br0 192.168.77.254/24 ("the router"), ip_forward=1
      |-- veth1 ---- eth0   netns pfab12cd-h1   192.168.77.1/24, default via .254, ip_forward=1
      |-- veth2 ---- eth0   netns pfab12cd-h2   192.168.77.2/24, ...
      `-- ...

Every link is created directly inside a lab namespace (``ip -n``), so the root namespace's links,
routes and firewall are never touched. A :class:`Lab` is a context manager: leaving it (also after an
error or Ctrl-C) kills every process started through it (by PID: SIGTERM, then SIGKILL) and any other
process still running in one of its namespaces, then deletes every namespace it created.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import secrets
import signal
import subprocess
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from pyflannel.lab.etcd import EtcdServer

log = logging.getLogger(__name__)

_RTT_RE = re.compile(r"time[=<]([0-9.]+) ms")


class CommandError(subprocess.CalledProcessError):
    """A lab command failed; ``str()`` carries the namespace, the command and its stderr."""

    def __init__(self, netns: str | None, cmd: list[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(returncode, cmd, stdout, stderr)
        self.netns = netns

    def __str__(self) -> str:
        where = f"[{self.netns}] " if self.netns else ""
        err = (self.stderr or "").strip() or (self.stdout or "").strip()
        return f"{where}{' '.join(self.cmd)} exited {self.returncode}: {err}"


def run(
    *cmd: str, check: bool = True, timeout: float = 30, input: str | None = None, netns: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command (in ``netns`` if given) in text mode, capturing its output."""
    argv = ["ip", "netns", "exec", netns, *cmd] if netns else list(cmd)
    proc = subprocess.run(
        argv,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise CommandError(netns, list(cmd), proc.returncode, proc.stdout, proc.stderr)
    return proc


def _enable_forwarding(netns: str) -> None:
    # /proc/sys/net shows the namespace of the process reading it; no dependency on procps' sysctl.
    run("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward", netns=netns)


def netns_list() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    out = run("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(netns: str) -> list[int]:
    out = run("ip", "netns", "pids", netns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def terminate(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
    """Send ``sig`` to one process (by PID), wait up to ``timeout`` s, then SIGKILL it. Returns its exit code."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("pid %d did not exit %.0f s after signal %d: SIGKILL", proc.pid, timeout, sig)
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    try:
        return proc.wait(5)
    except subprocess.TimeoutExpired:
        return None


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while cleaning up: a second Ctrl-C must not leave namespaces behind.

    A held signal is delivered (and raises as usual) once cleanup is over.
    """
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (OSError, ValueError):  # pragma: no cover - not on this platform
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Host:
    """One lab host: a network namespace with ``eth0`` on the lab's underlay bridge."""

    iface = "eth0"

    def __init__(self, lab: Lab, name: str, netns: str, ip: IPv4Address, peer: str) -> None:
        self.lab = lab
        self.name = name
        self.netns = netns
        self.ip = ip
        self.peer = peer  # the veth end in the underlay namespace
        self.procs: list[subprocess.Popen[bytes]] = []

    def __repr__(self) -> str:
        return f"Host({self.name!r}, netns={self.netns!r}, ip={self.ip})"

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 30, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``ip netns exec <netns> cmd...`` in text mode, output captured; raises :class:`CommandError`."""
        return run(*cmd, check=check, timeout=timeout, input=input, netns=self.netns)

    def popen(
        self, *cmd: str, log_path: str | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process in this host; the lab kills it on exit.

        stdout and stderr go to ``log_path`` (appended) if given, else are inherited. ``env`` is laid
        over the current environment. The process gets a session of its own, so a Ctrl-C in the
        terminal reaches only the Python process, which then stops its children in order.
        """
        full_env = {**os.environ, **env} if env is not None else None
        out: Any = None
        if log_path is not None:
            out = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed right below
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *cmd],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                env=full_env,
                start_new_session=True,
            )
        finally:
            if out is not None:
                out.close()
        self.procs.append(proc)
        log.debug("%s: started pid %d: %s", self.netns, proc.pid, " ".join(cmd))
        return proc

    def kill(self, proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        """Signal ``proc`` (by PID), wait up to ``timeout`` s, SIGKILL if needed; returns the exit code."""
        return terminate(proc, sig, timeout)

    def ping_rtt(
        self, dst: str, src: str | None = None, count: int = 1, timeout: float = 1.0
    ) -> float | None:
        """Mean round-trip time in ms of the replies, or None if ping failed (no reply)."""
        cmd = ["ping", "-n", "-c", str(count), "-W", f"{timeout:g}"]
        if count > 1:
            cmd += ["-i", "0.2"]
        if src is not None:
            cmd += ["-I", src]
        proc = self.run(*cmd, dst, check=False, timeout=count * (timeout + 0.5) + 5)
        if proc.returncode != 0:
            return None
        rtts = [float(t) for t in _RTT_RE.findall(proc.stdout)]
        return sum(rtts) / len(rtts) if rtts else 0.0

    def ping(self, dst: str, src: str | None = None, count: int = 1, timeout: float = 1.0) -> bool:
        """True if ``ping -c count -W timeout [-I src] dst`` inside this host gets its replies."""
        return self.ping_rtt(dst, src=src, count=count, timeout=timeout) is not None

    def add_pod_network(self, cidr_with_host: str, name: str = "cni0") -> None:
        """Put ``cidr_with_host`` (e.g. ``10.244.5.1/24``) on a bridge ``name``, standing in for a
        container bridge (this kernel has no dummy links). Idempotent."""
        IPv4Interface(cidr_with_host)  # validate early, with a clear error
        if self.run("ip", "link", "show", name, check=False).returncode != 0:
            self.run("ip", "link", "add", name, "type", "bridge")
        self.run("ip", "addr", "replace", cidr_with_host, "dev", name)
        self.run("ip", "link", "set", name, "up")


class Lab:
    """A set of namespace hosts on one underlay bridge; a context manager that cleans up after itself."""

    def __init__(self, prefix: str | None = None, underlay: str = "192.168.77.0/24") -> None:
        self.prefix = prefix or "pf" + secrets.token_hex(3)
        self.underlay = IPv4Network(underlay)
        if self.underlay.prefixlen > 24 or self.underlay.num_addresses < 256:
            raise ValueError(f"underlay {underlay}: need a /24 or larger")
        self.ul_netns = f"{self.prefix}-ul"
        self.router = IPv4Interface(f"{self.underlay.network_address + 254}/{self.underlay.prefixlen}")
        self.hosts: list[Host] = []
        self.etcd_servers: list[EtcdServer] = []
        self._namespaces: list[str] = []
        self._next_index = 1
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"Lab({self.prefix!r}, hosts={[h.name for h in self.hosts]})"

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Create the underlay namespace with its bridge (done by ``with`` or the first ``add_host``)."""
        if self._started:
            return
        if self._closed:
            raise RuntimeError(f"lab {self.prefix} is closed")
        self._started = True
        _open_labs.add(self)
        self._add_netns(self.ul_netns)
        ns = self.ul_netns
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", ns, "addr", "add", str(self.router), "dev", "br0")
        run("ip", "-n", ns, "link", "set", "br0", "up")
        _enable_forwarding(ns)
        log.debug("lab %s: underlay %s on %s/br0", self.prefix, self.underlay, ns)

    def close(self) -> None:
        """Kill every process the lab started, then delete every namespace it created. Idempotent."""
        if self._closed:
            return
        self._closed = True
        _open_labs.discard(self)
        with _signals_deferred():
            for server in reversed(self.etcd_servers):
                try:
                    server.stop()
                except Exception:
                    log.exception("lab %s: stopping etcd %s", self.prefix, server.name)
            for host in reversed(self.hosts):
                self._stop_host_procs(host)
            for ns in reversed(self._namespaces):
                self._delete_netns(ns)
            self.hosts.clear()
            self._namespaces.clear()

    # -- hosts ---------------------------------------------------------------------------------------
    def add_host(self, name: str, mtu: int = 1500, index: int | None = None) -> Host:
        """A host namespace ``<prefix>-<name>`` with eth0 = .N of the underlay.

        N counts 1, 2, 3, ... in the order hosts are added unless ``index`` picks it (1-253).
        """
        self.start()
        if any(h.name == name for h in self.hosts):
            raise ValueError(f"lab {self.prefix}: host {name!r} exists")
        used = {int(h.ip) - int(self.underlay.network_address) for h in self.hosts}
        if index is None:
            while self._next_index in used:
                self._next_index += 1
            index = self._next_index
            self._next_index += 1
        if not 1 <= index <= 253 or index in used:
            raise ValueError(
                f"lab {self.prefix}: address .{index} of {self.underlay} is taken or out of range"
            )
        netns = f"{self.prefix}-{name}"
        ip = self.underlay.network_address + index
        peer = f"veth{index}"
        self._add_netns(netns)
        ul = self.ul_netns
        run(
            "ip",
            "-n",
            ul,
            "link",
            "add",
            peer,
            "mtu",
            str(mtu),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns,
            "mtu",
            str(mtu),
        )
        run("ip", "-n", ul, "link", "set", peer, "master", "br0", "up")
        run("ip", "-n", netns, "link", "set", "lo", "up")
        run("ip", "-n", netns, "addr", "add", f"{ip}/{self.underlay.prefixlen}", "dev", "eth0")
        run("ip", "-n", netns, "link", "set", "eth0", "up")
        run("ip", "-n", netns, "route", "add", "default", "via", str(self.router.ip))
        _enable_forwarding(netns)
        host = Host(self, name, netns, ip, peer)
        self.hosts.append(host)
        log.debug("lab %s: host %s at %s", self.prefix, netns, ip)
        return host

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def remove_host(self, host: Host | str) -> None:
        """Stop the host's processes and delete its namespace (its veth pair goes with it)."""
        h = self.host(host) if isinstance(host, str) else host
        for server in [s for s in self.etcd_servers if s.host is h]:
            server.stop()
            self.etcd_servers.remove(server)
        self._stop_host_procs(h)
        self._delete_netns(h.netns)
        if h.netns in self._namespaces:
            self._namespaces.remove(h.netns)
        self.hosts.remove(h)

    def start_etcd(self, name: str = "etcd") -> EtcdServer:
        """A host ``<prefix>-<name>`` running etcd on its underlay IP, port 2379 (and 127.0.0.1 there).

        The first etcd host takes .253 of the underlay (the next .252, ...), so flannel hosts keep
        .1, .2, .3 ...
        """
        from pyflannel.lab.etcd import EtcdServer

        host = self.add_host(name, index=253 - len(self.etcd_servers))
        server = EtcdServer(host, client_ip=str(host.ip), client_port=2379, peer_port=2380, name=name)
        self.etcd_servers.append(server)
        server.start()
        return server

    # -- internals ----------------------------------------------------------------------------------
    def _add_netns(self, name: str) -> None:
        if len(name) > 255 or "/" in name:
            raise ValueError(f"bad namespace name {name!r}")
        run("ip", "netns", "add", name)
        self._namespaces.append(name)

    def _stop_host_procs(self, host: Host) -> None:
        for proc in reversed(host.procs):
            try:
                terminate(proc, signal.SIGTERM, timeout=5)
            except Exception:
                log.exception("lab %s: stopping pid %d", self.prefix, proc.pid)
        host.procs.clear()

    def _delete_netns(self, ns: str) -> None:
        # Anything still running in a namespace of ours was started through this lab (e.g. a
        # timed-out `run`): end it by PID so the namespace really goes away.
        try:
            for pid in netns_pids(ns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc = run("ip", "netns", "del", ns, check=False)
            if proc.returncode != 0 and ns in netns_list():
                log.warning("lab %s: ip netns del %s: %s", self.prefix, ns, proc.stderr.strip())
        except Exception:
            log.exception("lab %s: deleting namespace %s", self.prefix, ns)


# Labs not closed when the interpreter exits (e.g. a script without `with`) are closed then.
_open_labs: weakref.WeakSet[Lab] = weakref.WeakSet()


@atexit.register
def _close_open_labs() -> None:
    for lab in list(_open_labs):
        lab.close()


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``pred()`` until it is true or ``timeout`` s have passed; returns its last verdict."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
