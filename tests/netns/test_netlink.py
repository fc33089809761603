"""pyflannel.kernel.netlink against the real kernel, each test in its own network namespaces.

The module only ever works in the current namespace, so every call runs in a forked child that has
joined the test's namespace (setns); results come back pickled through a pipe. What the module
programs is compared with what `ip` / `bridge` produce for flannel's commands in a twin namespace.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pickle
import secrets
import select
import socket
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, TypeVar

import pytest

from pyflannel.kernel.netlink import (
    Address,
    Fdb,
    Link,
    LinkMonitor,
    Neighbour,
    Netlink,
    NetlinkError,
    Op,
    Route,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

LOCAL = IPv4Address("192.168.100.1")
MAC = "0e:00:00:00:00:01"


def in_netns(ns: str, fn: Callable[..., T], *args: Any) -> T:
    """Run fn(*args) in a forked child that joined network namespace ns; return its result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        status = 0
        try:
            os.close(r)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            os.close(fd)
            try:
                payload = pickle.dumps((True, fn(*args)))
            except BaseException:  # noqa: BLE001 - reported to the parent
                payload = pickle.dumps((False, traceback.format_exc()))
            with os.fdopen(w, "wb") as f:
                f.write(payload)
        except BaseException:  # noqa: BLE001 - a child must reach os._exit
            status = 1
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise AssertionError(f"child in {ns} died (status {status})")
    ok, value = pickle.loads(data)
    if not ok:
        raise AssertionError(f"in netns {ns}:\n{value}")
    return value  # type: ignore[no-any-return]


