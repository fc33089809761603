"""The udp backend's packet logic, without any I/O: flannel's C proxy rules plus offload helpers.

Everything here works on ``bytearray``/``memoryview`` buffers in place and is shared by the data path
(:mod:`pyflannel.backend.udp.datapath`) and the unit tests. Wire rules, as in flannel's
``proxy_amd64.c``:

* a UDP datagram carries exactly one raw IPv4 packet, no header of ours;
* TUN -> UDP: look the destination up in the routing table (remote subnet -> PublicIP:Port); no
  route -> ICMP net-unreachable (type 3 code 0, TTL 8, source = the TUN address) written back into
  the TUN, except for ICMP packets and non-first fragments; then TTL - 1, dropped at 0;
* UDP -> TUN: TTL - 1, dropped at 0, no route check.

Checksums use the identity that the Internet ones'-complement sum of a buffer is congruent to the
buffer read as one big-endian integer modulo 0xFFFF (2**16 = 1 mod 0xFFFF), so
``int.from_bytes(buf, "big") % 0xFFFF`` does in C what a Python loop over 16-bit words would do.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

Addr = tuple[str, int]

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
ICMP_DEST_UNREACH = 3
ICMP_NET_UNREACH = 0
ICMP_TTL = 8
MAX_IP_HEADER = 60

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = 1, 2, 4, 8, 16, 32, 64, 128

# virtio_net_hdr (IFF_VNET_HDR), little-endian on the machines flannel's udp backend supports
VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = VNET_HDR.size
VNET_F_NEEDS_CSUM = 1
VNET_GSO_NONE = 0
VNET_GSO_TCPV4 = 1
VNET_NONE = VNET_HDR.pack(0, VNET_GSO_NONE, 0, 0, 0, 0)

MAX_UDP_PAYLOAD = 65507  # 65535 - IPv4 header - UDP header
MAX_GSO_SEGMENTS = 64  # UDP_MAX_SEGMENTS of older kernels; newer ones allow 128

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U16x2 = struct.Struct("!HH")


# -- checksums ---------------------------------------------------------------------------------


def ones_sum(buf: bytes | bytearray | memoryview) -> int:
    """The folded ones'-complement sum of ``buf`` (odd length padded with a zero byte), 0..0xFFFF.

    0 only for an all-zero buffer; a non-zero buffer whose sum is "negative zero" gives 0xFFFF, like
    the end-around-carry loop (and unlike a plain ``% 0xFFFF``, which would give 0).
    """
    x = int.from_bytes(buf, "big")
    if len(buf) & 1:
        x <<= 8
    return (x - 1) % 0xFFFF + 1 if x else 0


def fold(x: int) -> int:
    """Fold a non-negative sum of 16-bit words (any size) into 1..0xFFFF (0 stays 0)."""
    return (x - 1) % 0xFFFF + 1 if x else 0


_FOLD_MASKS: dict[int, int] = {}


def fold_big(x: int) -> int:
    """``fold`` for big sums: halve with shifts and adds (no long division) before the final ``%``.

    Python's ``%`` by 0xFFFF costs a hardware division per 30-bit digit; a shift and an add cost a
    fraction of that, and 2**(16*h) = 1 (mod 0xFFFF) makes (x >> 16h) + (x & (2**16h - 1)) congruent.
    """
    while True:
        bits = x.bit_length()
        if bits <= 2048:
            return (x - 1) % 0xFFFF + 1 if x else 0
        h = ((bits >> 1) + 15) & ~15
        mask = _FOLD_MASKS.get(h)
        if mask is None:
            mask = _FOLD_MASKS[h] = (1 << h) - 1
        x = (x >> h) + (x & mask)


def inet_checksum(buf: bytes | bytearray | memoryview) -> int:
    """The Internet checksum (RFC 1071) of ``buf``: the complement of its ones'-complement sum."""
    return ones_sum(buf) ^ 0xFFFF


def pseudo_sum(pkt: bytes | bytearray | memoryview, proto: int, length: int) -> int:
    """Unfolded sum of the IPv4 pseudo header (addresses of ``pkt``, protocol, L4 length)."""
    return int.from_bytes(pkt[12:20], "big") + proto + length


# -- validation, TTL ----------------------------------------------------------------------------


def ipv4_length(pkt: bytes | bytearray | memoryview, n: int) -> int:
    """The IPv4 total length of a packet of ``n`` bytes, or 0 if it is not a sane IPv4 packet.

    Rejects: shorter than 20 bytes, version != 4, header length < 20 or beyond the data, total
    length shorter than the header or longer than the data. (flannel's C proxy checks only the size.)
    """
    if n < 20:
        return 0
    b0 = pkt[0]
    ihl = (b0 & 15) << 2
    if b0 >> 4 != 4 or ihl < 20:
        return 0
    total = (pkt[2] << 8) | pkt[3]
    if total < ihl or total > n:
        return 0
    return total


