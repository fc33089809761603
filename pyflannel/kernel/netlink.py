"""Raw rtnetlink: the only module of pyflannel that talks to the kernel's routing subsystem.

Why raw netlink and not pyroute2 (or ``ip`` subprocesses): a vxlan host with 5000 peers needs
15000 kernel objects (route, neighbour, FDB entry per peer) programmed at start-up and after every
re-list. pyroute2 spends about 1 ms of CPU per request and 0.4 s on import; one ``ip`` process per
object is worse. The kernel itself handles one of these requests in a few microseconds, so the cost
that matters is Python's: how many bytes objects, struct calls and syscalls we spend per object.

Design:

* One ``Netlink`` object owns one ``NETLINK_ROUTE`` socket in the *current* network namespace. The
  daemon is started inside its namespace by ``ip netns exec``; this module never switches namespaces.
* Plain calls (``link``, ``create_vxlan``, ``add_address``, ...) are one request with ``NLM_F_ACK``
  and a wait for its answer; dumps read multi-part replies until ``NLMSG_DONE`` and parse only the
  attributes that the dataclasses carry.
* ``apply`` is the hot path. Each operation is encoded with a precompiled ``struct.Struct`` (one
  ``pack`` call for the common shapes), a chunk of messages is joined into one buffer and handed to
  the kernel with a single ``send``. rtnetlink processes a request buffer synchronously inside that
  ``send``, so when it returns every answer of the chunk is already queued on our socket. Only the
  last request of a chunk carries ``NLM_F_ACK``; the kernel answers the others only if they fail,
  so the last ack marks the end of the chunk's errors and 15000 successful updates cost no acks to
  queue and parse. Each request has its own sequence number, which maps an error to its operation.
* ``NETLINK_CAP_ACK`` keeps error acks small (the kernel does not echo the request), and the socket
  buffers are raised to 4 MB (``SO_*BUFFORCE`` when we are root) so big chunks and big dumps fit.

Kernel objects are encoded the way flannel (vishvananda/netlink) encodes them, so ``ip -d link``,
``ip route``, ``ip neigh`` and ``bridge fdb`` show the same thing as on a flannel host.

A ``Netlink`` object is not thread-safe: callers serialise its use (the backends hold a lock and run
big batches with ``asyncio.to_thread``).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Literal, Self

__all__ = [
    "Address",
    "Fdb",
    "Link",
    "LinkMonitor",
    "Neighbour",
    "Netlink",
    "NetlinkError",
    "Op",
    "Route",
    "VxlanInfo",
]

# --- constants (linux/netlink.h, rtnetlink.h, if_link.h, neighbour.h, if_addr.h) --------------

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
RTM_GETNEIGH = 30

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10

AF_UNSPEC = 0
AF_INET = 2
AF_BRIDGE = 7

IFF_UP = 0x1

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_TXQLEN = 13
IFLA_LINKINFO = 18
IFLA_EXT_MASK = 29
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
RTEXT_FILTER_SKIP_STATS = 1 << 3

IFLA_VXLAN_ID = 1
IFLA_VXLAN_LINK = 3
IFLA_VXLAN_LOCAL = 4
IFLA_VXLAN_TTL = 5
IFLA_VXLAN_TOS = 6
IFLA_VXLAN_LEARNING = 7
IFLA_VXLAN_PROXY = 11
IFLA_VXLAN_RSC = 12
IFLA_VXLAN_L2MISS = 13
IFLA_VXLAN_L3MISS = 14
IFLA_VXLAN_PORT = 15
IFLA_VXLAN_UDP_ZERO_CSUM6_TX = 19
IFLA_VXLAN_UDP_ZERO_CSUM6_RX = 20
IFLA_VXLAN_GBP = 23

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_PREFSRC = 7
RTA_TABLE = 15

RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
RTNH_F_ONLINK = 0x4
RT_TABLE_MAIN = 254

NDA_DST = 1
NDA_LLADDR = 2
NDA_IFINDEX = 8
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x2

NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER

SOCKET_BUFFER = 4 << 20
CHUNK = 2048  # requests per send(): ~130 KB, well inside the socket buffers
RECV_SIZE = 1 << 16  # the kernel fills at most 32 KB per dump datagram

_F_REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
_F_DELETE = NLM_F_REQUEST | NLM_F_ACK
_F_DUMP = NLM_F_REQUEST | NLM_F_DUMP

# --- wire structures -------------------------------------------------------------------------

_NLMSGHDR = struct.Struct("=IHHII")
_ERRNO = struct.Struct("=i")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")
_RTA = struct.Struct("=HH")
_RTA_U32 = struct.Struct("=HHI")
_RTA_4S = struct.Struct("=HH4s")
_U32 = struct.Struct("=I")
_BE16 = struct.Struct("!H")

# Whole messages in one pack() for the shapes apply() sends by the thousand:
# nlmsghdr + rtmsg + RTA_TABLE + RTA_DST + RTA_GATEWAY + RTA_OIF
_ROUTE_GW_OIF = struct.Struct("=IHHII BBBBBBBBI HHI HH4s HH4s HHI".replace(" ", ""))
# nlmsghdr + ndmsg + NDA_DST + NDA_LLADDR (6 bytes, padded to 8)
_NEIGH = struct.Struct("=IHHII BxxxiHBB HH4s HH6s2x".replace(" ", ""))
# nlmsghdr + ndmsg + NDA_LLADDR + NDA_DST
_FDB = struct.Struct("=IHHII BxxxiHBB HH6s2x HH4s".replace(" ", ""))


# --- data ------------------------------------------------------------------------------------


class NetlinkError(Exception):
    """A request the kernel refused; ``code`` is the positive errno."""

    def __init__(self, code: int, op: str = "", obj: str = "") -> None:
        super().__init__(code, op, obj)  # args make the exception picklable
        self.code = code
        self.op = op
        self.obj = obj

    def __str__(self) -> str:
        what = " ".join(p for p in (self.op, self.obj) if p)
        reason = os.strerror(self.code)
        return f"{what}: {reason}" if what else reason


@dataclass(frozen=True, slots=True)
class VxlanInfo:
    vni: int
    local: IPv4Address | None
    link: int | None
    port: int
    learning: bool
    gbp: bool


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    kind: str | None
    mtu: int
    mac: str | None
    up: bool
    vxlan: VxlanInfo | None = None


@dataclass(frozen=True, slots=True)
class Address:
    ifindex: int
    interface: IPv4Interface


@dataclass(frozen=True, slots=True)
class Route:
    dst: IPv4Network
    gateway: IPv4Address | None
    oif: int | None
    onlink: bool = False
    table: int = RT_TABLE_MAIN
    prefsrc: IPv4Address | None = None
    metric: int = 0
    blackhole: bool = False  # type blackhole: packets to dst are dropped (no gateway, no device)

    def __str__(self) -> str:
        s = f"blackhole {self.dst}" if self.blackhole else f"route {self.dst}"
        if self.gateway is not None:
            s += f" via {self.gateway}"
        if self.oif is not None:
            s += f" dev #{self.oif}"
        if self.onlink:
            s += " onlink"
        if self.table != RT_TABLE_MAIN:
            s += f" table {self.table}"
        if self.prefsrc is not None:
            s += f" src {self.prefsrc}"
        if self.metric:
            s += f" metric {self.metric}"
        return s


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A permanent ARP entry."""

    ifindex: int
    dst: IPv4Address
    lladdr: str

    def __str__(self) -> str:
        return f"neighbour {self.dst} lladdr {self.lladdr} dev #{self.ifindex}"