def sh(ns: str, *cmd: str) -> str:
    tool, *rest = cmd
    return subprocess.run([tool, "-n", ns, *rest], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def make_ns() -> Iterator[Callable[[], str]]:
    """Factory of namespaces `pfnl-<hex>-<n>`, each with lo up and veth0 (192.168.100.1/24) up."""
    prefix = f"pfnl-{secrets.token_hex(3)}-"
    made: list[str] = []

    def make() -> str:
        ns = f"{prefix}{len(made)}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        made.append(ns)
        sh(ns, "ip", "link", "set", "lo", "up")
        sh(ns, "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        sh(ns, "ip", "addr", "add", f"{LOCAL}/24", "dev", "veth0")
        sh(ns, "ip", "link", "set", "veth0", "up")
        sh(ns, "ip", "link", "set", "veth1", "up")
        return ns

    try:
        yield make
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


# --- code that runs inside the namespace ------------------------------------------------------


def _setup_vxlan(port: int = 0, learning: bool = False, gbp: bool = False) -> Link:
    with Netlink() as nl:
        under = nl.link("veth0")
        assert under is not None
        link = nl.create_vxlan("flannel.1", 1, LOCAL, under.index, port, learning, gbp, 1450, MAC)
        nl.add_address(Address(link.index, IPv4Interface("10.5.1.0/32")))
        nl.set_link(link.index, up=True)
        return link


def _ip_vxlan(ns: str) -> None:
    """flannel.1 as `ip` makes it, with the attributes flannel's netlink library sets."""
    sh(ns, "ip", "link", "add", "flannel.1", "txqueuelen", "0", "mtu", "1450", "address", MAC,
       "type", "vxlan", "id", "1", "local", str(LOCAL), "dev", "veth0", "nolearning")  # fmt: skip
    sh(ns, "ip", "addr", "add", "10.5.1.0/32", "dev", "flannel.1")
    sh(ns, "ip", "link", "set", "flannel.1", "up")


def peer_objects(ifindex: int, n: int) -> list[Op]:
    """flannel's three objects for n remote subnets 10.<a>.<b>.0/24, in flannel's order."""
    ops: list[Op] = []
    for i in range(n):
        a, b = 10 + i // 250, i % 250 + 2
        gw = IPv4Address(f"10.{a}.{b}.0")
        mac = f"0e:01:00:00:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}"
        public = IPv4Address(f"192.168.{101 + i // 250}.{i % 250 + 1}")
        ops.append(("replace", Neighbour(ifindex, gw, mac)))
        ops.append(("replace", Fdb(ifindex, mac, public)))
        ops.append(("replace", Route(IPv4Network(f"10.{a}.{b}.0/24"), gw, ifindex, onlink=True)))
    return ops


def _kernel_state(ifindex: int) -> tuple[set[Route], set[Neighbour], set[Fdb]]:
    with Netlink() as nl:
        return set(nl.routes(oif=ifindex)), set(nl.neighbours(ifindex)), set(nl.fdb(ifindex))


def _apply(ops: list[Op], chunk: int | None = None) -> list[tuple[Op, NetlinkError]]:
    with Netlink(*([chunk] if chunk else [])) as nl:
        return nl.apply(ops)


def _desired(ops: list[Op]) -> tuple[set[Route], set[Neighbour], set[Fdb]]:
    objs = [o for kind, o in ops if kind == "replace"]
    return (
        {o for o in objs if isinstance(o, Route)},
        {o for o in objs if isinstance(o, Neighbour)},
        {o for o in objs if isinstance(o, Fdb)},
    )


def _views(ns: str) -> dict[str, list[str]]:
    """Tool output, lines sorted (neighbour dumps come in hash order)."""
    return {
        k: sorted(v.splitlines())
        for k, v in {
            "route": sh(ns, "ip", "route", "show"),
            "route -d": sh(ns, "ip", "-d", "route", "show"),
            "neigh": sh(ns, "ip", "neigh", "show", "dev", "flannel.1"),
            "fdb": sh(ns, "bridge", "fdb", "show", "dev", "flannel.1"),
        }.items()
    }


# --- tests ------------------------------------------------------------------------------------


def test_vxlan_device_matches_flannel(make_ns: Callable[[], str]) -> None:
    ours, theirs = make_ns(), make_ns()
    link = in_netns(ours, _setup_vxlan)
    _ip_vxlan(theirs)
    assert link.kind == "vxlan" and link.mtu == 1450 and link.mac == MAC and link.name == "flannel.1"
    assert link.vxlan is not None
    assert (link.vxlan.vni, link.vxlan.local, link.vxlan.port) == (1, LOCAL, 8472)
    assert not link.vxlan.learning and not link.vxlan.gbp
    under = in_netns(ours, lambda: Netlink().link("veth0"))
    assert under is not None and link.vxlan.link == under.index
    assert sh(ours, "ip", "-d", "link", "show", "flannel.1") == sh(
        theirs, "ip", "-d", "link", "show", "flannel.1"
    )
    assert sh(ours, "ip", "addr", "show", "flannel.1") == sh(theirs, "ip", "addr", "show", "flannel.1")

    # read back the same way from a device the ip tool made
    back = in_netns(theirs, lambda: Netlink().link("flannel.1"))
    assert back is not None and back.vxlan == link.vxlan and back.up


def test_vxlan_options_roundtrip(make_ns: Callable[[], str]) -> None:
    ns = make_ns()
    link = in_netns(ns, _setup_vxlan, 4789, True, True)
    assert link.vxlan is not None
    assert (link.vxlan.port, link.vxlan.learning, link.vxlan.gbp) == (4789, True, True)
    details = sh(ns, "ip", "-d", "link", "show", "flannel.1")
    assert "dstport 4789" in details and " gbp" in details and "nolearning" not in details

    def again() -> int:
        with Netlink() as nl:
            try:
                nl.create_vxlan("flannel.1", 1, None, None, 0, False, False, None, None)
            except NetlinkError as e:
                assert str(e) == "create vxlan flannel.1: File exists"
                return e.code
        return 0

    assert in_netns(ns, again) == errno.EEXIST


def test_objects_match_ip_tool(make_ns: Callable[[], str]) -> None:
    ours, theirs = make_ns(), make_ns()
    link = in_netns(ours, _setup_vxlan)
    _ip_vxlan(theirs)
    ops = peer_objects(link.index, 3)
    assert in_netns(ours, _apply, ops) == []
    for _, obj in ops:
        if isinstance(obj, Neighbour):
            sh(theirs, "ip", "neigh", "replace", str(obj.dst), "lladdr", obj.lladdr, "dev", "flannel.1",
               "nud", "permanent")  # fmt: skip
        elif isinstance(obj, Fdb):
            sh(theirs, "bridge", "fdb", "replace", obj.lladdr, "dev", "flannel.1", "dst", str(obj.dst),
               "self", "permanent")  # fmt: skip
        else:
            sh(theirs, "ip", "route", "replace", str(obj.dst), "via", str(obj.gateway), "dev", "flannel.1",
               "onlink")  # fmt: skip
    mine, ref = _views(ours), _views(theirs)
    assert mine == ref
    assert "10.10.2.0/24 via 10.10.2.0 dev flannel.1 onlink " in mine["route"]
    assert "0e:01:00:00:00:00 dst 192.168.101.1 self permanent" in mine["fdb"]
    assert "10.10.2.0 lladdr 0e:01:00:00:00:00 PERMANENT " in mine["neigh"]
    # the dumps read objects made by the ip tool back as the values we would have asked for
    assert in_netns(theirs, _kernel_state, link.index) == _desired(ops)


def test_replace_is_idempotent_and_updates(make_ns: Callable[[], str]) -> None:
    ns = make_ns()
    link = in_netns(ns, _setup_vxlan)
    ops = peer_objects(link.index, 20)
    assert in_netns(ns, _apply, ops) == []
    before = _views(ns)
    assert in_netns(ns, _apply, ops) == []
    assert _views(ns) == before
    assert in_netns(ns, _kernel_state, link.index) == _desired(ops)

    # a peer changed its VTEP MAC and public IP: replace overwrites in place
    idx = link.index
    gw = IPv4Address("10.10.2.0")
    changed: list[Op] = [
        ("replace", Neighbour(idx, gw, "0e:02:00:00:00:99")),
        ("replace", Fdb(idx, "0e:01:00:00:00:00", IPv4Address("192.168.200.1"))),
        ("replace", Route(IPv4Network("10.10.2.0/24"), IPv4Address("10.10.2.1"), idx, onlink=True)),
    ]
    assert in_netns(ns, _apply, changed) == []
    routes, neighs, fdbs = in_netns(ns, _kernel_state, idx)
    assert len(routes) == 20 and len(neighs) == 20 and len(fdbs) == 20
    assert {o for _, o in changed} <= routes | neighs | fdbs


def test_delete_absent_and_present(make_ns: Callable[[], str]) -> None:
    ns = make_ns()
    link = in_netns(ns, _setup_vxlan)
    ops = peer_objects(link.index, 5)
    deletes: list[Op] = [("delete", o) for _, o in reversed(ops)]
    assert in_netns(ns, _apply, deletes) == []  # nothing there yet: not an error
    assert in_netns(ns, _apply, ops) == []
    assert in_netns(ns, _apply, deletes) == []
    assert in_netns(ns, _kernel_state, link.index) == (set(), set(), set())
    assert "10.10." not in sh(ns, "ip", "route", "show")
    assert sh(ns, "ip", "neigh", "show", "dev", "flannel.1").strip() == ""
    assert sh(ns, "bridge", "fdb", "show", "dev", "flannel.1").strip() == ""
    assert in_netns(ns, _apply, deletes) == []


def test_batch_of_2000_peers(make_ns: Callable[[], str]) -> None:
    ns = make_ns()
    link = in_netns(ns, _setup_vxlan)
    ops = peer_objects(link.index, 2000)
    assert in_netns(ns, _apply, ops) == []
    assert in_netns(ns, _kernel_state, link.index) == _desired(ops)
    assert sh(ns, "ip", "route", "show", "dev", "flannel.1").count("onlink") == 2000
    assert sh(ns, "ip", "neigh", "show", "dev", "flannel.1").count("PERMANENT") == 2000
    assert sh(ns, "bridge", "fdb", "show", "dev", "flannel.1").count("self permanent") == 2000
    # remove every other peer in one batch
    half: list[Op] = [("delete", o) for _, o in ops[: 3 * 1000]]
    assert in_netns(ns, _apply, half) == []
    routes, neighs, fdbs = in_netns(ns, _kernel_state, link.index)
    assert (len(routes), len(neighs), len(fdbs)) == (1000, 1000, 1000)


def test_errors_map_to_their_op(make_ns: Callable[[], str]) -> None:
    ns = make_ns()
    link = in_netns(ns, _setup_vxlan)
    good = peer_objects(link.index, 300)
    unreachable = Route(IPv4Network("10.99.0.0/24"), IPv4Address("10.99.0.0"), link.index)  # no onlink
    bad_dev = Neighbour(999, IPv4Address("10.98.0.0"), "0e:00:00:00:00:02")
    bad_mac = Neighbour(link.index, IPv4Address("10.97.0.0"), "not-a-mac")
    # failures in the middle of the first chunk, in the second chunk, and one never sent
    ops: list[Op] = [
        *good[:100],
        ("replace", unreachable),
        *good[100:],
        ("replace", bad_dev),
        ("replace", bad_mac),
    ]
    failures = in_netns(ns, _apply, ops, 256)
    assert [(op, e.code) for op, e in failures] == [
        (("replace", unreachable), errno.ENETUNREACH),
        (("replace", bad_dev), errno.ENODEV),
        (("replace", bad_mac), errno.EINVAL),
    ]
    assert str(failures[0][1]) == (
        f"replace route 10.99.0.0/24 via 10.99.0.0 dev #{link.index}: Network is unreachable"
    )
    assert in_netns(ns, _kernel_state, link.index) == _desired(good)


@pytest.mark.parametrize("chunk", [1, 3, 2048])
def test_only_errors_are_answered_and_the_last_request_ends_the_chunk(make_ns: Callable[[], str], chunk: int) -> None:
    """Errors-only batches: a failing or unencodable request at a chunk's end is reported, and
    nothing is left unread on the socket for the next call."""
    ns = make_ns()
    link = in_netns(ns, _setup_vxlan)
    good = peer_objects(link.index, 5)
    unreachable = Route(IPv4Network("10.99.0.0/24"), IPv4Address("10.99.0.0"), link.index)
    bad_mac = Neighbour(link.index, IPv4Address("10.97.0.0"), "not-a-mac")
    gone = Neighbour(link.index, IPv4Address("10.96.0.0"), "0e:00:00:00:00:03")
    ops: list[Op] = [*good, ("delete", gone), ("replace", unreachable), ("replace", bad_mac)]

    def run() -> tuple[list[tuple[Op, int]], list[tuple[Op, int]], str | None]:
        with Netlink(chunk) as nl:
            first = [(op, e.code) for op, e in nl.apply(ops)]
            second = [(op, e.code) for op, e in nl.apply([("replace", unreachable)])]
            lo = nl.link("lo")  # a plain request right after: no stray answer in its way
            return first, second, lo.name if lo else None

    first, second, lo = in_netns(ns, run)
    assert first == [(("replace", unreachable), errno.ENETUNREACH), (("replace", bad_mac), errno.EINVAL)]
    assert second == [(("replace", unreachable), errno.ENETUNREACH)]
    assert lo == "lo"
    assert in_netns(ns, _kernel_state, link.index) == _desired(good)


def test_links_addresses_and_routes(make_ns: Callable[[], str]) -> None:
    ns = make_ns()

    def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with Netlink() as nl:
            veth0 = nl.link("veth0")
            assert veth0 is not None and veth0.kind == "veth" and veth0.up
            assert nl.link_by_index(veth0.index) == veth0
            assert nl.link("nope") is None and nl.link_by_index(9999) is None
            assert {link.name for link in nl.links()} >= {"lo", "veth0", "veth1"}
            veth1 = nl.link("veth1")
            assert veth1 is not None
            nl.set_link(veth1.index, up=False, mtu=1400, mac="0e:00:00:00:00:09")
            out["veth1"] = nl.link_by_index(veth1.index)
            a = Address(veth1.index, IPv4Interface("172.16.0.1/24"))
            nl.add_address(a)
            nl.add_address(a)  # already there: fine
            out["addrs"] = nl.addresses(veth1.index)
            out["ip addr"] = subprocess.run(
                ["ip", "addr", "show", "veth1"], check=True, capture_output=True, text=True
            ).stdout
            nl.delete_address(a)
            nl.delete_address(a)  # gone: fine
            out["addrs_after"] = nl.addresses(veth1.index)
            nl.delete_link(9999)  # absent: fine
            out["get"] = nl.route_get(IPv4Address("192.168.100.77"))
            try:
                nl.route_get(IPv4Address("8.8.8.8"))
            except NetlinkError as e:
                out["get_err"] = e.code
            extra = Route(
                IPv4Network("10.200.0.0/16"), IPv4Address("192.168.100.254"), veth0.index, table=100
            )
            link_route = Route(IPv4Network("10.201.0.0/16"), None, veth0.index, prefsrc=LOCAL)
            assert nl.apply([("replace", extra), ("replace", link_route)]) == []
            out["main"] = nl.routes()
            out["t100"] = nl.routes(table=100)
            out["veth0"] = veth0.index
        return out

    out = in_netns(ns, run)
    v1 = out["veth1"]
    assert (v1.up, v1.mtu, v1.mac) == (False, 1400, "0e:00:00:00:00:09")
    assert out["addrs"] == [Address(v1.index, IPv4Interface("172.16.0.1/24"))]
    assert out["addrs_after"] == []
    assert "inet 172.16.0.1/24 brd 172.16.0.255 scope global veth1" in out["ip addr"]  # as flannel's library
    get = out["get"]
    assert get == Route(IPv4Network("192.168.100.77/32"), None, out["veth0"], prefsrc=LOCAL)
    assert out["get_err"] == errno.ENETUNREACH
    assert out["t100"] == [
        Route(IPv4Network("10.200.0.0/16"), IPv4Address("192.168.100.254"), out["veth0"], table=100)
    ]
    assert Route(IPv4Network("10.201.0.0/16"), None, out["veth0"], prefsrc=LOCAL) in out["main"]
    assert "10.201.0.0/16 dev veth0 scope link src 192.168.100.1" in sh(ns, "ip", "route", "show")
    assert "10.200.0.0/16 via 192.168.100.254 dev veth0" in sh(ns, "ip", "route", "show", "table", "100")


def test_link_monitor_sees_deletion(make_ns: Callable[[], str]) -> None:
    ns = make_ns()

    def run() -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        with LinkMonitor() as mon:
            assert mon.read() == []
            link = _setup_vxlan()
            with Netlink() as nl:
                nl.delete_link(link.index)
            deadline = time.monotonic() + 5
            while ("del", "flannel.1") not in seen and time.monotonic() < deadline:
                select.select([mon], [], [], 0.5)
                seen.extend((kind, lk.name) for kind, lk in mon.read())
        return seen

    seen = in_netns(ns, run)
    assert ("new", "flannel.1") in seen
    assert seen[-1] == ("del", "flannel.1")


def test_link_monitor_overflow_still_reports_deletion(make_ns: Callable[[], str]) -> None:
    ns = make_ns()

    def run() -> set[str]:
        with LinkMonitor() as mon:
            # A tiny receive buffer makes the kernel drop events (ENOBUFS); the monitor must re-list.
            mon._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            for i in range(20):
                subprocess.run(
                    ["ip", "link", "add", f"x{i}", "type", "veth", "peer", "name", f"y{i}"], check=True
                )
            subprocess.run(["ip", "link", "del", "veth0"], check=True)
            return {lk.name for kind, lk in mon.read() if kind == "del"}

    assert {"veth0", "veth1"} <= in_netns(ns, run)


def test_blackhole_route_add_exists_and_delete_leave_the_connected_route(make_ns: Callable[[], str]) -> None:
    """--ip-blackhole-route's kernel object: created, never replaced, deleted by type."""
    ns = make_ns()
    subprocess.run(["ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "v0", "up"], check=True)
    bh = Route(IPv4Network("10.244.5.0/24"), None, None, metric=4294967295, blackhole=True)

    def run() -> tuple[list[Route], int, list[Route], list[Route]]:
        with Netlink() as nl:
            nl.add_route(bh)
            try:
                nl.add_route(bh)
                again = 0
            except NetlinkError as e:
                again = e.code
            listed = nl.routes(blackhole=True)
            # The bridge's address comes later: its connected route (metric 0) is preferred.
            subprocess.run(["ip", "addr", "add", "10.244.5.1/24", "dev", "v0"], check=True)
            assert nl.route_get(IPv4Address("10.244.5.7")).oif == nl.link("v0").index  # type: ignore[union-attr]
            assert nl.apply([("delete", bh)]) == []
            return listed, again, nl.routes(blackhole=True), [r for r in nl.routes() if r.dst == bh.dst]

    listed, again, after, connected = in_netns(ns, run)
    assert listed == [bh] and again == errno.EEXIST and after == []
    assert len(connected) == 1 and not connected[0].blackhole  # the delete named its type
    out = subprocess.run(
        ["ip", "-n", ns, "route", "show", "10.244.5.0/24"], capture_output=True, text=True, check=True
    ).stdout
    assert out.split()[:3] == ["10.244.5.0/24", "dev", "v0"], out
