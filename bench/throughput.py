"""TCP throughput of the overlay paths between two namespace hosts, against the underlay, in one run.

Two namespaces joined by a veth pair (the underlay, 192.168.213.0/24). Paths, each measured with
``iperf3 -c <address> -t SECONDS`` from host A to an address of host B:

* underlay   - B's eth0 address;
* host-gw    - a route ``10.247.2.0/24 via <B>`` on A, the target 10.247.2.1 on B's loopback;
* vxlan      - flannel's kernel objects made by hand: ``flannel.1`` (VNI 1, port 8472, nolearning),
               ``<subnet>.0/32`` on it, and per peer the neighbour, FDB entry and onlink route;
* udp        - pyflannel's udp data path (``python -m pyflannel.backend.udp.datapath``) on both hosts
               with flannel's TUN set-up (``flannel0``, MTU 1472, ``10.245.0.0/16 dev flannel0``);
* udp-*      - with ``--ideas``: the same with single speed-ups switched off, to show what each buys.

Rounds are interleaved (A B C A B C ...) so drift hits every path alike; the table shows the median
of the rounds in Gbit/s and the ratio to the underlay. Namespaces get unique names and are deleted
in ``finally``; only addresses inside the two namespaces are used. Needs root and iperf3.

    python bench/throughput.py [--rounds 3] [--seconds 3] [--ideas]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNDERLAY_A, UNDERLAY_B = "192.168.213.1", "192.168.213.2"
UDP_VARIANTS: dict[str, list[str]] = {
    "udp": [],
    "udp no-verify": ["--no-verify"],
    "udp no-coalesce": ["--no-coalesce"],
    "udp no-gro": ["--no-gro"],
    "udp no-gso": ["--no-gso"],
    "udp 1 thread": ["--threads", "1"],
    "udp plain (no offloads)": ["--no-offload", "--no-gro", "--no-gso"],
    "udp plain, 1 thread": ["--no-offload", "--no-gro", "--no-gso", "--threads", "1"],
}


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip()}")
    return p


class Bench:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.a, self.b = f"pfbench-{tag}-a", f"pfbench-{tag}-b"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.udp: list[subprocess.Popen[bytes]] = []

    def setup(self) -> None:
        a, b = self.a, self.b
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b)
        for ns, ip in ((a, UNDERLAY_A), (b, UNDERLAY_B)):
            sh("ip", "addr", "add", f"{ip}/24", "dev", "eth0", ns=ns)
            sh("ip", "link", "set", "eth0", "up", ns=ns)
        # host-gw
        sh("ip", "addr", "add", "10.247.2.1/32", "dev", "lo", ns=b)
        sh("ip", "route", "add", "10.247.2.0/24", "via", UNDERLAY_B, ns=a)
        # vxlan, flannel's objects
        macs = {a: "02:00:00:00:01:01", b: "02:00:00:00:02:02"}
        subnets = {a: "10.246.1", b: "10.246.2"}
        for ns, ip in ((a, UNDERLAY_A), (b, UNDERLAY_B)):
            sh("ip", "link", "add", "flannel.1", "address", macs[ns], "mtu", "1450", "type", "vxlan", "id", "1",
               "local", ip, "dev", "eth0", "dstport", "8472", "nolearning", ns=ns)
            sh("ip", "addr", "add", f"{subnets[ns]}.0/32", "dev", "flannel.1", ns=ns)
            sh("ip", "link", "set", "flannel.1", "up", ns=ns)
        for ns, peer, peer_ip in ((a, b, UNDERLAY_B), (b, a, UNDERLAY_A)):
            sh("ip", "neigh", "replace", f"{subnets[peer]}.0", "lladdr", macs[peer], "dev", "flannel.1",
               "nud", "permanent", ns=ns)
            sh("bridge", "fdb", "append", macs[peer], "dev", "flannel.1", "dst", peer_ip, "self", "permanent",
               ns=ns)
            sh("ip", "route", "add", f"{subnets[peer]}.0/24", "via", f"{subnets[peer]}.0", "dev", "flannel.1",
               "onlink", ns=ns)
        self.procs.append(subprocess.Popen(["ip", "netns", "exec", b, "iperf3", "-s"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.3)

    def start_udp(self, extra: list[str]) -> None:
        self.stop_udp()
        for ns, me, peer, peer_ip, ip in ((self.a, 1, 2, UNDERLAY_B, UNDERLAY_A),
                                          (self.b, 2, 1, UNDERLAY_A, UNDERLAY_B)):
            cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "pyflannel.backend.udp.datapath",
                   "--tun-addr", f"10.245.{me}.0", "--network", "10.245.0.0/16", "--mtu", "1472",
                   "--listen", f"{ip}:8285", "--route", f"10.245.{peer}.0/24={peer_ip}:8285", *extra]
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO)
            self.udp.append(p)
            assert p.stdout is not None
            if not any(line.startswith(b"ready") for line in p.stdout):
                raise RuntimeError(f"udp data path in {ns} did not start")

    def stop_udp(self) -> None:
        for p in self.udp:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
        self.udp = []

    def iperf(self, dst: str, seconds: float) -> float:
        p = sh("iperf3", "-c", dst, "-t", str(seconds), "-J", ns=self.a, check=False)
        try:
            res = json.loads(p.stdout)
            return float(res["end"]["sum_received"]["bits_per_second"]) / 1e9
        except (ValueError, KeyError):
            return 0.0

    def close(self) -> None:
        self.stop_udp()
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                p.wait(5)
        for ns in (self.a, self.b):
            sh("ip", "netns", "del", ns, check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--ideas", action="store_true", help="also measure udp with single speed-ups off")
    ap.add_argument("--only", nargs="*", help="path names to run (default: all)")
    args = ap.parse_args()
    b = Bench()
    paths: dict[str, Callable[[], float]] = {
        "underlay": lambda: b.iperf(UNDERLAY_B, args.seconds),
        "host-gw": lambda: b.iperf("10.247.2.1", args.seconds),
        "vxlan": lambda: b.iperf("10.246.2.0", args.seconds),
    }
    variants = UDP_VARIANTS if args.ideas else {"udp": []}
    for name, extra in variants.items():
        def run(extra: list[str] = extra) -> float:
            b.start_udp(extra)
            try:
                return b.iperf("10.245.2.0", args.seconds)
            finally:
                b.stop_udp()
        paths[name] = run
    if args.only:
        paths = {k: v for k, v in paths.items() if k in args.only or k == "underlay"}
    results: dict[str, list[float]] = {k: [] for k in paths}
    try:
        b.setup()
        for r in range(args.rounds):
            for name, fn in paths.items():
                results[name].append(fn())
                print(f"round {r + 1} {name}: {results[name][-1]:.2f} Gbit/s", file=sys.stderr, flush=True)
    finally:
        b.close()
    base = statistics.median(results["underlay"]) or 1.0
    print(f"{'path':<26} {'Gbit/s (median)':>16} {'x underlay':>11}   runs")
    for name, vals in results.items():
        med = statistics.median(vals)
        runs = " ".join(f"{v:.2f}" for v in vals)
        print(f"{name:<26} {med:>16.2f} {med / base:>11.3f}   {runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