@dataclass(frozen=True, slots=True)
class Fdb:
    """A vxlan forwarding entry: ``<lladdr> dev <ifindex> dst <dst> self permanent``."""

    ifindex: int
    lladdr: str
    dst: IPv4Address

    def __str__(self) -> str:
        return f"fdb {self.lladdr} dev #{self.ifindex} dst {self.dst}"


Op = tuple[Literal["replace", "delete"], Route | Neighbour | Fdb]

# --- helpers ---------------------------------------------------------------------------------


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return _RTA.pack(n, kind) + payload + b"\0" * (-n & 3)


def _attrs(data: bytes, off: int, end: int) -> dict[int, bytes]:
    """Attribute type -> payload of the attributes in data[off:end] (last one wins)."""
    out: dict[int, bytes] = {}
    unpack = _RTA.unpack_from
    while off + 4 <= end:
        n, kind = unpack(data, off)
        if n < 4:
            break
        out[kind & NLA_TYPE_MASK] = data[off + 4 : off + n]
        off += (n + 3) & ~3
    return out


def _mac_bytes(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw


def _u32(b: bytes) -> int:
    return int(_U32.unpack_from(b)[0])


def _ipv4(b: bytes | None) -> IPv4Address | None:
    return IPv4Address(b) if b is not None and len(b) == 4 else None


def _raise_for(code: int, op: str, obj: str) -> None:
    raise NetlinkError(code, op, obj)


def _open_socket(groups: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except OSError:  # not root: the plain option, capped by net.core.[rw]mem_max
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
        try:
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        except OSError:
            pass  # old kernel: acks just carry a copy of the request
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


# --- message parsers (payload offset/end within one datagram) --------------------------------


def _parse_link(data: bytes, off: int, end: int) -> Link:
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, off)
    a = _attrs(data, off + _IFINFOMSG.size, end)
    name = a.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode(errors="replace")
    mtu = _u32(a[IFLA_MTU]) if IFLA_MTU in a else 0
    raw_mac = a.get(IFLA_ADDRESS)
    mac = raw_mac.hex(":") if raw_mac else None
    kind: str | None = None
    vxlan: VxlanInfo | None = None
    info = a.get(IFLA_LINKINFO)
    if info is not None:
        li = _attrs(info, 0, len(info))
        if IFLA_INFO_KIND in li:
            kind = li[IFLA_INFO_KIND].split(b"\0", 1)[0].decode()
        if kind == "vxlan" and IFLA_INFO_DATA in li:
            d = li[IFLA_INFO_DATA]
            v = _attrs(d, 0, len(d))
            link = _u32(v[IFLA_VXLAN_LINK]) if IFLA_VXLAN_LINK in v else 0
            vxlan = VxlanInfo(
                vni=_u32(v[IFLA_VXLAN_ID]) if IFLA_VXLAN_ID in v else 0,
                local=_ipv4(v.get(IFLA_VXLAN_LOCAL)),
                link=link or None,
                port=int(_BE16.unpack(v[IFLA_VXLAN_PORT])[0]) if IFLA_VXLAN_PORT in v else 0,
                learning=bool(v.get(IFLA_VXLAN_LEARNING, b"\0")[0]),
                gbp=IFLA_VXLAN_GBP in v,
            )
    return Link(index=index, name=name, kind=kind, mtu=mtu, mac=mac, up=bool(flags & IFF_UP), vxlan=vxlan)


def _parse_route(data: bytes, off: int, end: int) -> tuple[Route, int, int]:
    """The route, its rtm_type and its family."""
    family, dst_len, _src_len, _tos, table, _proto, _scope, rtype, rflags = _RTMSG.unpack_from(data, off)
    a = _attrs(data, off + _RTMSG.size, end)
    if RTA_TABLE in a:
        table = _u32(a[RTA_TABLE])
    dst = a.get(RTA_DST, b"\0\0\0\0")
    route = Route(
        dst=IPv4Network((dst, dst_len)),
        gateway=_ipv4(a.get(RTA_GATEWAY)),
        oif=_u32(a[RTA_OIF]) if RTA_OIF in a else None,
        onlink=bool(rflags & RTNH_F_ONLINK),
        table=table,
        prefsrc=_ipv4(a.get(RTA_PREFSRC)),
        metric=_u32(a[RTA_PRIORITY]) if RTA_PRIORITY in a else 0,
        blackhole=rtype == RTN_BLACKHOLE,
    )
    return route, rtype, family


# --- request encoders ------------------------------------------------------------------------


def _encode_route(kind: str, r: Route, seq: int, noack: int = 0) -> bytes:
    gw, oif, table, dst = r.gateway, r.oif, r.table, r.dst
    rflags = RTNH_F_ONLINK if r.onlink else 0
    if kind == "replace":
        mtype, nlflags, proto, rtype = RTM_NEWROUTE, _F_REPLACE ^ noack, RTPROT_BOOT, RTN_UNICAST
        scope = RT_SCOPE_UNIVERSE if gw is not None else RT_SCOPE_LINK
    else:
        # Like `ip route del`: any protocol, scope and type match (but a blackhole's delete names
        # its type, so that it can never take the same prefix's connected route with it).
        mtype, nlflags, proto, rtype, scope = RTM_DELROUTE, _F_DELETE ^ noack, 0, 0, RT_SCOPE_NOWHERE
    if r.blackhole:
        rtype = RTN_BLACKHOLE
        if kind == "replace":
            scope = RT_SCOPE_UNIVERSE
    rtm_table = table if table < 256 else 0
    plen = dst.prefixlen
    if gw is not None and oif is not None and r.prefsrc is None and plen and not r.metric:
        return _ROUTE_GW_OIF.pack(
            _ROUTE_GW_OIF.size, mtype, nlflags, seq, 0,
            AF_INET, plen, 0, 0, rtm_table, proto, scope, rtype, rflags,
            8, RTA_TABLE, table,
            8, RTA_DST, dst.network_address.packed,
            8, RTA_GATEWAY, gw.packed,
            8, RTA_OIF, oif,
        )  # fmt: skip
    parts = [_RTA_U32.pack(8, RTA_TABLE, table)]
    if plen:
        parts.append(_RTA_4S.pack(8, RTA_DST, dst.network_address.packed))
    if gw is not None:
        parts.append(_RTA_4S.pack(8, RTA_GATEWAY, gw.packed))
    if oif is not None:
        parts.append(_RTA_U32.pack(8, RTA_OIF, oif))
    if r.prefsrc is not None:
        parts.append(_RTA_4S.pack(8, RTA_PREFSRC, r.prefsrc.packed))
    if r.metric:
        parts.append(_RTA_U32.pack(8, RTA_PRIORITY, r.metric))
    body = b"".join(parts)
    return (
        _NLMSGHDR.pack(16 + _RTMSG.size + len(body), mtype, nlflags, seq, 0)
        + _RTMSG.pack(AF_INET, plen, 0, 0, rtm_table, proto, scope, rtype, rflags)
        + body
    )


def _encode_neigh(kind: str, n: Neighbour, seq: int, noack: int = 0) -> bytes:
    if kind == "replace":
        mtype, nlflags = RTM_NEWNEIGH, _F_REPLACE ^ noack
    else:
        mtype, nlflags = RTM_DELNEIGH, _F_DELETE ^ noack
    return _NEIGH.pack(
        _NEIGH.size, mtype, nlflags, seq, 0,
        AF_INET, n.ifindex, NUD_PERMANENT, 0, RTN_UNICAST,
        8, NDA_DST, n.dst.packed,
        10, NDA_LLADDR, _mac_bytes(n.lladdr),
    )  # fmt: skip


def _encode_fdb(kind: str, f: Fdb, seq: int, noack: int = 0) -> bytes:
    if kind == "replace":
        mtype, nlflags = RTM_NEWNEIGH, _F_REPLACE ^ noack
    else:
        mtype, nlflags = RTM_DELNEIGH, _F_DELETE ^ noack
    return _FDB.pack(
        _FDB.size, mtype, nlflags, seq, 0,
        AF_BRIDGE, f.ifindex, NUD_PERMANENT | NUD_NOARP, NTF_SELF, 0,
        10, NDA_LLADDR, _mac_bytes(f.lladdr),
        8, NDA_DST, f.dst.packed,
    )  # fmt: skip


_ENCODERS = {Route: _encode_route, Neighbour: _encode_neigh, Fdb: _encode_fdb}
# A delete of something already gone is what the caller wanted.
_GONE = frozenset({errno.ENOENT, errno.ESRCH})


# --- the socket ------------------------------------------------------------------------------


class Netlink:
    """One rtnetlink socket in the current network namespace."""

    def __init__(self, chunk: int = CHUNK) -> None:
        self._sock = _open_socket()
        self._seq = 0
        self._chunk = max(1, chunk)
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)

    # lifecycle

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # plumbing

    def _next_seq(self, n: int = 1) -> int:
        seq = self._seq + 1
        if seq + n >= 1 << 32:
            seq = 1
        self._seq = seq + n - 1
        return seq

    def _messages(self) -> Iterator[tuple[int, int, int, bytes, int, int]]:
        """(type, flags, seq, datagram, payload offset, payload end) for every message received."""
        data = self._sock.recv(RECV_SIZE)
        off, size = 0, len(data)
        while off + 16 <= size:
            n, mtype, flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
            if n < 16:
                break
            yield mtype, flags, seq, data, off + 16, min(off + n, size)
            off += (n + 3) & ~3

    def _request(
        self, mtype: int, flags: int, payload: bytes, op: str, obj: str
    ) -> list[tuple[int, bytes, int, int]]:
        """Send one request with NLM_F_ACK; the reply messages once the ack arrives; errors raise."""
        seq = self._next_seq()
        flags |= NLM_F_REQUEST | NLM_F_ACK
        self._sock.send(_NLMSGHDR.pack(16 + len(payload), mtype, flags, seq, 0) + payload)
        replies: list[tuple[int, bytes, int, int]] = []
        while True:
            for rtype, _flags, rseq, data, off, end in self._messages():
                if rseq != seq:
                    continue  # a late answer to an earlier, abandoned request
                if rtype == NLMSG_ERROR:
                    code = -_ERRNO.unpack_from(data, off)[0]
                    if code:
                        _raise_for(code, op, obj)
                    return replies
                replies.append((rtype, data, off, end))

    def _dump(self, mtype: int, payload: bytes, op: str) -> list[tuple[int, bytes, int, int]]:
        """All messages of a dump; retried when the kernel flags it as interrupted by a change."""
        for _attempt in range(5):
            seq = self._next_seq()
            self._sock.send(_NLMSGHDR.pack(16 + len(payload), mtype, _F_DUMP, seq, 0) + payload)
            out: list[tuple[int, bytes, int, int]] = []
            interrupted = False
            done = False
            while not done:
                for rtype, flags, rseq, data, off, end in self._messages():
                    if rseq != seq:
                        continue
                    if flags & NLM_F_DUMP_INTR:
                        interrupted = True
                    if rtype == NLMSG_DONE:
                        done = True
                        break
                    if rtype == NLMSG_ERROR:
                        code = -_ERRNO.unpack_from(data, off)[0]
                        if code:
                            _raise_for(code, "dump", op)
                        done = True
                        break
                    out.append((rtype, data, off, end))
            if not interrupted:
                return out
        return out

    # links

    def links(self) -> list[Link]:
        payload = _IFINFOMSG.pack(AF_UNSPEC, 0, 0, 0, 0) + _attr(
            IFLA_EXT_MASK, _U32.pack(RTEXT_FILTER_SKIP_STATS)
        )
        return [
            _parse_link(data, off, end)
            for rtype, data, off, end in self._dump(RTM_GETLINK, payload, "links")
            if rtype == RTM_NEWLINK
        ]

    def _get_link(self, index: int, name: str | None) -> Link | None:
        payload = _IFINFOMSG.pack(AF_UNSPEC, 0, index, 0, 0) + _attr(
            IFLA_EXT_MASK, _U32.pack(RTEXT_FILTER_SKIP_STATS)
        )
        if name is not None:
            payload += _attr(IFLA_IFNAME, name.encode() + b"\0")
        try:
            replies = self._request(RTM_GETLINK, 0, payload, "get link", name or f"#{index}")
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        for rtype, data, off, end in replies:
            if rtype == RTM_NEWLINK:
                return _parse_link(data, off, end)
        return None

    def link(self, name: str) -> Link | None:
        return self._get_link(0, name)

    def link_by_index(self, index: int) -> Link | None:
        return self._get_link(index, None)

    def create_vxlan(
        self,
        name: str,
        vni: int,
        local: IPv4Address | None,
        link: int | None,
        port: int,
        learning: bool,
        gbp: bool,
        mtu: int | None,
        mac: str | None,
    ) -> Link:
        """Create a vxlan device with exactly the attributes flannel's netlink library sends."""
        data = [_attr(IFLA_VXLAN_ID, _U32.pack(vni))]
        if link:
            data.append(_attr(IFLA_VXLAN_LINK, _U32.pack(link)))
        if local is not None:
            data.append(_attr(IFLA_VXLAN_LOCAL, local.packed))
        # vishvananda/netlink always sends these (as zero unless set); do the same so a device
        # created here cannot differ from one flannel created.
        for kind, value in (
            (IFLA_VXLAN_TTL, 0),
            (IFLA_VXLAN_TOS, 0),
            (IFLA_VXLAN_LEARNING, int(learning)),
            (IFLA_VXLAN_PROXY, 0),
            (IFLA_VXLAN_RSC, 0),
            (IFLA_VXLAN_L2MISS, 0),
            (IFLA_VXLAN_L3MISS, 0),
            (IFLA_VXLAN_UDP_ZERO_CSUM6_TX, 0),
            (IFLA_VXLAN_UDP_ZERO_CSUM6_RX, 0),
        ):
            data.append(_attr(kind, bytes((value,))))
        if gbp:
            data.append(_attr(IFLA_VXLAN_GBP, b""))
        if port:  # 0: leave the kernel default (8472 on Linux)
            data.append(_attr(IFLA_VXLAN_PORT, _BE16.pack(port)))
        linkinfo = _attr(IFLA_INFO_KIND, b"vxlan") + _attr(IFLA_INFO_DATA, b"".join(data))
        attrs = [_attr(IFLA_IFNAME, name.encode() + b"\0")]
        if mtu:
            attrs.append(_attr(IFLA_MTU, _U32.pack(mtu)))
        # flannel's LinkAttrs leave TxQLen at 0 and the library sends it: flannel.1 has qlen 0.
        attrs.append(_attr(IFLA_TXQLEN, _U32.pack(0)))
        if mac is not None:
            attrs.append(_attr(IFLA_ADDRESS, _mac_bytes(mac)))
        attrs.append(_attr(IFLA_LINKINFO, linkinfo))
        payload = _IFINFOMSG.pack(AF_UNSPEC, 0, 0, 0, 0) + b"".join(attrs)
        self._request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, payload, "create vxlan", name)
        created = self.link(name)
        if created is None:
            raise NetlinkError(errno.ENODEV, "create vxlan", name)
        return created

    def delete_link(self, index: int) -> None:
        try:
            self._request(
                RTM_DELLINK, 0, _IFINFOMSG.pack(AF_UNSPEC, 0, index, 0, 0), "delete link", f"#{index}"
            )
        except NetlinkError as e:
            if e.code not in (errno.ENODEV, errno.ENOENT):
                raise

    def set_link(
        self, index: int, *, up: bool | None = None, mtu: int | None = None, mac: str | None = None
    ) -> None:
        flags = change = 0
        if up is not None:
            flags, change = (IFF_UP if up else 0), IFF_UP
        attrs = b""
        if mtu is not None:
            attrs += _attr(IFLA_MTU, _U32.pack(mtu))
        if mac is not None:
            attrs += _attr(IFLA_ADDRESS, _mac_bytes(mac))
        if not change and not attrs:
            return
        payload = _IFINFOMSG.pack(AF_UNSPEC, 0, index, flags, change) + attrs
        self._request(RTM_NEWLINK, 0, payload, "set link", f"#{index}")

    # addresses

    def addresses(self, ifindex: int | None = None) -> list[Address]:
        out: list[Address] = []
        payload = _IFADDRMSG.pack(AF_INET, 0, 0, 0, 0)
        for rtype, data, off, end in self._dump(RTM_GETADDR, payload, "addresses"):
            if rtype != RTM_NEWADDR:
                continue
            family, plen, _flags, _scope, index = _IFADDRMSG.unpack_from(data, off)
            if family != AF_INET or (ifindex is not None and index != ifindex):
                continue
            a = _attrs(data, off + _IFADDRMSG.size, end)
            ip = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
            if ip is None or len(ip) != 4:
                continue
            out.append(Address(index, IPv4Interface((ip, plen))))
        return out

    def _address_payload(self, a: Address, with_broadcast: bool) -> bytes:
        iface = a.interface
        packed = iface.ip.packed
        payload = _IFADDRMSG.pack(AF_INET, iface.network.prefixlen, 0, 0, a.ifindex)
        payload += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        if with_broadcast and iface.network.prefixlen < 31:  # as vishvananda/netlink AddrAdd does
            payload += _attr(IFA_BROADCAST, iface.network.broadcast_address.packed)
        return payload

    def add_address(self, a: Address) -> None:
        try:
            self._request(
                RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, self._address_payload(a, True),
                "add address", f"{a.interface} dev #{a.ifindex}",
            )  # fmt: skip
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise

    def add_route(self, r: Route) -> None:
        """Create ``r``; :class:`NetlinkError` EEXIST if a route with its prefix and metric exists
        (never replaced: that could be a route somebody else relies on)."""
        self._request(
            RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, _encode_route("replace", r, 0)[16:], "add", str(r)
        )

    def delete_address(self, a: Address) -> None:
        try:
            self._request(
                RTM_DELADDR, 0, self._address_payload(a, False),
                "delete address", f"{a.interface} dev #{a.ifindex}",
            )  # fmt: skip
        except NetlinkError as e:
            if e.code not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                raise

    # routes, neighbours, FDB

    def routes(self, oif: int | None = None, table: int = RT_TABLE_MAIN, blackhole: bool = False) -> list[Route]:
        """Unicast IPv4 routes of ``table`` (or its blackhole routes)."""
        out: list[Route] = []
        want = RTN_BLACKHOLE if blackhole else RTN_UNICAST
        payload = _RTMSG.pack(AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
        for rtype, data, off, end in self._dump(RTM_GETROUTE, payload, "routes"):
            if rtype != RTM_NEWROUTE:
                continue
            route, kind, family = _parse_route(data, off, end)
            if family != AF_INET or kind != want or route.table != table:
                continue
            if oif is not None and route.oif != oif:
                continue
            out.append(route)
        return out

    def route_get(self, dst: IPv4Address) -> Route:
        payload = _RTMSG.pack(AF_INET, 32, 0, 0, 0, 0, 0, 0, 0) + _RTA_4S.pack(8, RTA_DST, dst.packed)
        for rtype, data, off, end in self._request(RTM_GETROUTE, 0, payload, "get route", str(dst)):
            if rtype == RTM_NEWROUTE:
                return _parse_route(data, off, end)[0]
        raise NetlinkError(errno.ENETUNREACH, "get route", str(dst))

    def neighbours(self, ifindex: int) -> list[Neighbour]:
        out: list[Neighbour] = []
        # NDA_IFINDEX lets the kernel filter by device.
        payload = _NDMSG.pack(AF_INET, 0, 0, 0, 0) + _RTA_U32.pack(8, NDA_IFINDEX, ifindex)
        for rtype, data, off, end in self._dump(RTM_GETNEIGH, payload, "neighbours"):
            if rtype != RTM_NEWNEIGH:
                continue
            family, index, state, _flags, _type = _NDMSG.unpack_from(data, off)
            if family != AF_INET or index != ifindex or not state & NUD_PERMANENT:
                continue
            a = _attrs(data, off + _NDMSG.size, end)
            ip, mac = a.get(NDA_DST), a.get(NDA_LLADDR)
            if ip is None or len(ip) != 4 or not mac:
                continue
            out.append(Neighbour(index, IPv4Address(ip), mac.hex(":")))
        return out

    def fdb(self, ifindex: int) -> list[Fdb]:
        out: list[Fdb] = []
        # An ifinfomsg-sized request whose ifi_index names the device is the kernel's (legacy but
        # supported) way to dump one device's FDB, like `bridge fdb show dev X`.
        payload = _IFINFOMSG.pack(AF_BRIDGE, 0, ifindex, 0, 0)
        for rtype, data, off, end in self._dump(RTM_GETNEIGH, payload, "fdb"):
            if rtype != RTM_NEWNEIGH:
                continue
            family, index, _state, _flags, _type = _NDMSG.unpack_from(data, off)
            if family != AF_BRIDGE or index != ifindex:
                continue
            a = _attrs(data, off + _NDMSG.size, end)
            ip, mac = a.get(NDA_DST), a.get(NDA_LLADDR)
            if ip is None or len(ip) != 4 or not mac:
                continue
            out.append(Fdb(index, mac.hex(":"), IPv4Address(ip)))
        return out

    # batches

    def apply(self, ops: Sequence[Op]) -> list[tuple[Op, NetlinkError]]:
        """Replace/delete many objects; returns the operations that failed, with their error.

        Errors only: no request but the last of a chunk asks for an ack (the kernel reports a
        failure either way), so 15000 updates cost no 15000 acks to queue and to parse. That last
        ack marks the end: rtnetlink answers in order, so every error of the chunk is read by then.
        """
        failures: list[tuple[Op, NetlinkError]] = []
        sock, view, chunk = self._sock, self._view, self._chunk
        recv_into, unpack_hdr, unpack_err = sock.recv_into, _NLMSGHDR.unpack_from, _ERRNO.unpack_from
        encoders = _ENCODERS
        for start in range(0, len(ops), chunk):
            batch = ops[start : start + chunk]
            base = self._next_seq(len(batch))  # the request for batch[i] has sequence base + i
            msgs: list[bytes] = []
            encoded: list[int] = []
            bad: dict[int, NetlinkError] = {}
            for i, (kind, obj) in enumerate(batch):
                try:
                    msgs.append(encoders[type(obj)](kind, obj, base + i, NLM_F_ACK))  # type: ignore[operator]
                    encoded.append(i)
                except (ValueError, KeyError, struct.error) as e:
                    # Unencodable (bad MAC, out-of-range index): fail this op, keep the rest.
                    bad[i] = NetlinkError(errno.EINVAL, kind, f"{obj} ({e})")
            if msgs:
                end = encoded[-1]  # the last request asks for its ack: the end marker
                msgs[-1] = encoders[type(batch[end][1])](batch[end][0], batch[end][1], base + end)  # type: ignore[operator]
                sock.send(b"".join(msgs))
            done = not msgs
            try:
                while not done:
                    size = recv_into(view)
                    off = 0
                    while off + 16 <= size:
                        n, mtype, _fl, seq, _pid = unpack_hdr(view, off)
                        if n < 16:
                            break
                        idx = seq - base
                        if mtype == NLMSG_ERROR and 0 <= idx < len(batch):
                            done = done or idx == end
                            code = -unpack_err(view, off + 16)[0]
                            if code:
                                op = batch[idx]
                                if not (op[0] == "delete" and code in _GONE):
                                    bad[idx] = NetlinkError(code, op[0], str(op[1]))
                        off += (n + 3) & ~3
            except OSError as e:
                # ENOBUFS: answers were dropped, so the outcome of the chunk is unknown; report
                # its ops as failed and let the caller's next reconcile sort it out.
                code = e.errno or errno.EIO
                seen = set(bad)
                for idx, op in enumerate(batch):
                    if idx not in seen:
                        bad[idx] = NetlinkError(code, op[0], str(op[1]))
                self._drain()
            failures.extend((batch[i], bad[i]) for i in sorted(bad))
        return failures

    def _drain(self) -> None:
        self._sock.setblocking(False)
        try:
            while True:
                self._sock.recv_into(self._view)
        except OSError:
            pass
        finally:
            self._sock.setblocking(True)


class LinkMonitor:
    """Link events of the current namespace (RTNLGRP_LINK; address events only wake the reader).

    If the kernel drops events because we fell behind (ENOBUFS), the monitor re-lists the links and
    reports the differences from what it last knew, so a deletion is never lost.
    """

    def __init__(self) -> None:
        self._sock = _open_socket(RTMGRP_LINK | RTMGRP_IPV4_IFADDR)
        self._sock.setblocking(False)
        self._known: dict[int, Link] = {}
        try:
            self._resync()
        except BaseException:
            self._sock.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _resync(self) -> list[tuple[Literal["new", "del"], Link]]:
        with Netlink() as nl:
            now = {link.index: link for link in nl.links()}
        events: list[tuple[Literal["new", "del"], Link]] = [
            ("del", link) for index, link in self._known.items() if index not in now
        ]
        events.extend(("new", link) for link in now.values())
        self._known = now
        return events

    def read(self) -> list[tuple[Literal["new", "del"], Link]]:
        events: list[tuple[Literal["new", "del"], Link]] = []
        while True:
            try:
                data = self._sock.recv(RECV_SIZE)
            except BlockingIOError:
                return events
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                events.extend(self._resync())
                continue
            off, size = 0, len(data)
            while off + 16 <= size:
                n, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
                if n < 16:
                    break
                # AF_BRIDGE RTM_DELLINK only means "no longer a bridge port": not a deletion.
                if mtype in (RTM_NEWLINK, RTM_DELLINK) and data[off + 16] == AF_UNSPEC:
                    link = _parse_link(data, off + 16, min(off + n, size))
                    if mtype == RTM_NEWLINK:
                        self._known[link.index] = link
                        events.append(("new", link))
                    else:
                        self._known.pop(link.index, None)
                        events.append(("del", link))
                off += (n + 3) & ~3