def decrement_ttl(pkt: bytearray | memoryview, off: int = 0) -> bool:
    """TTL - 1 with an incremental header checksum update (RFC 1624 eqn. 3); False if it hits 0.

    The result is byte-identical to a full recomputation. A packet arriving with TTL 0 is dropped too
    (flannel's C proxy would wrap it to 255).
    """
    ttl = pkt[off + 8]
    if ttl <= 1:
        return False
    pkt[off + 8] = ttl - 1
    # HC' = ~(~HC + ~m + m'), m' = m - 0x0100  ->  ~(~HC + 0xFEFF)
    s = (((pkt[off + 10] << 8) | pkt[off + 11]) ^ 0xFFFF) + 0xFEFF
    s = (s & 0xFFFF) + (s >> 16)
    s ^= 0xFFFF
    pkt[off + 10] = s >> 8
    pkt[off + 11] = s & 0xFF
    return True


def set_ip_checksum(pkt: bytearray | memoryview, off: int, ihl: int) -> None:
    pkt[off + 10] = pkt[off + 11] = 0
    _U16.pack_into(pkt, off + 10, inet_checksum(pkt[off : off + ihl]))


# -- ICMP ----------------------------------------------------------------------------------------


def net_unreachable(pkt: bytes | bytearray | memoryview, n: int, tun_ip: bytes) -> bytes | None:
    """flannel's ICMP "net unreachable" for an offending packet, or None when none is due.

    None for ICMP packets (RFC 792: no ICMP about ICMP), non-first fragments and malformed headers.
    The message quotes the offender's IP header and the first 8 bytes of its payload (only what
    exists, where flannel's C proxy would copy past the end of a short packet).
    """
    if n < 20:
        return None
    ihl = (pkt[0] & 15) << 2
    if ihl < 20 or ihl > n:
        return None
    if pkt[9] == IPPROTO_ICMP:
        return None
    if ((pkt[6] << 8) | pkt[7]) & 0x1FFF:
        return None
    quote = bytes(pkt[: min(n, ihl + 8)])
    icmp = bytearray(b"\x03\x00\x00\x00\x00\x00\x00\x00") + quote
    _U16.pack_into(icmp, 2, inet_checksum(icmp))
    ip = bytearray(20)
    ip[0] = 0x45
    _U16.pack_into(ip, 2, 20 + len(icmp))
    ip[8] = ICMP_TTL
    ip[9] = IPPROTO_ICMP
    ip[12:16] = tun_ip
    ip[16:20] = pkt[12:16]
    _U16.pack_into(ip, 10, inet_checksum(ip))
    return bytes(ip + icmp)


# -- routing table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteTable:
    """Remote subnets -> (PublicIP, port); immutable, so the data path swaps whole tables.

    Lookup is longest-prefix match over the distinct prefix lengths (normally one: flannel's
    SubnetLen), each a dict keyed by the masked destination; flannel's move-to-front list is not
    needed with hashing.
    """

    routes: Mapping[IPv4Network, Addr] = field(default_factory=dict)
    _levels: tuple[tuple[int, dict[int, Addr]], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_len: dict[int, dict[int, Addr]] = {}
        for net, addr in self.routes.items():
            by_len.setdefault(net.prefixlen, {})[int(net.network_address)] = addr
        levels = tuple(
            ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, by_len[plen]) for plen in sorted(by_len, reverse=True)
        )
        object.__setattr__(self, "_levels", levels)

    def lookup(self, dst: int) -> Addr | None:
        for mask, table in self._levels:
            addr = table.get(dst & mask)
            if addr is not None:
                return addr
        return None

    def lookup_ip(self, dst: IPv4Address | str) -> Addr | None:
        return self.lookup(int(IPv4Address(dst)))

    def __len__(self) -> int:
        return len(self.routes)


# -- offloads: TUN super-packets <-> wire packets ----------------------------------------------


def complete_checksum(pkt: bytearray | memoryview, n: int, csum_start: int, csum_offset: int) -> bool:
    """Finish a CHECKSUM_PARTIAL packet from the TUN (vnet header NEEDS_CSUM). False if out of range.

    The kernel left the pseudo-header sum in the checksum field, so the checksum is the complement of
    the sum from ``csum_start`` to the end. UDP's 0 is sent as 0xFFFF (0 means "no checksum").
    """
    at = csum_start + csum_offset
    if at + 2 > n or csum_start >= n:
        return False
    c = inet_checksum(pkt[csum_start:n])
    if c == 0 and pkt[9] == IPPROTO_UDP:
        c = 0xFFFF
    pkt[at] = c >> 8
    pkt[at + 1] = c & 0xFF
    return True


_IP_HDR = struct.Struct("!BBHHHBBH4s4s")
_TCP_HDR = struct.Struct("!HHIIBBHHH")


