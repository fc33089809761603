"""How fast Netlink.apply programs flannel's per-peer objects, next to `ip -batch` + `bridge -batch`.

For each N, in fresh network namespaces with a vxlan device flannel.1 on a veth underlay:
  (a) `ip -batch` (N neighbours + N routes) then `bridge -batch` (N FDB entries), processes included;
  (b) Netlink.apply of the same 3N objects (socket open included; the op list is built beforehand).
Both namespaces are checked to hold 3N objects afterwards.

    sudo python3 bench/netlink_batch.py [N ...] [--chunk 2048] [--repeat 3]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import pickle
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any, TypeVar

from pyflannel.kernel.netlink import CHUNK, Fdb, Neighbour, Netlink, Op, Route

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns: str, fn: Callable[..., T], *args: Any) -> T:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            with os.fdopen(w, "wb") as f:
                f.write(pickle.dumps(fn(*args)))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"child in {ns} failed")
    return pickle.loads(data)  # type: ignore[no-any-return]


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


def make_ns(name: str) -> int:
    """A namespace with flannel.1 (vxlan id 1 on veth0) up; returns the ifindex of flannel.1."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    ip(name, "link", "set", "lo", "up")
    ip(name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
    ip(name, "addr", "add", "192.168.100.1/24", "dev", "veth0")
    ip(name, "link", "set", "veth0", "up")
    ip(name, "link", "set", "veth1", "up")
    ip(name, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", "192.168.100.1", "dev", "veth0",
       "nolearning", "dstport", "8472")  # fmt: skip
    ip(name, "addr", "add", "10.0.0.0/32", "dev", "flannel.1")
    ip(name, "link", "set", "flannel.1", "up")
    out = ip(name, "-o", "link", "show", "flannel.1")
    return int(out.split(":", 1)[0])


def peers(n: int) -> list[tuple[IPv4Network, IPv4Address, str, IPv4Address]]:
    """(subnet, subnet .0, VTEP MAC, public IP) for n remote hosts."""
    out = []
    for i in range(n):
        a, b = 10 + i // 250, i % 250 + 2
        mac = f"0e:01:00:{i >> 16 & 0xFF:02x}:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}"
        out.append(
            (
                IPv4Network(f"10.{a}.{b}.0/24"),
                IPv4Address(f"10.{a}.{b}.0"),
                mac,
                IPv4Address(f"172.{16 + i // 65000}.{i // 250 % 256}.{i % 250 + 1}"),
            )
        )
    return out


def count(ns: str) -> tuple[int, int, int]:
    routes = ip(ns, "route", "show", "dev", "flannel.1").count("onlink")
    neighs = ip(ns, "neigh", "show", "dev", "flannel.1").count("PERMANENT")
    fdb = subprocess.run(
        ["bridge", "-n", ns, "fdb", "show", "dev", "flannel.1"], check=True, capture_output=True, text=True
    ).stdout.count("self permanent")
    return routes, neighs, fdb


def bench_tools(ns: str, n: int) -> float:
    ps = peers(n)
    with tempfile.TemporaryDirectory() as tmp:
        ipb, brb = os.path.join(tmp, "ip.batch"), os.path.join(tmp, "bridge.batch")
        with open(ipb, "w") as f:
            for sn, gw, mac, _pub in ps:
                f.write(f"neigh replace {gw} lladdr {mac} dev flannel.1 nud permanent\n")
                f.write(f"route replace {sn} via {gw} dev flannel.1 onlink\n")
        with open(brb, "w") as f:
            for _sn, _gw, mac, pub in ps:
                f.write(f"fdb replace {mac} dev flannel.1 dst {pub} self permanent\n")
        t0 = time.perf_counter()
        subprocess.run(["ip", "-n", ns, "-batch", ipb], check=True)
        subprocess.run(["bridge", "-n", ns, "-batch", brb], check=True)
        return time.perf_counter() - t0


def _apply_timed(ops: list[Op], chunk: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    with Netlink(chunk=chunk) as nl:
        failures = nl.apply(ops)
    return time.perf_counter() - t0, len(failures)


def bench_netlink(ns: str, ifindex: int, n: int, chunk: int) -> float:
    ops: list[Op] = []
    for sn, gw, mac, pub in peers(n):
        ops.append(("replace", Neighbour(ifindex, gw, mac)))
        ops.append(("replace", Fdb(ifindex, mac, pub)))
        ops.append(("replace", Route(sn, gw, ifindex, onlink=True)))
    elapsed, failed = in_netns(ns, _apply_timed, ops, chunk)
    if failed:
        raise RuntimeError(f"{failed} operations failed")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="*", type=int, default=[1000, 5000])
    ap.add_argument("--chunk", type=int, default=CHUNK, help=f"requests per send() (default {CHUNK})")
    ap.add_argument("--repeat", type=int, default=3, help="runs per size; the best is shown")
    args = ap.parse_args()
    prefix = f"pfnl-{secrets.token_hex(3)}-bench"
    rows = []
    try:
        for n in args.sizes:
            best_tools = best_nl = float("inf")
            for r in range(args.repeat):
                a, b = f"{prefix}-{n}-{r}-ip", f"{prefix}-{n}-{r}-nl"
                make_ns(a)
                idx = make_ns(b)
                try:
                    best_tools = min(best_tools, bench_tools(a, n))
                    best_nl = min(best_nl, bench_netlink(b, idx, n, args.chunk))
                    for ns in (a, b):
                        if count(ns) != (n, n, n):
                            raise RuntimeError(f"{ns}: expected {n} of each, got {count(ns)}")
                finally:
                    for ns in (a, b):
                        subprocess.run(["ip", "netns", "del", ns], check=False)
            rows.append((n, best_tools, best_nl))
    finally:
        for ns in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
            if ns.startswith(prefix):
                subprocess.run(["ip", "netns", "del", ns], check=False)
    print(f"peers x 3 objects (route + neighbour + FDB), best of {args.repeat}, chunk {args.chunk}")
    print(f"| {'N':>5} | {'ip+bridge -batch':>16} | {'Netlink.apply':>13} | {'ratio':>5} |")
    print(f"|{'-' * 7}|{'-' * 18}|{'-' * 15}|{'-' * 7}|")
    for n, t, nl in rows:
        print(f"| {n:>5} | {t:>14.3f} s | {nl:>11.3f} s | {nl / t:>5.2f} |")


if __name__ == "__main__":
    main()
