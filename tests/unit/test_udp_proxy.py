"""The udp backend's pure packet logic, checked against slow reference implementations."""

from __future__ import annotations

import random
import struct
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.backend.udp import proxy
from pyflannel.backend.udp.proxy import (
    TCP_ACK,
    TCP_CWR,
    TCP_FIN,
    TCP_PSH,
    VNET_F_NEEDS_CSUM,
    VNET_GSO_NONE,
    VNET_GSO_TCPV4,
    VNET_HDR,
    RouteTable,
)

# -- slow references ---------------------------------------------------------------------------


def ref_sum(data: bytes) -> int:
    """Ones'-complement sum with end-around carry, 16-bit words, odd byte padded (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ref_checksum(data: bytes) -> int:
    return ~ref_sum(data) & 0xFFFF


def ip_ok(pkt: bytes) -> bool:
    ihl = (pkt[0] & 15) * 4
    return ref_sum(pkt[:ihl]) == 0xFFFF


def l4_ok(pkt: bytes, proto: int) -> bool:
    ihl = (pkt[0] & 15) * 4
    total = struct.unpack_from("!H", pkt, 2)[0]
    seg = pkt[ihl:total]
    pseudo = pkt[12:20] + struct.pack("!BBH", 0, proto, len(seg))
    return ref_sum(pseudo + seg) == 0xFFFF


def ipv4(proto: int, payload: bytes, src: str = "10.245.1.2", dst: str = "10.245.2.3", ttl: int = 64,
         ident: int = 0x1234, frag: int = 0x4000, options: bytes = b"", tos: int = 0) -> bytes:
    ihl = 20 + len(options)
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl // 4, tos, ihl + len(payload), ident, frag, ttl,
                                proto, 0, IPv4Address(src).packed, IPv4Address(dst).packed)) + options
    struct.pack_into("!H", hdr, 10, ref_checksum(bytes(hdr)))
    return bytes(hdr) + payload


def tcp(payload: bytes, seq: int = 1000, flags: int = TCP_ACK, src: str = "10.245.1.2", dst: str = "10.245.2.3",
        options: bytes = b"", ttl: int = 64, ident: int = 0x1234, csum: bool = True, ack: int = 777) -> bytes:
    thl = 20 + len(options)
    th = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, ack, (thl // 4) << 4, flags, 512, 0, 0)) + options
    pseudo = IPv4Address(src).packed + IPv4Address(dst).packed + struct.pack("!BBH", 0, 6, thl + len(payload))
    if csum:
        struct.pack_into("!H", th, 16, ref_checksum(pseudo + bytes(th) + payload))
    return ipv4(6, bytes(th) + payload, src, dst, ttl, ident)


TS_OPTS = b"\x01\x01\x08\x0a" + struct.pack("!II", 123456, 654321)

# -- checksums -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"\0", b"\0\0\0", b"\xff\xff", b"\xff\xff\xff\xff", b"\x01", b"\xff", b"\x12\x34\x56",
     b"\xff\xfe\x00\x01", b"\x80\x00\x80\x00", bytes(range(256)) * 7, b"\xff" * 1449],
)
def test_ones_sum_matches_end_around_carry(data: bytes) -> None:
    assert proxy.ones_sum(data) == ref_sum(data)
    assert proxy.inet_checksum(data) == ref_checksum(data)


def test_ones_sum_random() -> None:
    rng = random.Random(1)
    for _ in range(500):
        data = rng.randbytes(rng.randrange(0, 100))
        assert proxy.ones_sum(data) == ref_sum(data)


# -- validation, TTL -----------------------------------------------------------------------------


def test_ipv4_length_accepts_sane_packets() -> None:
    p = tcp(b"hello")
    assert proxy.ipv4_length(p, len(p)) == len(p)
    assert proxy.ipv4_length(p + b"\0\0", len(p) + 2) == len(p)  # trailing padding is allowed


@pytest.mark.parametrize(
    "pkt",
    [
        b"",
        b"\x45" + b"\0" * 10,  # truncated below 20 bytes
        b"\x60" + b"\0" * 39,  # IPv6
        b"\x44" + b"\0" * 19,  # header length 16
        bytes([0x4F]) + b"\0\0\x28" + b"\0" * 36,  # header length 60 > 40 bytes present
        b"\x45\0\x00\x10" + b"\0" * 16,  # total length shorter than the header
        b"\x45\0\x01\x00" + b"\0" * 16,  # total length beyond the data
    ],
)
def test_ipv4_length_rejects(pkt: bytes) -> None:
    assert proxy.ipv4_length(pkt, len(pkt)) == 0


@pytest.mark.parametrize("ttl", [2, 3, 64, 128, 255])
def test_decrement_ttl_matches_full_recompute(ttl: int) -> None:
    rng = random.Random(ttl)
    for _ in range(300):
        p = bytearray(ipv4(rng.choice([1, 6, 17]), rng.randbytes(8), ttl=ttl, ident=rng.randrange(65536),
                           src=str(IPv4Address(rng.getrandbits(32))), dst=str(IPv4Address(rng.getrandbits(32)))))
        assert proxy.decrement_ttl(p)
        assert p[8] == ttl - 1
        want = bytearray(p)
        want[10:12] = b"\0\0"
        struct.pack_into("!H", want, 10, ref_checksum(bytes(want[:20])))
        assert p == want


def test_decrement_ttl_negative_zero_edge() -> None:
    # find a header whose checksum is 0 (sum 0xFFFF) and one whose result would be 0xFFFF
    for ident in range(65536):
        p = bytearray(ipv4(6, b"", ttl=2, ident=ident))
        if p[10:12] in (b"\0\0", b"\xfe\xff", b"\xff\xfe"):
            q = bytearray(p)
            assert proxy.decrement_ttl(q)
            assert ip_ok(bytes(q))
            assert q[10:12] != b"\xff\xff"


def test_ttl_one_and_zero_are_dropped() -> None:
    for ttl in (0, 1):
        p = bytearray(tcp(b"x", ttl=ttl))
        before = bytes(p)
        assert not proxy.decrement_ttl(p)
        assert bytes(p) == before


# -- ICMP ----------------------------------------------------------------------------------------


def test_net_unreachable_is_byte_exact() -> None:
    offender = tcp(b"0123456789abcdef", src="10.245.1.7", dst="10.99.0.1")
    tun_ip = IPv4Address("10.245.1.0").packed
    icmp = proxy.net_unreachable(offender, len(offender), tun_ip)
    assert icmp is not None
    quote = offender[:28]
    body = bytearray(b"\x03\x00\x00\x00\x00\x00\x00\x00") + quote
    struct.pack_into("!H", body, 2, ref_checksum(bytes(body)))
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 8, 1, 0, tun_ip,
                                IPv4Address("10.245.1.7").packed))
    struct.pack_into("!H", hdr, 10, ref_checksum(bytes(hdr)))
    assert icmp == bytes(hdr + body)
    assert len(icmp) == 20 + 8 + 20 + 8
    assert ip_ok(icmp) and ref_sum(icmp[20:]) == 0xFFFF


def test_net_unreachable_quotes_ip_options() -> None:
    offender = ipv4(17, b"\x11" * 30, options=b"\x01\x01\x01\x00")
    icmp = proxy.net_unreachable(offender, len(offender), b"\x0a\0\0\0")
    assert icmp is not None and icmp[28:] == offender[:32]


def test_net_unreachable_short_packet_quotes_what_exists() -> None:
    offender = ipv4(17, b"abc")
    icmp = proxy.net_unreachable(offender, len(offender), b"\x0a\0\0\0")
    assert icmp is not None and icmp[28:] == offender and ref_sum(icmp[20:]) == 0xFFFF


def test_no_icmp_about_icmp_fragments_or_garbage() -> None:
    ip = b"\x0a\0\0\0"
    icmp_pkt = ipv4(1, b"\x08\0\0\0\0\0\0\0")
    assert proxy.net_unreachable(icmp_pkt, len(icmp_pkt), ip) is None
    frag = ipv4(17, b"x" * 16, frag=0x0010)  # offset 16*8
    assert proxy.net_unreachable(frag, len(frag), ip) is None
    first_frag = ipv4(17, b"x" * 16, frag=0x2000)  # MF set, offset 0: first fragment gets one
    assert proxy.net_unreachable(first_frag, len(first_frag), ip) is not None
    assert proxy.net_unreachable(b"\x45\0", 2, ip) is None
    assert proxy.net_unreachable(b"\x42" + b"\0" * 19, 20, ip) is None


# -- routing table ------------------------------------------------------------------------------


def test_route_lookup_exact_and_longest_match() -> None:
    t = RouteTable({
        IPv4Network("10.245.1.0/24"): ("192.168.0.1", 8285),
        IPv4Network("10.245.2.0/24"): ("192.168.0.2", 8285),
        IPv4Network("10.245.0.0/16"): ("192.168.0.9", 9000),
        IPv4Network("10.245.2.128/25"): ("192.168.0.3", 8285),
    })
    assert t.lookup_ip("10.245.1.77") == ("192.168.0.1", 8285)
    assert t.lookup_ip("10.245.2.5") == ("192.168.0.2", 8285)
    assert t.lookup_ip("10.245.2.200") == ("192.168.0.3", 8285)
    assert t.lookup_ip("10.245.3.1") == ("192.168.0.9", 9000)
    assert t.lookup_ip("10.246.1.1") is None
    assert len(t) == 4
    assert RouteTable().lookup_ip("10.245.1.1") is None


def test_route_lookup_repeated_is_stable() -> None:
    # flannel's move-to-front list reorders on lookup; a hashed table must give the same answers anyway
    nets = {IPv4Network(f"10.245.{i}.0/24"): (f"192.168.0.{i}", 8285) for i in range(1, 50)}
    t = RouteTable(nets)
    for _ in range(3):
        for i in range(49, 0, -1):
            assert t.lookup_ip(f"10.245.{i}.9") == (f"192.168.0.{i}", 8285)


# -- offloads -------------------------------------------------------------------------------------


def test_complete_checksum_tcp_and_udp() -> None:
    for proto, payload in ((6, b"\0" * 20 + b"hello"), (17, b"\0" * 8 + b"world!")):
        p = bytearray(ipv4(proto, payload))
        if proto == 6:
            p[32] = 0x50
        else:
            struct.pack_into("!H", p, 24, len(payload))
        # the kernel leaves the folded pseudo-header sum in the field
        seed = ref_sum(bytes(p[12:20]) + struct.pack("!BBH", 0, proto, len(payload)))
        at = 20 + (16 if proto == 6 else 6)
        struct.pack_into("!H", p, at, seed)
        assert proxy.complete_checksum(p, len(p), 20, at - 20)
        assert l4_ok(bytes(p), proto)
    assert not proxy.complete_checksum(bytearray(30), 30, 20, 16)


def test_udp_zero_checksum_is_sent_as_ffff() -> None:
    # search a UDP payload whose checksum computes to 0
    for i in range(200000):
        payload = struct.pack("!HHHHI", 1, 2, 12, 0, i)
        p = bytearray(ipv4(17, payload))
        seed = ref_sum(bytes(p[12:20]) + struct.pack("!BBH", 0, 17, 12))
        struct.pack_into("!H", p, 26, seed)
        if ref_checksum(bytes(p[20:])) == 0:
            assert proxy.complete_checksum(p, len(p), 20, 6)
            assert p[26:28] == b"\xff\xff"
            return
    pytest.fail("no zero-checksum payload found")


def super_packet(payload: bytes, mss: int, flags: int = TCP_ACK | TCP_PSH, options: bytes = TS_OPTS,
                 seq: int = 0xFFFFF000) -> bytearray:
    p = bytearray(tcp(payload, seq=seq, flags=flags, options=options, csum=False))
    seed = ref_sum(bytes(p[12:20]) + struct.pack("!BBH", 0, 6, len(p) - 20))  # what the kernel leaves
    struct.pack_into("!H", p, 36, seed)
    return p


@pytest.mark.parametrize("plen,mss", [(64000, 1400), (1448 * 44, 1448), (10001, 1448), (1, 1448),
                                      (1448, 1448), (2897, 1448), (999, 7), (65535 - 52, 1420)])
def test_segment_tcp4_produces_valid_packets(plen: int, mss: int) -> None:
    rng = random.Random(plen)
    payload = rng.randbytes(plen)
    flags = TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR
    sp = super_packet(payload, mss, flags=flags)
    seg_size, parts = proxy.segment_tcp4(memoryview(sp), len(sp), mss)
    hl = 20 + 20 + len(TS_OPTS)
    assert seg_size == hl + mss
    segs = [bytes(parts[i]) + bytes(parts[i + 1]) for i in range(0, len(parts), 2)]
    assert all(len(s) == seg_size for s in segs[:-1]) and len(segs[-1]) <= seg_size
    assert len(segs) == max(1, -(-plen // mss))
    got = b""
    for i, s in enumerate(segs):
        assert ip_ok(s) and l4_ok(s, 6), i
        assert struct.unpack_from("!H", s, 2)[0] == len(s)
        assert struct.unpack_from("!H", s, 4)[0] == (0x1234 + i) & 0xFFFF
        assert struct.unpack_from("!I", s, 24)[0] == (0xFFFFF000 + i * mss) & 0xFFFFFFFF
        f = s[33]
        last, first = i == len(segs) - 1, i == 0
        assert bool(f & TCP_FIN) == last and bool(f & TCP_PSH) == last and bool(f & TCP_CWR) == first
        assert f & TCP_ACK
        assert s[40:hl] == TS_OPTS and s[8] == 64 and s[12:20] == sp[12:20]
        got += s[hl:]
    assert got == payload


def test_segment_rejects_non_tcp() -> None:
    p = bytearray(ipv4(17, b"\0" * 100))
    assert proxy.segment_tcp4(memoryview(p), len(p), 10) == (0, [])


# -- coalescing -----------------------------------------------------------------------------------


def train(*pkts: bytes, seg: int | None = None) -> tuple[memoryview, int, int]:
    seg = seg or max(len(p) for p in pkts)
    buf = bytearray()
    for p in pkts:
        buf += p
    return memoryview(buf), len(buf), seg


def flat(parts: list[bytes | bytearray | memoryview]) -> bytes:
    return b"".join(bytes(p) for p in parts)


def test_coalesce_merges_a_tcp_run_into_one_gso_write() -> None:
    mss = 1000
    rng = random.Random(5)
    data = rng.randbytes(mss * 4 + 300)
    pkts = [tcp(data[i : i + mss], seq=5000 + i, options=TS_OPTS, ident=100 + i // mss,
                flags=TCP_ACK | (TCP_PSH if i + mss >= len(data) else 0))
            for i in range(0, len(data), mss)]
    mv, n, seg = train(*pkts)
    writes = proxy.coalesce_tcp4(bytearray(mv), n, seg)
    assert len(writes) == 1
    w = flat(writes[0])
    flags, gso_type, hdr_len, gso_size, cstart, coff = VNET_HDR.unpack_from(w)
    assert (flags, gso_type, hdr_len, gso_size, cstart, coff) == (VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, 52, mss, 20, 16)
    pkt = w[10:]
    assert struct.unpack_from("!H", pkt, 2)[0] == len(pkt) == 52 + len(data)
    assert ip_ok(pkt) and pkt[8] == 63
    assert pkt[33] == TCP_ACK | TCP_PSH
    assert pkt[52:] == data
    # the checksum field holds the pseudo-header sum: completing it must give a valid packet
    done = bytearray(pkt)
    assert proxy.complete_checksum(done, len(done), 20, 16) and l4_ok(bytes(done), 6)


@pytest.mark.parametrize("case", ["gap", "other flow", "bad tcp checksum", "bad ip checksum", "syn", "short middle"])
def test_coalesce_writes_irregular_trains_packet_by_packet(case: str) -> None:
    pkts = [bytearray(tcp(b"a" * 100, seq=1 + 100 * i)) for i in range(4)]
    if case == "gap":
        pkts[2] = bytearray(tcp(b"a" * 100, seq=1000))
    elif case == "other flow":
        pkts[2] = bytearray(tcp(b"a" * 100, seq=201, src="10.245.1.3"))
    elif case == "bad tcp checksum":
        pkts[2][-1] ^= 1
    elif case == "bad ip checksum":
        pkts[2][4] ^= 1  # the ID, not covered by the TCP checksum
    elif case == "syn":
        pkts[1] = bytearray(tcp(b"a" * 100, seq=101, flags=0x02 | TCP_ACK))
    else:
        pkts[1] = bytearray(tcp(b"a" * 99, seq=101)) + b"\0"  # padded: total length != datagram size
    mv, n, seg = train(*(bytes(p) for p in pkts))
    writes = proxy.coalesce_tcp4(bytearray(mv), n, seg)
    assert len(writes) == 4
    for w, p in zip(writes, pkts):
        got = flat(w)
        assert got[:10] == proxy.VNET_NONE
        total = struct.unpack_from("!H", p, 2)[0]
        assert got[10:][8] == 63 and got[10:][:8] == p[:8] and got[10:][12:] == p[12:total]


def test_coalesce_verify_off_merges_bad_checksums() -> None:
    pkts = [bytearray(tcp(b"a" * 100, seq=1 + 100 * i)) for i in range(4)]
    pkts[2][-1] ^= 1
    mv, n, seg = train(*(bytes(p) for p in pkts))
    assert len(proxy.coalesce_tcp4(bytearray(mv), n, seg, verify=False)) == 1
    assert len(proxy.coalesce_tcp4(bytearray(mv), n, seg, verify=True)) == 4


def test_coalesce_passes_other_packets_and_drops_bad_ones() -> None:
    udp = ipv4(17, b"\0\x01\0\x02\0\x0c\0\0data")
    syn = tcp(b"", flags=0x02)
    ttl1 = tcp(b"x", ttl=1)
    junk = b"\x60" + b"\0" * 39
    short = b"\x45\0\x00\x50" + b"\0" * 20  # claims 80 bytes, has 24
    pkts = [udp, syn, ttl1, junk, short]
    for p in pkts:
        mv, n, seg = train(p)
        writes = proxy.coalesce_tcp4(bytearray(mv), n, seg)
        if p in (udp, syn):
            assert len(writes) == 1
            w = flat(writes[0])
            assert w[:10] == proxy.VNET_NONE and w[10:][8] == 63 and ip_ok(w[10:])
            assert w[10:][:8] == p[:8] and w[10:][9:10] == p[9:10] and w[10:][12:] == p[12:]
        else:
            assert writes == []


def test_coalesce_respects_max_length() -> None:
    pkts = [tcp(b"z" * 1000, seq=1 + 1000 * i) for i in range(70)]
    mv, n, seg = train(*pkts)
    writes = proxy.coalesce_tcp4(bytearray(mv), n, seg)
    assert len(writes) == 70  # 70 KB do not fit one IPv4 packet: written one by one
    mv, n, seg = train(*pkts[:65])
    (w,) = proxy.coalesce_tcp4(bytearray(mv), n, seg)
    assert len(flat(w)) - 10 == 40 + 65000


def test_coalesce_single_packet_uses_plain_header() -> None:
    mv, n, seg = train(tcp(b"q" * 10))
    (w,) = proxy.coalesce_tcp4(bytearray(mv), n, seg)
    assert VNET_HDR.unpack_from(flat(w))[1] == VNET_GSO_NONE