def segment_tcp4(pkt: memoryview, n: int, mss: int) -> tuple[int, list[bytes | memoryview]]:
    """Cut a TSO super-packet (IPv4/TCP) into wire packets of at most ``mss`` payload bytes.

    ``pkt[:n]`` is the super-packet (its TTL already decremented, its checksums ignored). Returns
    (segment size, buffers): two buffers per segment, its headers and a view of its payload, ready
    for ``sendmsg`` with UDP_SEGMENT (every segment ``hl + mss`` bytes long except the last). Each
    segment is a plain packet with full IP and TCP checksums, IP ID + 1 per segment, sequence numbers
    advanced, FIN/PSH only on the last and CWR only on the first segment, as the kernel's own TCP
    segmentation does. (0, []) if ``pkt`` is not a TCP/IPv4 packet that can be segmented.
    """
    ihl = (pkt[0] & 15) << 2
    if pkt[9] != IPPROTO_TCP or n < ihl + 20 or mss <= 0:
        return 0, []
    thl = (pkt[ihl + 12] >> 4) << 2
    hl = ihl + thl
    if thl < 20 or hl > n:
        return 0, []
    vi, tos, _tot, ip_id, frag, ttl, proto, _c, src, dst = _IP_HDR.unpack_from(pkt, 0)
    sport, dport, seq, ack, doff, flags, win, _c, urg = _TCP_HDR.unpack_from(pkt, ihl)
    ip_opts = bytes(pkt[20:ihl])
    tcp_opts = bytes(pkt[ihl + 20 : hl])
    # constant words of each header; total length, ID, sequence number and flags are added per segment
    ip_base = (vi << 8) + tos + frag + (ttl << 8) + proto + from_bytes_(src + dst) + from_bytes_(ip_opts)
    tcp_base = (
        sport + dport + (ack >> 16) + (ack & 0xFFFF) + (doff << 8) + win + urg + from_bytes_(tcp_opts)
        + from_bytes_(src + dst) + IPPROTO_TCP
    )
    mid_flags = flags & ~(TCP_FIN | TCP_PSH | TCP_CWR)
    last = -(-(n - hl) // mss) - 1 if n > hl else 0
    ip_pack = _IP_HDR.pack
    tcp_pack = _TCP_HDR.pack
    from_bytes = int.from_bytes
    parts: list[bytes | memoryview] = []
    append = parts.append
    plan = _fold_plan(mss)
    start = hl
    for i in range(last + 1):
        end = start + mss if i < last else n
        plen = end - start
        total = hl + plen
        if last == 0:
            f = flags
        elif i == 0:
            f = mid_flags | (flags & TCP_CWR)
        elif i == last:
            f = mid_flags | (flags & (TCP_FIN | TCP_PSH))
        else:
            f = mid_flags
        pid = (ip_id + i) & 0xFFFF
        sq = (seq + i * mss) & 0xFFFFFFFF
        data = pkt[start:end]
        d = from_bytes(data, "big")
        if plen & 1:
            d <<= 8
        for sh, mask in plan if plen == mss else ():
            d = (d >> sh) + (d & mask)  # shift and add instead of a long division over all of d
        ip_c = 0xFFFE - (ip_base + total + pid - 1) % 0xFFFF
        tcp_c = 0xFFFE - (tcp_base + total - ihl + (sq >> 16) + (sq & 0xFFFF) + f + d - 1) % 0xFFFF
        ip = ip_pack(vi, tos, total, pid, frag, ttl, proto, ip_c, src, dst)
        th = tcp_pack(sport, dport, sq, ack, doff, f, win, tcp_c, urg)
        append(b"".join((ip, ip_opts, th, tcp_opts)) if ihl > 20 or thl > 20 else ip + th)
        append(data)
        start = end
    return hl + mss, parts


_FOLD_PLANS: dict[int, tuple[tuple[int, int], ...]] = {}


def _fold_plan(nbytes: int) -> tuple[tuple[int, int], ...]:
    """Shift-and-add steps that bring an ``nbytes``-byte (+ 1 pad) word sum below ~1500 bits."""
    plan = _FOLD_PLANS.get(nbytes)
    if plan is None:
        steps = []
        bits = nbytes * 8 + 8
        while bits > 1536:
            sh = ((bits >> 1) + 15) & ~15
            steps.append((sh, (1 << sh) - 1))
            bits = sh + 1
        plan = _FOLD_PLANS[nbytes] = tuple(steps)
    return plan


def from_bytes_(b: bytes) -> int:
    """Big-endian value of ``b`` (an even number of bytes) for word sums."""
    return int.from_bytes(b, "big")


def csum_from_sum(x: int) -> int:
    """Checksum field for an unfolded positive word sum ``x``: the complement of its fold (1..0xFFFF)."""
    return 0xFFFE - (x - 1) % 0xFFFF


Write = list[bytes | bytearray | memoryview]  # buffers of one TUN write (os.writev)


def coalesce_tcp4(buf: bytearray, n: int, seg: int, verify: bool = True) -> list[Write]:
    """Turn the wire packets of one (UDP_GRO) read into TUN writes, merging a TCP train into one.

    ``buf[:n]`` holds packets of ``seg`` bytes each (the last may be shorter): a train from one
    peer. When the whole train is one in-order run of one TCP flow (same addresses, ports, ACK
    number, window, options, TTL and TOS; only ACK, plus PSH on the last; contiguous sequence
    numbers; full-sized segments but the last), it becomes one super-packet with a
    VIRTIO_NET_HDR_GSO_TCPV4 header, so the kernel takes 64 KB in one write, as after its own GRO.
    The checks run over the train with strided slices (one C-level pass per header byte, not a
    Python loop per packet). With ``verify`` the IP and TCP checksums of the train are checked as one
    ones'-complement sum (each valid packet sums to zero, so a valid train does too); a train that
    fails any check is written packet by packet behind plain vnet headers, unchanged but for the
    TTL, and the kernel checks each as usual. TTLs are decremented here; packets reaching 0 and
    malformed ones are dropped.
    """
    k = -(-n // seg)
    if k >= 2 and not seg & 1:
        w = _merge_train(buf, n, seg, k, verify)
        if w is not None:
            return [w]
    return _one_by_one(buf, n, seg)


def _merge_train(buf: bytearray, n: int, seg: int, k: int, verify: bool) -> Write | None:
    if buf[0] != 0x45 or buf[9] != IPPROTO_TCP or buf[6] & 0x3F or buf[7] or buf[8] <= 1:
        return None
    thl = (buf[32] >> 4) << 2
    hl = 20 + thl
    mss = seg - hl
    last_size = n - (k - 1) * seg
    if thl < 20 or mss <= 0 or last_size <= hl:
        return None
    # total lengths: full segments, then exactly the rest (no padding)
    if buf[2:n:seg] != bytes((seg >> 8,)) * (k - 1) + bytes((last_size >> 8,)):
        return None
    if buf[3:n:seg] != bytes((seg & 0xFF,)) * (k - 1) + bytes((last_size & 0xFF,)):
        return None
    # flags: ACK only, PSH allowed on the last
    fl = buf[33:n:seg]
    if fl[:-1] != b"\x10" * (k - 1) or fl[-1] not in (0x10, 0x18):
        return None
    # bytes equal in every packet: version..TOS, fragment..protocol, addresses, ports, ACK, data offset,
    # window, urgent pointer, options
    for p in (0, 1, 6, 7, 8, 9, *range(12, 24), *range(28, 33), 34, 35, *range(38, hl)):
        if buf[p:n:seg] != bytes((buf[p],)) * k:
            return None
    seq0 = _U32.unpack_from(buf, 24)[0]
    want = struct.pack(f"!{k}I", *[(seq0 + i * mss) & 0xFFFFFFFF for i in range(k)])
    for j in range(4):
        if buf[24 + j : n : seg] != want[j::4]:
            return None
    if verify:
        # sum of all IP headers + TCP segments + pseudo headers: 0 (mod 0xFFFF) when every one is valid
        x = int.from_bytes(memoryview(buf)[:n], "big")
        if n & 1:
            x <<= 8
        pseudo = k * (int.from_bytes(buf[12:20], "big") + IPPROTO_TCP) + n - 20 * k
        if fold_big(x + pseudo) != 0xFFFF:
            return None
    total = n - (k - 1) * hl
    if total > 65535:
        return None
    hdr = bytearray(buf[:hl])
    decrement_ttl(hdr)
    hdr[33] = fl[-1]
    _U16.pack_into(hdr, 2, total)
    set_ip_checksum(hdr, 0, 20)
    # CHECKSUM_PARTIAL: the field holds the folded, not complemented, pseudo-header sum
    _U16.pack_into(hdr, 36, fold(pseudo_sum(hdr, IPPROTO_TCP, total - 20)))
    mv = memoryview(buf)
    parts: Write = [VNET_HDR.pack(VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, hl, mss, 20, 16), hdr]
    parts.extend([mv[o + hl : o + seg] for o in range(0, n - seg, seg)])
    parts.append(mv[(k - 1) * seg + hl : n])
    return parts


def _one_by_one(buf: bytearray, n: int, seg: int) -> list[Write]:
    mv = memoryview(buf)
    writes: list[Write] = []
    for o in range(0, n, seg):
        size = min(seg, n - o)
        p = mv[o : o + size]
        total = ipv4_length(p, size)
        if total and decrement_ttl(p):
            writes.append([VNET_NONE, p[:total]])
    return writes
