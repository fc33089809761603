"""A flannel cluster in a :class:`~pyflannel.lab.netns.Lab`: etcd on its own host, flanneld per host.

Used by the demo, the end-to-end tests and bench/. Every flanneld runs as a real subprocess inside
its host's namespace with real flags; its log goes to a file in the cluster's work directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface

from pyflannel.lab.etcd import EtcdServer
from pyflannel.lab.netns import Host, Lab, wait_until

DEFAULT_CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'
DEFAULT_PREFIX = "/coreos.com/network"


def parse_env(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.strip().partition("=")
        if sep and k:
            out[k] = v
    return out


@dataclass
class Node:
    """One flanneld on one host."""

    host: Host
    workdir: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    pod_cidr: str | None = field(default=None)
    env_stamp: tuple[int, int] | None = None  # subnet.env identity when this run started

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.subnet_file)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def written_since_start(self) -> bool:
        """subnet.env was (re)written by the current run (it is replaced atomically: a new inode)."""
        stamp = self._stamp()
        return stamp is not None and stamp != self.env_stamp and "FLANNEL_SUBNET" in self.subnet_env()

    @property
    def subnet_file(self) -> str:
        return os.path.join(self.workdir, "subnet.env")

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, f"flanneld.{self.restarts}.log")

    def subnet_env(self) -> dict[str, str]:
        try:
            with open(self.subnet_file) as f:
                return parse_env(f.read())
        except OSError:
            return {}

    def wait_ready(self, timeout: float = 20.0) -> dict[str, str]:
        if not wait_until(lambda: self.written_since_start() or not self.alive(), timeout):
            raise TimeoutError(f"{self.host.name}: no subnet.env after {timeout} s\n{self.log_tail()}")
        if not self.alive():
            raise RuntimeError(f"{self.host.name}: flanneld exited\n{self.log_tail()}")
        return self.subnet_env()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for i in range(self.restarts + 1):
            path = os.path.join(self.workdir, f"flanneld.{i}.log")
            try:
                with open(path, errors="replace") as f:
                    out.extend(f.read().splitlines()[-lines:])
            except OSError:
                pass
        return "\n".join(out[-lines:])

    def log_text(self) -> str:
        return self.log_tail(100000)

    @property
    def subnet(self) -> str:
        """This node's lease subnet, e.g. 10.244.57.0/24 (from FLANNEL_SUBNET 10.244.57.1/24)."""
        return str(IPv4Interface(self.subnet_env()["FLANNEL_SUBNET"]).network)

    @property
    def pod_ip(self) -> str:
        """The first address of this node's subnet (FLANNEL_SUBNET without the prefix)."""
        return self.subnet_env()["FLANNEL_SUBNET"].split("/")[0]

    def vxlan_state(self) -> dict[str, str]:
        """``ip -4 route``, ``ip neigh show dev flannel.1`` and ``bridge fdb show dev flannel.1`` text."""
        h = self.host
        return {
            "route": h.run("ip", "-4", "route", "show").stdout,
            "neigh": h.run("ip", "neigh", "show", "dev", "flannel.1", check=False).stdout,
            "fdb": h.run("bridge", "fdb", "show", "dev", "flannel.1", check=False).stdout,
        }

    def has_vxlan_entries(self, net: str, public_ip: str) -> bool:
        """flannel's three objects for the peer lease ``net``: onlink route, neighbour, FDB entry."""
        st = self.vxlan_state()
        gw = net.split("/")[0]
        return (
            f"{net} via {gw} dev flannel.1 onlink" in st["route"]
            and f"{gw} lladdr" in st["neigh"]
            and f"dst {public_ip} self permanent" in st["fdb"]
        )

    def lacks_vxlan_entries(self, net: str, public_ip: str) -> bool:
        """None of the three objects for the peer lease ``net`` is left."""
        st = self.vxlan_state()
        gw = net.split("/")[0]
        return net not in st["route"] and f"{gw} lladdr" not in st["neigh"] and f"dst {public_ip} " not in st["fdb"]

    def has_vxlan_peer(self, peer: Node) -> bool:
        return self.has_vxlan_entries(peer.subnet, str(peer.host.ip))

    def add_pod_network(self, bridge: str = "cni0") -> None:
        """Put FLANNEL_SUBNET on a bridge, standing in for the container runtime."""
        cidr = self.subnet_env()["FLANNEL_SUBNET"]
        if self.pod_cidr == cidr:
            return
        if self.pod_cidr is not None:
            self.host.run("ip", "addr", "del", self.pod_cidr, "dev", bridge, check=False)
        self.host.add_pod_network(cidr, name=bridge)
        self.pod_cidr = cidr


