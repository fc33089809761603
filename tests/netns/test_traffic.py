"""Traffic rules in real network namespaces (root): golden listings, repair, recycle, mode switch, NAT.

Every test creates its own namespaces named ``pftr-<hex>-<role>`` and deletes them in ``finally``;
iptables and nft only ever run inside them (``ip netns exec``). The manager runs in a child
``python3`` inside the namespace, driven by a JSON list of steps (see DRIVER).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("ip", "iptables", "iptables-restore", "nft")),
        reason="needs ip, iptables, iptables-restore and nft",
    ),
]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NET, SN = "10.5.0.0/16", "10.5.72.0/24"

DRIVER = r"""
import asyncio, json, logging, subprocess, sys
from ipaddress import ip_network as n
from pyflannel.traffic import new_traffic_manager

logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

async def main(spec):
    m = new_traffic_manager(spec["nft"], spec.get("no_random", False))
    for op, *args in spec["steps"]:
        if op == "cleanup":
            await m.cleanup_other_mode()
        elif op == "masq":
            prev = (n(args[2]), n(args[3])) if len(args) > 2 else None
            await m.setup_masq(n(args[0]), n(args[1]), prev)
        elif op == "forward":
            await m.setup_forward(n(args[0]))
        elif op == "resync":
            print(json.dumps(await m.resync_once()))
        elif op == "resync_forever":
            try:
                await asyncio.wait_for(m.resync_forever(args[0]), args[1])
            except TimeoutError:
                pass
        elif op == "run":
            subprocess.run(args, check=True)

asyncio.run(main(json.loads(sys.argv[1])))
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


class Namespaces:
    """Creates ``pftr-<hex>-<role>`` namespaces on demand; ``close`` deletes all of them."""

    def __init__(self) -> None:
        self.prefix = f"pftr-{uuid.uuid4().hex[:8]}-"
        self.names: list[str] = []

    def new(self, role: str) -> str:
        name = self.prefix + role
        sh("ip", "netns", "add", name)
        self.names.append(name)
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        return name

    def close(self) -> None:
        for name in reversed(self.names):
            sh("ip", "netns", "del", name, check=False)


@pytest.fixture
def netns() -> Iterator[Namespaces]:
    ns = Namespaces()
    try:
        yield ns
    finally:
        ns.close()


def run_in(ns: str, *argv: str, check: bool = True) -> str:
    return sh("ip", "netns", "exec", ns, *argv, check=check).stdout


def drive(
    ns: str, steps: Sequence[Sequence[object]], nft: bool = False, no_random: bool = False
) -> tuple[str, str]:
    """Run the manager in ``ns`` through ``steps``; returns (stdout, stderr = its log)."""
    spec = json.dumps({"nft": nft, "no_random": no_random, "steps": steps})
    res = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", DRIVER, spec],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout, res.stderr


def flannel_nat(ns: str) -> str:
    """As flannel's e2e: FLANNEL lines of ``-S POSTROUTING``, then ``-S FLANNEL-POSTRTG``."""
    post = [
        ln for ln in run_in(ns, "iptables", "-t", "nat", "-S", "POSTROUTING").splitlines() if "FLANNEL" in ln
    ]
    return "\n".join([*post, *run_in(ns, "iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG").splitlines()])


def flannel_filter(ns: str) -> str:
    """As flannel's e2e: ``-S FORWARD`` then ``-S FLANNEL-FWD``."""
    fwd = run_in(ns, "iptables", "-t", "filter", "-S", "FORWARD").rstrip("\n")
    return fwd + "\n" + run_in(ns, "iptables", "-t", "filter", "-S", "FLANNEL-FWD").rstrip("\n")


GOLDEN_NAT = """\
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-N FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.72.0/24 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.72.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.72.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"""

KUBE_FWD = '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j ACCEPT'
GOLDEN_FILTER = f"""\
-P FORWARD ACCEPT
{KUBE_FWD}
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-N FLANNEL-FWD
-A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"""

FULL_NAT = (
    "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n"
    + GOLDEN_NAT.replace("-N FLANNEL-POSTRTG\n", "").replace(
        "-A POSTROUTING", "-N FLANNEL-POSTRTG\n-A POSTROUTING", 1
    )
)

SETUP: list[list[object]] = [["cleanup"], ["masq", NET, SN], ["forward", NET]]


def test_iptables_golden_and_idempotent(netns: Namespaces) -> None:
    h = netns.new("host")
    # A rule that exists before flannel starts (kube-proxy's): flannel's FORWARD jump goes after it.
    run_in(
        h,
        "iptables",
        "-t",
        "filter",
        "-A",
        "FORWARD",
        "-m",
        "comment",
        "--comment",
        "kubernetes forwarding rules",
        "-j",
        "ACCEPT",
    )
    _, log = drive(h, SETUP)
    assert flannel_nat(h) == GOLDEN_NAT
    assert flannel_filter(h) == GOLDEN_FILTER
    assert run_in(h, "iptables", "-t", "nat", "-S") == FULL_NAT + "\n"
    assert "masq rules installed" in log

    _, log = drive(h, SETUP)
    assert flannel_nat(h) == GOLDEN_NAT
    assert flannel_filter(h) == GOLDEN_FILTER
    assert run_in(h, "iptables", "-t", "nat", "-S") == FULL_NAT + "\n"
    assert "masq rules already in place" in log and "forward rules already in place" in log


