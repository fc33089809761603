"""``python -m pyflannel.lab.demo``: a flannel vxlan overlay across namespace hosts, end to end.

Builds a :class:`~pyflannel.lab.netns.Lab` with an etcd host, writes the network config, starts one
real ``flanneld`` per host, waits for every ``subnet.env``, puts each host's FLANNEL_SUBNET on a cni0
bridge (standing in for a container runtime) and pings every pod address from every other one.
Prints the lease table read back from etcd, each subnet.env and the ping matrix. Exits 0 only if
every pair pings; tears everything down on exit, on Ctrl-C and on SIGTERM.

The rendering functions at the top are pure; side effects live in :func:`run_demo`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType

from pyflannel.lab.cluster import Cluster, Node
from pyflannel.lab.etcd import EtcdServer
from pyflannel.lab.netns import Lab

NETWORK_CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'
ETCD_PREFIX = "/coreos.com/network"
SUBNET_TIMEOUT = 20.0
PING_TIMEOUT = 10.0

# -- pure: parsing and rendering ------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseRow:
    subnet: str
    public_ip: str
    backend_type: str
    vtep_mac: str
    lease_id: int  # 0: no etcd lease attached


def parse_lease_listing(etcdctl_json: str) -> list[LeaseRow]:
    """Rows from ``etcdctl get --prefix <prefix>/subnets -w json`` (keys and values are base64)."""
    doc = json.loads(etcdctl_json)
    rows = []
    for kv in doc.get("kvs") or []:
        key = base64.b64decode(kv["key"]).decode(errors="replace")
        raw = base64.b64decode(kv.get("value", "")).decode(errors="replace")
        try:
            value = json.loads(raw)
        except ValueError:
            value = {}
        if not isinstance(value, dict):
            value = {}
        data = value.get("BackendData")
        mac = data.get("VtepMAC", "") if isinstance(data, dict) else ""
        subnet = key.rsplit("/", 1)[-1].replace("-", "/")
        rows.append(
            LeaseRow(
                subnet,
                str(value.get("PublicIP", "")),
                str(value.get("BackendType", "")),
                str(mac),
                int(kv.get("lease", 0)),
            )
        )
    return sorted(rows, key=lambda r: r.subnet)


def parse_ttl_remaining(timetolive_output: str) -> int | None:
    """Seconds left from ``etcdctl lease timetolive`` ("... remaining(86395s)"); None if expired."""
    m = re.search(r"remaining\((-?\d+)s\)", timetolive_output)
    if m is None or int(m.group(1)) < 0:
        return None
    return int(m.group(1))


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with left-aligned columns, a header and a dashed rule."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def render_lease_table(rows: Sequence[LeaseRow], ttls: Mapping[int, int | None]) -> str:
    def ttl(r: LeaseRow) -> str:
        if r.lease_id == 0:
            return "-"
        left = ttls.get(r.lease_id)
        return "expired" if left is None else f"{left}s"

    return render_table(
        ["subnet", "PublicIP", "BackendType", "VtepMAC", "TTL"],
        [[r.subnet, r.public_ip, r.backend_type, r.vtep_mac, ttl(r)] for r in rows],
    )


def render_ping_matrix(
    pod_ips: Sequence[str],
    rtts: Mapping[tuple[str, str], float | None],
    ok: str = "✓",
    bad: str = "✗",
    names: Sequence[str] | None = None,
) -> str:
    """Rows: from each pod IP; columns: to each pod IP; ``ok``/``bad`` with the rtt in ms.

    ``names`` (one per pod IP) label rows and columns as ``name ip``.
    """
    labels = [f"{n} {ip}" for n, ip in zip(names, pod_ips, strict=True)] if names else list(pod_ips)
    rows = []
    for src, label in zip(pod_ips, labels, strict=True):
        cells = [label]
        for dst in pod_ips:
            if src == dst:
                cells.append("-")
            elif (rtt := rtts.get((src, dst))) is None:
                cells.append(bad)
            else:
                cells.append(f"{ok} {rtt:.2f}ms")
        rows.append(cells)
    return render_table(["from \\ to", *labels], rows)


def matrix_ok(pod_ips: Sequence[str], rtts: Mapping[tuple[str, str], float | None]) -> bool:
    return all(rtts.get((a, b)) is not None for a in pod_ips for b in pod_ips if a != b)


def _marks() -> tuple[str, str]:
    try:
        "✓✗".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "ok", "X"
    return "✓", "✗"


# -- side effects -----------------------------------------------------------------------------------


class DemoFailed(Exception):
    pass


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def ping_all(hosts: Sequence[Node], timeout: float = 1.0) -> dict[tuple[str, str], float | None]:
    pairs = [(a, b) for a in hosts for b in hosts if a is not b]
    with ThreadPoolExecutor(max_workers=min(16, len(pairs) or 1)) as pool:
        results = pool.map(lambda p: p[0].host.ping_rtt(p[1].pod_ip, src=p[0].pod_ip, timeout=timeout), pairs)
        return {(a.pod_ip, b.pod_ip): rtt for (a, b), rtt in zip(pairs, results, strict=True)}


def wait_for_pings(hosts: Sequence[Node], timeout: float) -> dict[tuple[str, str], float | None]:
    deadline = time.monotonic() + timeout
    ips = [h.pod_ip for h in hosts]
    while True:
        rtts = ping_all(hosts, timeout=0.5)
        if matrix_ok(ips, rtts) or time.monotonic() >= deadline:
            return ping_all(hosts) if matrix_ok(ips, rtts) else rtts
        time.sleep(0.2)


def lease_table(etcd: EtcdServer, prefix: str = ETCD_PREFIX) -> str:
    rows = parse_lease_listing(etcd.etcdctl("get", "--prefix", prefix + "/subnets", "-w", "json"))
    ttls = {
        r.lease_id: parse_ttl_remaining(etcd.etcdctl("lease", "timetolive", format(r.lease_id, "x")))
        for r in rows
        if r.lease_id
    }
    return render_lease_table(rows, ttls)


def run_demo(n_hosts: int, keep: bool, out: Callable[[str], None]) -> int:
    with Lab() as lab:
        out(f"lab {lab.prefix}: underlay {lab.underlay}, router {lab.router.ip} in netns {lab.ul_netns}")
        cluster = Cluster(lab, NETWORK_CONFIG, ETCD_PREFIX)
        try:
            etcd = cluster.etcd
            out(f"etcd at {etcd.endpoint} in netns {etcd.host.netns if etcd.host else '-'}")
            out(f"{ETCD_PREFIX}/config = {NETWORK_CONFIG}")
            nodes = [cluster.add_node(f"h{i}") for i in range(1, n_hosts + 1)]
            for n in nodes:
                out(f"{n.host.name} ({n.host.netns}, eth0 {n.host.ip}): flanneld started, log {n.log_path}")
            try:
                deadline = time.monotonic() + SUBNET_TIMEOUT
                for n in nodes:
                    n.wait_ready(max(0.1, deadline - time.monotonic()))
                for n in nodes:
                    n.add_pod_network()
                rtts = wait_for_pings(nodes, PING_TIMEOUT)
                ips = [n.pod_ip for n in nodes]
                out("\nleases in etcd (" + ETCD_PREFIX + "/subnets):")
                out(lease_table(etcd))
                for n in nodes:
                    out(f"\n{n.host.name}: {n.subnet_file}")
                    with open(n.subnet_file) as f:
                        out(f.read().rstrip())
                good, bad = _marks()
                out("\nping matrix (pod IP to pod IP):")
                out(render_ping_matrix(ips, rtts, good, bad, names=[n.host.name for n in nodes]))
                if not matrix_ok(ips, rtts):
                    raise DemoFailed("some pod addresses do not reach each other")
            except (DemoFailed, TimeoutError, RuntimeError) as e:
                out(f"\nFAILED: {str(e).splitlines()[0]}")
                for n in nodes:
                    out(f"\n--- {n.host.name}: last lines of {n.log_path}")
                    out(n.log_tail(25))
                return 1
            out("\nall pod addresses reach each other")
            if keep:
                out(
                    f"\nkept running: try `ip netns exec {nodes[0].host.netns} ip route` or "
                    f"`ip netns exec {nodes[0].host.netns} ping {nodes[-1].pod_ip}`"
                )
                try:
                    input("press Enter (or Ctrl-C) to tear down ... ")
                except (EOFError, KeyboardInterrupt):
                    out("")
            return 0
        finally:
            cluster.close()


def _print(text: str) -> None:
    print(text, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyflannel.lab.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=3, help="number of flannel hosts (default 3)")
    parser.add_argument("--keep", action="store_true", help="wait for Enter/Ctrl-C before tearing down")
    args = parser.parse_args(argv)
    if not 1 <= args.hosts <= 200:
        parser.error("--hosts must be between 1 and 200")
    if os.geteuid() != 0:
        print("the demo needs root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return run_demo(args.hosts, args.keep, _print)
    except KeyboardInterrupt:
        print("\ninterrupted: lab torn down", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
