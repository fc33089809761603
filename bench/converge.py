"""Control-plane benchmark of flanneld (vxlan): start, burst, memory, idle CPU, etcd load, ready time.

One Lab (pyflannel.lab): etcd on its own namespace host, each flanneld on a fresh namespace host
(``--etcd-endpoints --etcd-prefix --iface=eth0 --subnet-file``, defaults otherwise), each figure on an
etcd prefix of its own holding synthetic vxlan leases (pyflannel.lab.leases: distinct subnets of
10.0.0.0/8, PublicIPs in 172.16.0.0/12, VtepMACs), written over gRPC with 64 Puts in flight.

Kernel objects are counted by a watcher process inside the daemon's namespace (``_watch`` below): an
rtnetlink socket subscribed to route and neighbour notifications (256 MB receive buffer) counts onlink
/24 routes, permanent IPv4 neighbours and vxlan FDB entries as the kernel reports them, and takes the
time.monotonic() at which all three counts reach N; afterwards it dumps flannel.1's routes, neighbours
and FDB and checks every lease's three objects exactly (missed leases). Should notifications overflow,
it falls back to dumps every 20 ms and says so.

1. start    N leases in etcd; t0 just before Popen of flanneld, t1 when all 3N objects are in the
            kernel. Baseline, interleaved with the runs: ``ip -batch`` (N neigh + N routes) then
            ``bridge -batch`` (N fdb) into a fresh namespace with flannel.1, processes included,
            timed the same way (t0 before the first Popen, t1 from the same watcher).
2. burst    flanneld running (ready, 0 peers); N leases written as fast as one gRPC client can; lag =
            last object in the kernel - last Put acknowledged; missed = leases still incomplete
            --burst-timeout s after the last Put.
3. memory   VmRSS (and VmHWM) of the daemon 1 s after convergence (start, and after the burst).
4. idle     utime+stime (and that of reaped children: iptables) over --idle-seconds, 1000 leases,
            with the default forward rules (resynced every 5 s, as flannel does) and with
            --iptables-forward-rules=false; printed per 60 s.
5. etcd     requests received by etcd (grpc_server_started_total for unary calls, msg_received for
            streams, from etcd's /metrics) during start and during the burst, the writer's own
            N Puts + 1 LeaseGrant subtracted.
6. ready    flanneld start to subnet.env written, 0 leases; baseline ``python3 -c pass``.

    sudo python3 bench/converge.py [--n 5000] [--runs 3] [--idle-seconds 60] [--idle-leases 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.abspath(__file__)
DEVICE = "flannel.1"
CONFIG = '{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}'
CLK_TCK = os.sysconf("SC_CLK_TCK")

# --- the watcher: runs inside the daemon's namespace ------------------------------------------

_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")
_RTA = struct.Struct("=HH")
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWNEIGH, RTM_DELNEIGH = 24, 25, 28, 29
AF_INET, AF_BRIDGE = 2, 7
RTN_UNICAST, RTNH_F_ONLINK, NUD_PERMANENT = 1, 4, 0x80
RTA_DST = NDA_DST = 1
NDA_LLADDR = 2


def _attr(data: bytes, off: int, end: int, want: int) -> bytes | None:
    while off + 4 <= end:
        n, kind = _RTA.unpack_from(data, off)
        if n < 4:
            return None
        if kind & 0x3FFF == want:
            return data[off + 4 : off + n]
        off += (n + 3) & ~3
    return None


def _count_event(data: bytes, sets: tuple[set[bytes], set[bytes], set[bytes]]) -> None:
    routes, neighs, fdb = sets
    off, size = 0, len(data)
    while off + 16 <= size:
        n, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if n < 16:
            break
        p, end = off + 16, min(off + n, size)
        off += (n + 3) & ~3
        if mtype in (RTM_NEWROUTE, RTM_DELROUTE):
            fam, dlen, _s, _t, table, _p, _sc, rtype, fl = _RTMSG.unpack_from(data, p)
            if fam != AF_INET or dlen != 24 or table != 254 or rtype != RTN_UNICAST or not fl & RTNH_F_ONLINK:
                continue
            key = _attr(data, p + _RTMSG.size, end, RTA_DST)
            if key is not None:
                (routes.add if mtype == RTM_NEWROUTE else routes.discard)(key)
        elif mtype in (RTM_NEWNEIGH, RTM_DELNEIGH):
            fam, _idx, state, _fl, _ty = _NDMSG.unpack_from(data, p)
            if fam == AF_INET and state & NUD_PERMANENT:
                key = _attr(data, p + _NDMSG.size, end, NDA_DST)
                target = neighs
            elif fam == AF_BRIDGE and _attr(data, p + _NDMSG.size, end, NDA_DST) is not None:
                key = _attr(data, p + _NDMSG.size, end, NDA_LLADDR)
                target = fdb
            else:
                continue
            if key is not None:
                (target.add if mtype == RTM_NEWNEIGH else target.discard)(key)


def exact_check(n: int, first: int) -> dict[str, Any]:
    """Dump flannel.1's objects; count leases missing any of their three objects, and extras."""
    from pyflannel.kernel.netlink import Netlink
    from pyflannel.lab.leases import synthetic_leases

    with Netlink() as nl:
        link = nl.link(DEVICE)
        if link is None:
            return {"missing": n, "extra": 0, "counts": [0, 0, 0]}
        idx = link.index
        routes = {(r.dst, r.gateway) for r in nl.routes(oif=idx) if r.onlink}
        neighs = {(x.dst, x.lladdr) for x in nl.neighbours(idx)}
        fdb = {(x.lladdr, x.dst) for x in nl.fdb(idx)}
    missing = 0
    want_r, want_n, want_f = set(), set(), set()
    for lease in synthetic_leases(n, first):
        r, nb, f = (lease.subnet, lease.gateway), (lease.gateway, lease.mac), (lease.mac, lease.public_ip)
        want_r.add(r)
        want_n.add(nb)
        want_f.add(f)
        if r not in routes or nb not in neighs or f not in fdb:
            missing += 1
    extra = len(routes - want_r) + len(neighs - want_n) + len(fdb - want_f)
    return {"missing": missing, "extra": extra, "counts": [len(routes), len(neighs), len(fdb)]}