def test_iptables_without_random_fully(netns: Namespaces) -> None:
    h = netns.new("host")
    drive(h, [["masq", NET, SN]], no_random=True)
    assert flannel_nat(h) == GOLDEN_NAT.replace(" --random-fully", "")


def test_resync_repairs_deleted_rule_and_chain(netns: Namespaces) -> None:
    h = netns.new("host")
    steps: list[list[object]] = [
        *SETUP,
        ["resync"],
        ["run", "iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "3"],
        ["run", "iptables", "-t", "filter", "-D", "FORWARD", "1"],
        ["resync"],
        ["resync"],
    ]
    out, _ = drive(h, steps)
    first, repaired, after = (json.loads(ln) for ln in out.splitlines())
    assert first == [] and after == []
    assert len(repaired) == 2
    assert "missing '-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.72.0/24" in repaired[0]
    assert "missing '-A FORWARD -m comment" in repaired[1]
    assert flannel_nat(h) == GOLDEN_NAT
    assert flannel_filter(h) == GOLDEN_FILTER.replace(KUBE_FWD + "\n", "")

    # The periodic loop: the whole chain removed behind our back comes back, with one log line.
    _, log = drive(
        h,
        [
            ["masq", NET, SN],
            ["run", "iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"],
            ["run", "iptables", "-t", "nat", "-D", "POSTROUTING", "1"],
            ["run", "iptables", "-t", "nat", "-X", "FLANNEL-POSTRTG"],
            ["resync_forever", 0.2, 0.5],
        ],
    )
    assert flannel_nat(h) == GOLDEN_NAT
    lines = [ln for ln in log.splitlines() if "re-created" in ln]
    assert len(lines) == 1 and "missing chain FLANNEL-POSTRTG" in lines[0]


def test_recycle_removes_old_network_rules(netns: Namespaces) -> None:
    h = netns.new("host")
    drive(h, [["masq", "10.6.0.0/16", "10.6.5.0/24"]], no_random=True)
    assert "10.6.5.0/24" in flannel_nat(h)
    _, log = drive(h, [["masq", NET, SN, "10.6.0.0/16", "10.6.5.0/24"]])
    assert "trying to recycle old iptables rules" in log
    assert "Deleted 6 old masquerade rules" in log
    assert "10.6." not in run_in(h, "iptables", "-t", "nat", "-S")
    assert flannel_nat(h) == GOLDEN_NAT
    # Same network and subnet as before: nothing to recycle.
    _, log = drive(h, [["masq", NET, SN, NET, SN]])
    assert "recycle" not in log and flannel_nat(h) == GOLDEN_NAT


NFT_POSTRTG = """\
table ip flannel-ipv4 {
\tchain postrtg {
\t\tcomment "chain to manage traffic masquerading by flannel"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x00004000 == 0x00004000 return
\t\tip saddr 10.5.72.0/24 ip daddr 10.5.0.0/16 return
\t\tip saddr 10.5.0.0/16 ip daddr 10.5.72.0/24 return
\t\tip saddr != 10.5.0.0/16 ip daddr 10.5.72.0/24 return
\t\tip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random
\t}
}
"""
NFT_FORWARD = """\
table ip flannel-ipv4 {
\tchain forward {
\t\tcomment "chain to accept flannel traffic"
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.5.0.0/16 accept
\t\tip daddr 10.5.0.0/16 accept
\t}
}
"""


def test_nftables_shape_idempotence_and_resync(netns: Namespaces) -> None:
    h = netns.new("host")
    drive(h, SETUP, nft=True)
    # flannel's listing except the two rules nftables.py writes with iptables semantics.
    assert run_in(h, "nft", "list", "chain", "ip", "flannel-ipv4", "postrtg") == NFT_POSTRTG
    assert run_in(h, "nft", "list", "chain", "ip", "flannel-ipv4", "forward") == NFT_FORWARD
    assert 'comment "rules for flannel-ipv4"' in run_in(h, "nft", "list", "table", "ip", "flannel-ipv4")

    handles = run_in(h, "nft", "-a", "list", "chain", "ip", "flannel-ipv4", "postrtg")
    out, log = drive(h, [*SETUP, ["resync"]], nft=True)
    assert "already in place" in log and json.loads(out) == []
    assert run_in(h, "nft", "-a", "list", "chain", "ip", "flannel-ipv4", "postrtg") == handles  # untouched

    handle = next(
        ln.split("# handle ")[1] for ln in handles.splitlines() if "10.5.72.0/24 ip daddr 10.5.0.0/16" in ln
    )
    out, _ = drive(
        h,
        [
            *SETUP,
            ["run", "nft", "delete", "rule", "ip", "flannel-ipv4", "postrtg", "handle", handle.strip()],
            ["run", "nft", "delete", "chain", "ip", "flannel-ipv4", "forward"],
            ["resync"],
        ],
        nft=True,
    )
    repaired = json.loads(out)
    assert len(repaired) == 2 and "missing chain forward" in repaired[1]
    assert run_in(h, "nft", "list", "chain", "ip", "flannel-ipv4", "postrtg") == NFT_POSTRTG
    assert run_in(h, "nft", "list", "chain", "ip", "flannel-ipv4", "forward") == NFT_FORWARD


def test_switching_modes_cleans_the_other(netns: Namespaces) -> None:
    h = netns.new("host")
    drive(h, SETUP)
    assert flannel_nat(h) == GOLDEN_NAT
    drive(h, SETUP, nft=True)
    for table in ("nat", "filter"):
        assert "FLANNEL" not in run_in(h, "iptables", "-t", table, "-S")
    assert run_in(h, "nft", "list", "chain", "ip", "flannel-ipv4", "postrtg") == NFT_POSTRTG
    drive(h, SETUP)
    assert "flannel-ipv4" not in run_in(h, "nft", "list", "tables")
    assert flannel_nat(h) == GOLDEN_NAT


LISTENER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(5)
print("ready", flush=True)
data, addr = s.recvfrom(100)
print(addr[0], flush=True)
"""

SENDER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if len(sys.argv) > 3:
    s.bind((sys.argv[3], 0))
for _ in range(50):
    s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.05)
"""

_ports = iter(range(9901, 9999))


def veth(a: str, a_addr: str, b: str, b_addr: str, name: str) -> None:
    """veth pair ``eth-<name>`` between namespaces a and b (created inside them), addressed and up."""
    dev = f"eth-{name}"
    sh("ip", "-n", a, "link", "add", dev, "type", "veth", "peer", "name", dev, "netns", b)
    for ns_name, addr in ((a, a_addr), (b, b_addr)):
        sh("ip", "-n", ns_name, "addr", "add", addr, "dev", dev)
        sh("ip", "-n", ns_name, "link", "set", dev, "up")


def source_seen(sender: str, receiver: str, dst: str, src: str = "") -> str:
    """Send UDP from namespace ``sender`` (from ``src`` if given) to ``dst``; the source ``receiver`` saw.

    Each call uses its own port, so a datagram of an earlier call can't be taken for this one.
    """
    port = str(next(_ports))
    listener = subprocess.Popen(
        ["ip", "netns", "exec", receiver, sys.executable, "-c", LISTENER, port],
        stdout=subprocess.PIPE,
        text=True,
    )
    sender_proc: subprocess.Popen[bytes] | None = None
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        argv = [sys.executable, "-c", SENDER, dst, port, *([src] if src else [])]
        sender_proc = subprocess.Popen(["ip", "netns", "exec", sender, *argv])
        out, _ = listener.communicate(timeout=10)
        return out.strip()
    finally:
        for proc in (listener, sender_proc):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("nft", [False, True], ids=["iptables", "nftables"])
def test_masquerade_traffic(netns: Namespaces, nft: bool) -> None:
    """container 10.5.72.2 -> host -> remote container 10.5.99.2 (in NET) / internet 198.51.100.1."""
    host, cont, remote, inet = (netns.new(r) for r in ("host", "cont", "remote", "inet"))
    veth(host, "10.5.72.1/24", cont, "10.5.72.2/24", "c")
    veth(host, "10.5.99.1/24", remote, "10.5.99.2/24", "r")
    veth(host, "198.51.100.254/24", inet, "198.51.100.1/24", "i")
    run_in(host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    run_in(cont, "ip", "route", "add", "default", "via", "10.5.72.1")
    run_in(remote, "ip", "route", "add", "default", "via", "10.5.99.1")
    run_in(inet, "ip", "route", "add", "10.5.72.0/24", "via", "198.51.100.254")
    drive(host, SETUP, nft=nft)

    assert source_seen(cont, remote, "10.5.99.2") == "10.5.72.2"  # inside NET: own address kept
    assert source_seen(cont, inet, "198.51.100.1") == "198.51.100.254"  # outside: the host's address
    assert source_seen(inet, cont, "10.5.72.2") == "198.51.100.1"  # outside to our container: kept
    # From outside NET to a remote container: masqueraded to the host's overlay-side address. (flannel's
    # nft 4th rule, saddr != SN daddr NET return, would let 198.51.100.254 through unchanged.)
    assert source_seen(host, remote, "10.5.99.2", src="198.51.100.254") == "10.5.99.1"