class Cluster:
    """etcd in a host namespace of its own plus any number of flanneld hosts."""

    def __init__(
        self,
        lab: Lab,
        config: str | None = DEFAULT_CONFIG,
        prefix: str = DEFAULT_PREFIX,
        etcd: EtcdServer | None = None,
    ) -> None:
        """``etcd``: share another cluster's etcd (several networks, one etcd, distinct prefixes)."""
        self.lab = lab
        self.prefix = prefix
        self.workdir = tempfile.mkdtemp(prefix=f"{lab.prefix}-cluster-")
        self.owns_etcd = etcd is None
        self.etcd: EtcdServer = etcd if etcd is not None else lab.start_etcd()
        self.nodes: list[Node] = []
        if config is not None:
            self.put_config(config)

    @property
    def endpoint(self) -> str:
        return self.etcd.endpoint

    def put_config(self, config: str) -> None:
        self.etcd.etcdctl("put", self.prefix + "/config", config)

    def add_node(self, name: str, *extra: str, start: bool = True, host: Host | None = None) -> Node:
        """A flanneld on a new host ``name``, or on an existing ``host`` (a second network there)."""
        if host is None:
            host = self.lab.add_host(name)
        workdir = os.path.join(self.workdir, name)
        os.makedirs(workdir, exist_ok=True)
        args = [
            f"--etcd-endpoints={self.endpoint}",
            f"--etcd-prefix={self.prefix}",
            f"--iface={host.iface}",
            f"--subnet-file={os.path.join(workdir, 'subnet.env')}",
            *extra,
        ]
        node = Node(host, workdir, args)
        self.nodes.append(node)
        if start:
            self.start(node)
        return node

    def start(self, node: Node, env: dict[str, str] | None = None) -> None:
        if node.proc is not None:
            node.restarts += 1
        node.env_stamp = node._stamp()
        cmd = [sys.executable, "-m", "pyflannel.cli.flanneld", *node.args]
        node.proc = node.host.popen(*cmd, log_path=node.log_path, env=env)

    def stop(self, node: Node, sig: int = signal.SIGTERM) -> int | None:
        if node.proc is None:
            return None
        code = node.host.kill(node.proc, sig)
        return code

    def start_nodes(self, count: int, *extra: str, pods: bool = True) -> list[Node]:
        """``count`` new hosts h1, h2, ... each running flanneld; waits for every subnet.env."""
        first = len(self.nodes) + 1
        nodes = [self.add_node(f"h{first + i}", *extra) for i in range(count)]
        for node in nodes:
            node.wait_ready()
            if pods:
                node.add_pod_network()
        return nodes

    def lease_json(self, node: Node) -> dict[str, object]:
        """The lease value in etcd for this node's subnet, decoded."""
        key = self.prefix + "/subnets/" + node.subnet.replace("/", "-")
        value: dict[str, object] = json.loads(self.etcd.etcdctl("get", key, "--print-value-only"))
        return value

    def lease_keys(self) -> list[str]:
        out = self.etcd.etcdctl("get", "--prefix", "--keys-only", self.prefix + "/subnets/")
        return [line for line in out.splitlines() if line.strip()]

    def ping_matrix(self, nodes: Sequence[Node] | None = None, count: int = 1) -> dict[tuple[str, str], bool]:
        nodes = list(nodes or self.nodes)
        return {
            (a.host.name, b.host.name): a.host.ping(b.pod_ip, src=a.pod_ip, count=count)
            for a in nodes
            for b in nodes
            if a is not b
        }

    def all_ping(self, nodes: Sequence[Node] | None = None, timeout: float = 10.0) -> bool:
        return wait_until(lambda: all(self.ping_matrix(nodes).values()), timeout, interval=0.2)

    def close(self) -> None:
        for node in self.nodes:
            if node.alive():
                self.stop(node)
        if self.owns_etcd:
            self.etcd.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def pod_address(node: Node) -> IPv4Interface:
    return IPv4Interface(node.subnet_env()["FLANNEL_SUBNET"])