def _dump_counts() -> tuple[int, int, int]:
    from pyflannel.kernel.netlink import Netlink

    with Netlink() as nl:
        link = nl.link(DEVICE)
        if link is None:
            return 0, 0, 0
        return (
            sum(1 for r in nl.routes(oif=link.index) if r.onlink),
            len(nl.neighbours(link.index)),
            len(nl.fdb(link.index)),
        )


def watch_main(n: int, first: int, timeout: float) -> None:
    """Print ``ready``, then one JSON line once 3n objects are in (or at the deadline).

    A line ``stop <monotonic>`` on stdin moves the deadline; EOF on stdin leaves it unchanged.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    sock.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)  # SO_RCVBUFFORCE
    sock.bind((0, RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE))
    sets: tuple[set[bytes], set[bytes], set[bytes]] = (set(), set(), set())
    deadline = time.monotonic() + timeout
    print("ready", flush=True)
    t_first = t_done = None
    overflow = False
    stdin_open = True
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        fds = [sock] + ([sys.stdin] if stdin_open else [])
        ready, _, _ = select.select(fds, [], [], min(0.02 if overflow else 1.0, deadline - now))
        if sys.stdin in ready:
            line = sys.stdin.readline()
            if not line:
                stdin_open = False
            elif line.startswith("stop "):
                deadline = float(line.split()[1])
        if overflow:
            counts = _dump_counts()
            if t_first is None and any(counts):
                t_first = time.monotonic()
            if min(counts) >= n:
                t_done = time.monotonic()
                break
            continue
        if sock in ready:
            try:
                while True:
                    _count_event(sock.recv(1 << 20, socket.MSG_DONTWAIT), sets)
            except BlockingIOError:
                pass
            except OSError:  # ENOBUFS: notifications lost; count by dumps from now on
                overflow = True
                continue
            now = time.monotonic()
            if t_first is None and any(sets):
                t_first = now
            if min(len(s) for s in sets) >= n:
                t_done = now
                break
    result = exact_check(n, first)
    result.update(t_first=t_first, t_done=t_done, overflow=overflow)
    print(json.dumps(result, default=str), flush=True)


# --- the benchmark (root namespace) -----------------------------------------------------------


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


class Watcher:
    """The watcher subprocess in a namespace."""

    def __init__(self, netns: str, n: int, first: int = 0, timeout: float = 120.0) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, HERE, "_watch", str(n), str(first), str(timeout)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"watcher in {netns} failed to start: {line!r}")

    def stop_at(self, t: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"stop {t}\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.proc.wait()
        if not line:
            raise RuntimeError("watcher died without a result")
        return json.loads(line)  # type: ignore[no-any-return]


@dataclass
class Daemon:
    host: Any
    workdir: str
    proc: subprocess.Popen[bytes]
    t0: float
    prefix: str

    @property
    def subnet_file(self) -> str:
        return os.path.join(self.workdir, "subnet.env")

    def wait_ready(self, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(self.subnet_file):
                return time.monotonic()
            if self.proc.poll() is not None:
                break
            time.sleep(0.002)
        raise RuntimeError(f"flanneld on {self.host.netns} not ready:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(os.path.join(self.workdir, "flanneld.log"), errors="replace") as f:
                return "\n".join(f.read().splitlines()[-lines:])
        except OSError:
            return ""

    def status(self, field_name: str) -> int:
        """A ``kB`` field of /proc/<pid>/status, in kB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
        raise KeyError(field_name)

    def cpu(self) -> tuple[float, float]:
        """(own utime+stime, reaped children's cutime+cstime) in seconds."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ut, st, cut, cst = (int(x) for x in fields[11:15])
        return (ut + st) / CLK_TCK, (cut + cst) / CLK_TCK

    def subnet_key(self) -> str:
        with open(self.subnet_file) as f:
            env = dict(line.split("=", 1) for line in f.read().split() if "=" in line)
        net, plen = env["FLANNEL_SUBNET"].split("/")
        a, b, c, _ = net.split(".")
        return f"{self.prefix}/subnets/{a}.{b}.{c}.0-{plen}"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from pyflannel.lab.netns import Lab

        self.args = args
        self.lab = Lab()
        self.workdir = tempfile.mkdtemp(prefix=f"{self.lab.prefix}-converge-")
        self.etcd: Any = None
        self.hosts = 0
        self.base_ns: list[str] = []

    # etcd

    def etcdctl(self, *args: str) -> str:
        return str(self.etcd.etcdctl(*args))

    def write_leases(self, prefix: str, n: int, first: int = 0, per_request: int = 1) -> dict[str, Any]:
        out = self.etcd.host.run(
            sys.executable, "-m", "pyflannel.lab.leases", "--endpoint", "http://127.0.0.1:2379",
            "--prefix", prefix, "--n", str(n), "--first", str(first), "--concurrency", "64",
            "--per-request", str(per_request), timeout=300,
        )  # fmt: skip
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def metrics(self) -> dict[str, float]:
        """Requests etcd received so far, per method: unary calls started + stream messages."""
        text = self.etcd.host.run("curl", "-sf", "http://127.0.0.1:2379/metrics").stdout
        out: dict[str, float] = {}
        pat = re.compile(r'^grpc_server_(started|msg_received)_total\{grpc_method="(\w+)",grpc_service="([\w.]+)",'
                         r'grpc_type="(\w+)"\} (\S+)$')  # fmt: skip
        for line in text.splitlines():
            m = pat.match(line)
            if not m or not m.group(3).startswith("etcdserverpb."):
                continue
            kind, method, _svc, gtype, value = m.groups()
            if (kind == "started") == (gtype == "unary"):
                out[method] = out.get(method, 0.0) + float(value)
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
        return {k: int(v - before.get(k, 0)) for k, v in after.items() if v - before.get(k, 0)}

    # flanneld

    def new_host(self) -> Any:
        self.hosts += 1
        return self.lab.add_host(f"f{self.hosts}")

    def start_daemon(self, prefix: str, *extra: str, host: Any = None) -> Daemon:
        """flanneld on ``host`` (a fresh lab host if None); t0 is taken just before Popen."""
        host = host or self.new_host()
        workdir = os.path.join(self.workdir, host.name)
        os.makedirs(workdir)
        cmd = [
            sys.executable, "-m", "pyflannel.cli.flanneld", f"--etcd-endpoints={self.etcd.endpoint}",
            f"--etcd-prefix={prefix}", "--iface=eth0", f"--subnet-file={os.path.join(workdir, 'subnet.env')}",
            *extra,
        ]  # fmt: skip
        t0 = time.monotonic()
        # With bytecode caches, as an installed daemon has them (this environment may disable them).
        proc = host.popen(*cmd, log_path=os.path.join(workdir, "flanneld.log"), env={"PYTHONDONTWRITEBYTECODE": ""})
        return Daemon(host, workdir, proc, t0, prefix)

    def stop_daemon(self, d: Daemon) -> None:
        key = d.subnet_key() if os.path.exists(d.subnet_file) else None
        d.host.kill(d.proc)
        if key:
            self.etcdctl("del", key)  # keep exactly N peers for the next daemon on this prefix
        self.lab.remove_host(d.host)

    def setup_prefix(self, prefix: str, n: int) -> None:
        self.etcdctl("put", prefix + "/config", CONFIG)
        if n:
            self.write_leases(prefix, n)

    # baseline

    def baseline(self, n: int, run: int) -> float:
        from pyflannel.lab.leases import synthetic_leases

        ns = f"{self.lab.prefix}-base{run}"
        self.base_ns.append(ns)

        def ip(*a: str) -> None:
            subprocess.run(["ip", "-n", ns, *a], check=True, capture_output=True)

        subprocess.run(["ip", "netns", "add", ns], check=True)
        ip("link", "set", "lo", "up")
        ip("link", "add", "eth0", "type", "veth", "peer", "name", "veth0")
        ip("addr", "add", "192.168.77.1/24", "dev", "eth0")
        ip("link", "set", "eth0", "up")
        ip("link", "set", "veth0", "up")
        ip("link", "add", DEVICE, "mtu", "1450", "type", "vxlan", "id", "1", "local", "192.168.77.1", "dev", "eth0",
           "nolearning", "dstport", "8472")  # fmt: skip
        ip("addr", "add", "10.0.0.0/32", "dev", DEVICE)
        ip("link", "set", DEVICE, "up")
        leases = synthetic_leases(n)
        ipb, brb = os.path.join(self.workdir, "ip.batch"), os.path.join(self.workdir, "bridge.batch")
        with open(ipb, "w") as f:
            for x in leases:
                f.write(f"neigh replace {x.gateway} lladdr {x.mac} dev {DEVICE} nud permanent\n")
                f.write(f"route replace {x.subnet} via {x.gateway} dev {DEVICE} onlink\n")
        with open(brb, "w") as f:
            for x in leases:
                f.write(f"fdb replace {x.mac} dev {DEVICE} dst {x.public_ip} self permanent\n")
        # The same watcher as for flanneld: same notification load, same clock for the end.
        watcher = Watcher(ns, n, timeout=120)
        t0 = time.monotonic()
        subprocess.run(["ip", "-n", ns, "-batch", ipb], check=True)
        subprocess.run(["bridge", "-n", ns, "-batch", brb], check=True)
        w = watcher.result()
        if w["missing"] or w["t_done"] is None:
            raise RuntimeError(f"baseline namespace misses {w['missing']} leases")
        elapsed = float(w["t_done"]) - t0
        subprocess.run(["ip", "netns", "del", ns], check=False)
        self.base_ns.remove(ns)
        return elapsed

    def close(self) -> None:
        for ns in self.base_ns:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        self.lab.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- figures ------------------------------------------------------------------------------------


@dataclass
class Results:
    n: int
    start: list[dict[str, Any]] = field(default_factory=list)
    burst: list[dict[str, Any]] = field(default_factory=list)
    idle: dict[str, dict[str, float]] = field(default_factory=dict)
    ready_floor: list[float] = field(default_factory=list)


def run_start(b: Bench, r: int, res: Results) -> None:
    n = b.args.n
    base = b.baseline(n, r)
    host = b.new_host()
    watcher = Watcher(host.netns, n, timeout=120)
    m0 = b.metrics()
    d = b.start_daemon("/bench/start", host=host)
    t0 = d.t0
    try:
        t_ready = d.wait_ready(timeout=60)
        w = watcher.result()
        if w["t_done"] is None:
            raise RuntimeError(f"start run {r}: not converged ({w}):\n{d.log_tail()}")
        time.sleep(1.0)
        rss, hwm = d.status("VmRSS"), d.status("VmHWM")
        m1 = b.metrics()
    finally:
        b.stop_daemon(d)
    res.start.append(
        {
            "base": base,
            "total": w["t_done"] - t0,
            "first": w["t_first"] - t0,
            "ready": t_ready - t0,
            "missing": w["missing"],
            "overflow": w["overflow"],
            "rss": rss,
            "hwm": hwm,
            "etcd": b.delta(m0, m1),
        }
    )
    print(f"  start run {r + 1}: ip/bridge -batch {base:.3f} s, flanneld {w['t_done'] - t0:.3f} s "
          f"(first object {w['t_first'] - t0:.3f} s, subnet.env {t_ready - t0:.3f} s), RSS {rss / 1024:.1f} MB",
          flush=True)  # fmt: skip


def run_burst(b: Bench, r: int, res: Results, mode: str) -> None:
    """mode "put": one Put per lease (as N nodes would write); "txn": Txn requests of 100 Puts."""
    n = b.args.n
    per_request = 1 if mode == "put" else 100
    prefix = f"/bench/burst-{mode}{r}"
    b.setup_prefix(prefix, 0)
    floor = time.monotonic()
    b.etcd.host.run(sys.executable, "-c", "pass")
    res.ready_floor.append(time.monotonic() - floor)
    d = b.start_daemon(prefix)
    try:
        t_ready = d.wait_ready(timeout=60) - d.t0
        time.sleep(1.0)  # the watch is established well before this
        rss0 = d.status("VmRSS")
        watcher = Watcher(d.host.netns, n, timeout=300)
        m0 = b.metrics()
        wr = b.write_leases(prefix, n, per_request=per_request)
        watcher.stop_at(wr["t_last"] + b.args.burst_timeout)
        w = watcher.result()
        time.sleep(1.0)
        m1 = b.metrics()
        rss, hwm = d.status("VmRSS"), d.status("VmHWM")
    finally:
        b.stop_daemon(d)
    etcd = b.delta(m0, m1)
    method = "Put" if per_request == 1 else "Txn"
    etcd[method] = etcd.get(method, 0) - wr["requests"]
    etcd["LeaseGrant"] = etcd.get("LeaseGrant", 0) - wr["grants"]
    etcd = {k: v for k, v in etcd.items() if v}
    lag = None if w["t_done"] is None or w["missing"] else w["t_done"] - wr["t_last"]
    res.burst.append(
        {
            "mode": mode,
            "ready": t_ready,
            "rss0": rss0,
            "write": wr["t_last"] - wr["t_first"],
            "lag": lag,
            "missing": w["missing"],
            "overflow": w["overflow"],
            "rss": rss,
            "hwm": hwm,
            "etcd": etcd,
        }
    )
    lag_s = f"{lag:.3f} s" if lag is not None else "not converged"
    print(f"  burst ({mode}) run {r + 1}: ready (0 leases) {t_ready:.3f} s; {n} leases written in "
          f"{wr['t_last'] - wr['t_first']:.3f} s, lag {lag_s}, missed {w['missing']}, RSS {rss / 1024:.1f} MB",
          flush=True)  # fmt: skip


def run_idle(b: Bench, res: Results) -> None:
    n, secs = b.args.idle_leases, b.args.idle_seconds
    b.setup_prefix("/bench/idle", n)
    variants = {"forward rules (default)": (), "--iptables-forward-rules=false": ("--iptables-forward-rules=false",)}
    daemons = {}
    try:
        for name, extra in variants.items():
            host = b.new_host()
            watcher = Watcher(host.netns, n, timeout=60)
            d = b.start_daemon("/bench/idle", *extra, host=host)
            daemons[name] = d
            w = watcher.result()
            if w["missing"]:
                raise RuntimeError(f"idle daemon {name}: {w['missing']} leases missing\n{d.log_tail()}")
        time.sleep(2.0)
        before = {k: d.cpu() for k, d in daemons.items()}
        t = time.monotonic()
        time.sleep(secs)
        elapsed = time.monotonic() - t
        after = {k: d.cpu() for k, d in daemons.items()}
        for k, d in daemons.items():
            own = after[k][0] - before[k][0]
            kids = after[k][1] - before[k][1]
            scale = 60.0 / elapsed
            res.idle[k] = {"own": own * scale, "children": kids * scale, "total": (own + kids) * scale,
                           "seconds": elapsed, "rss": d.status("VmRSS")}  # fmt: skip
            print(f"  idle {k}: own {own:.2f} s + children {kids:.2f} s in {elapsed:.0f} s", flush=True)
    finally:
        for d in daemons.values():
            b.stop_daemon(d)


# --- report -------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(res: Results, args: argparse.Namespace) -> str:
    n = res.n
    out: list[str] = []
    p = out.append
    p(f"N = {n}, {len(res.start)} start runs, {len(res.burst)} burst runs, {os.cpu_count()} CPUs, "
      f"kernel {os.uname().release}, {time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip
    p("")
    # 1. start
    p(f"### 1. Start: {n} leases in etcd, flanneld start -> {3 * n} kernel objects")
    p("")
    p("| run | ip+bridge -batch | flanneld | ratio | flanneld: first object | subnet.env | missed |")
    p("|---|---|---|---|---|---|---|")
    for i, s in enumerate(res.start):
        p(f"| {i + 1} | {s['base']:.3f} s | {s['total']:.3f} s | {s['total'] / s['base']:.2f} | {s['first']:.3f} s "
          f"| {s['ready']:.3f} s | {s['missing']} |")  # fmt: skip
    ratios = [s["total"] / s["base"] for s in res.start]
    mr = median(ratios)
    p(f"| **median** | {median([s['base'] for s in res.start]):.3f} s | {median([s['total'] for s in res.start]):.3f} s "
      f"| **{mr:.2f}** | {median([s['first'] for s in res.start]):.3f} s | {median([s['ready'] for s in res.start]):.3f} s "
      f"| |")  # fmt: skip
    p("")
    p("| figure | pyflannel (median) | target | reference (N=5000) | result |")
    p("|---|---|---|---|---|")
    p(f"| start / ip -batch baseline | {mr:.2f}x | <= 1.5x | v0.10.0 1.9x (1.8 s), v0.20.2 6.5x (6.2 s); "
      f"ip -batch 0.95 s | {verdict(mr <= 1.5 and all(s['missing'] == 0 for s in res.start))} |")  # fmt: skip
    p("")
    # 2. burst
    p(f"### 2. Burst: flanneld running (0 peers), {n} leases written as fast as possible")
    p("")
    p("put: one Put per lease, 64 in flight from one gRPC client (as N nodes writing their own key); "
      "txn: Txn requests of 100 Puts, 64 in flight (etcd sends the watch events in batches).")  # fmt: skip
    p("")
    p("| run | writes | written in | lag after last write | missed |")
    p("|---|---|---|---|---|")
    for i, s in enumerate(res.burst):
        lag = f"{s['lag']:.3f} s" if s["lag"] is not None else "not converged"
        p(f"| {i // 2 + 1} | {s['mode']} | {s['write']:.3f} s | {lag} | {s['missing']} |")
    if res.start:
        p("")
        base = median([s["base"] for s in res.start])
        p(f"For scale: `ip -batch` + `bridge -batch` alone need {base:.3f} s "
          f"(median of the start runs) to install these {3 * n} objects.")  # fmt: skip
        txn = [s["write"] for s in res.burst if s["mode"] == "txn"]
        if txn:
            floor = max(0.0, base - median(txn))
            p(f"So even a consumer that began that kernel work with the first txn write and did nothing else "
              f"would end {floor:.3f} s after the last one (writes took {median(txn):.3f} s, median).")  # fmt: skip
    p("")
    p("| figure | pyflannel | target | reference | result |")
    p("|---|---|---|---|---|")
    for mode in ("put", "txn"):
        runs = [s for s in res.burst if s["mode"] == mode]
        if not runs:
            continue
        lags = [s["lag"] for s in runs if s["lag"] is not None]
        worst = max(lags) if len(lags) == len(runs) else float("inf")
        missed = sum(s["missing"] for s in runs)
        p(f"| {mode}: lag (median / worst) | {median(lags):.3f} s / {worst:.3f} s | <= 0.3 s | v0.10.0 1.0 s; "
          f"v0.20.2 never converged (12/12) | {verdict(worst <= 0.3)} |")  # fmt: skip
        p(f"| {mode}: missed leases (all runs) | {missed} ({len(lags)}/{len(runs)} runs converged) | 0 | "
          f"v0.20.2: 12/12 runs never converged | {verdict(missed == 0)} |")  # fmt: skip
    p("")
    # 3. memory
    rss_start = max(s["rss"] for s in res.start) / 1024
    rss_burst = max(s["rss"] for s in res.burst) / 1024
    hwm = max(s["hwm"] for s in res.start + res.burst) / 1024
    rss0 = median([s["rss0"] for s in res.burst]) / 1024
    p(f"### 3. Memory: VmRSS of flanneld 1 s after convergence at N={n} (worst run)")
    p("")
    p("| figure | pyflannel | target | reference | result |")
    p("|---|---|---|---|---|")
    p(f"| RSS after start with {n} leases | {rss_start:.1f} MB | <= 40 MB | v0.20.2 40 MB | {verdict(rss_start <= 40)} |")
    p(f"| RSS after burst of {n} leases | {rss_burst:.1f} MB | <= 40 MB | | {verdict(rss_burst <= 40)} |")
    p(f"| peak (VmHWM), any run | {hwm:.1f} MB | | | |")
    p(f"| RSS with 0 leases (context) | {rss0:.1f} MB | | | |")
    p("")
    # 4. idle
    if res.idle:
        secs = next(iter(res.idle.values()))["seconds"]
        p(f"### 4. Idle: CPU per 60 s with {args.idle_leases} leases (measured over {secs:.0f} s)")
        p("")
        p("| flags | flanneld | + iptables children | total | target | reference | result |")
        p("|---|---|---|---|---|---|---|")
        for k, v in res.idle.items():
            p(f"| {k} | {v['own']:.2f} s | {v['children']:.2f} s | {v['total']:.2f} s | <= 0.2 s | 0.2 s "
              f"| {verdict(v['total'] <= 0.2)} |")  # fmt: skip
        p("")
    # 5. etcd load
    p("### 5. etcd load: requests etcd received from flanneld")
    p("")

    def fmt(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"

    start_req = [sum(s["etcd"].values()) for s in res.start]
    p("| figure | pyflannel | flannel (one LeaseTimeToLive per listed key and per event) |")
    p("|---|---|---|")
    p(f"| at start, {n} leases | {max(start_req)} ({fmt(res.start[0]['etcd'])}) | about {n} + 6 |")
    for mode in ("put", "txn"):
        runs = [s for s in res.burst if s["mode"] == mode]
        if runs:
            worst = max(runs, key=lambda s: sum(s["etcd"].values()))
            total = sum(worst["etcd"].values())
            p(f"| per lease event (burst of {n}, {mode}) | {total / n:.4f} ({total} in all: {fmt(worst['etcd'])}) "
              f"| 1 |")  # fmt: skip
    p("")
    # 6. ready
    p("### 6. Ready: flanneld start -> subnet.env written, 0 leases")
    p("")
    p("| run | flanneld | baseline `ip netns exec python3 -c pass` |")
    p("|---|---|---|")
    for i, (s, f) in enumerate(zip(res.burst, res.ready_floor)):
        p(f"| {i + 1} | {s['ready']:.3f} s | {f:.3f} s |")
    p(f"| **median** | {median([s['ready'] for s in res.burst]):.3f} s | {median(res.ready_floor):.3f} s |")
    overflow = any(s["overflow"] for s in res.start + res.burst)
    if overflow:
        p("")
        p("(the kernel-object watcher overflowed in some run and counted by 20 ms dumps instead)")
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_watch":
        watch_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_check":
        print(json.dumps(exact_check(int(sys.argv[2]), 0), default=str))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="leases for start and burst (default 5000)")
    ap.add_argument("--runs", type=int, default=3, help="start and burst runs (default 3)")
    ap.add_argument("--idle-seconds", type=float, default=60.0, help="idle window (default 60; 0 skips)")
    ap.add_argument("--idle-leases", type=int, default=1000, help="leases for the idle figure (default 1000)")
    ap.add_argument("--burst-timeout", type=float, default=10.0,
                    help="seconds after the last Put before leases count as missed (default 10)")  # fmt: skip
    ap.add_argument("--only", choices=["start", "burst", "idle"], action="append", help="run only these figures")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("converge.py needs root (network namespaces)")
    import pyflannel
    from pyflannel.lab.etcd import available

    if not available():
        sys.exit("etcd/etcdctl not found (ETCD_BIN, ETCDCTL_BIN)")
    only = set(args.only or ["start", "burst", "idle"])
    res = Results(args.n)
    b = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_all = time.monotonic()
    # Bytecode caches for pyflannel (gitignored __pycache__), as an installed daemon has them.
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.dirname(pyflannel.__file__)], check=False,
                   env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})  # fmt: skip
    try:
        b.lab.start()
        b.etcd = b.lab.start_etcd()
        if "start" in only:
            t = time.monotonic()
            b.setup_prefix("/bench/start", args.n)
            print(f"wrote {args.n} leases in {time.monotonic() - t:.1f} s", flush=True)
            for r in range(args.runs):
                run_start(b, r, res)
        if "burst" in only:
            for r in range(args.runs):
                for mode in ("put", "txn"):
                    run_burst(b, r, res, mode)
        if "idle" in only and args.idle_seconds > 0:
            run_idle(b, res)
    finally:
        b.close()
    print(f"(bench took {time.monotonic() - t_all:.0f} s)\n", flush=True)
    if res.start and res.burst:
        print(report(res, args))
    else:
        print(json.dumps(res.__dict__, default=str, indent=1))


if __name__ == "__main__":
    main()
