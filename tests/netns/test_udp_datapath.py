"""The udp data path on real TUN devices in two namespaces, without etcd or flanneld.

Fixture ``pair``: namespaces ``pfudp-<hex>-a`` / ``-b`` joined by a veth pair (192.168.214.1/.2), each
running ``python -m pyflannel.backend.udp.datapath`` (flannel0 10.245.1.0 / 10.245.2.0, network
10.245.0.0/16, each routing the other's /24). Both namespaces, and with them the processes' TUNs,
are removed afterwards; the processes are stopped by PID first.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

pytestmark = pytest.mark.root
if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
A_IP, B_IP = "192.168.214.1", "192.168.214.2"
PLAIN = ["--no-offload", "--no-gso", "--no-gro"]  # the C proxy's way: one packet per syscall


def sh(*cmd: str, ns: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and p.returncode:
        raise AssertionError(f"{' '.join(argv)}: {p.stdout} {p.stderr}")
    return p


@dataclass
class Pair:
    a: str
    b: str
    procs: dict[str, subprocess.Popen[str]]

    def start(self, ns: str, extra: list[str]) -> None:
        me, peer, ip, peer_ip = (1, 2, A_IP, B_IP) if ns == self.a else (2, 1, B_IP, A_IP)
        old = self.procs.pop(ns, None)
        if old is not None:
            stop(old)
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "pyflannel.backend.udp.datapath",
             "--tun-addr", f"10.245.{me}.0", "--network", "10.245.0.0/16", "--mtu", "1472",
             "--listen", f"{ip}:8285", "--route", f"10.245.{peer}.0/24={peer_ip}:8285", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        )
        assert p.stdout is not None
        seen = []
        for line in p.stdout:  # the runner prints "ready <tun>" once the TUN is up
            seen.append(line)
            if line.startswith("ready"):
                break
        else:
            raise AssertionError("udp data path did not start:\n" + "".join(seen))
        self.procs[ns] = p

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())


def stop(p: subprocess.Popen[str]) -> str:
    if p.poll() is None:
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
    return p.stdout.read() if p.stdout else ""


@pytest.fixture
def pair() -> Iterator[Pair]:
    tag = secrets.token_hex(3)
    a, b = f"pfudp-{tag}-a", f"pfudp-{tag}-b"
    pr = Pair(a, b, {})
    try:
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b)
        for ns, ip in ((a, A_IP), (b, B_IP)):
            sh("ip", "addr", "add", f"{ip}/24", "dev", "eth0", ns=ns)
            sh("ip", "link", "set", "eth0", "up", ns=ns)
        yield pr
    finally:
        for p in pr.procs.values():
            stop(p)
        for ns in (a, b):
            sh("ip", "netns", "del", ns, check=False)


def send_raw(ns: str, payloads: list[bytes], dst: str = B_IP, port: int = 8285) -> None:
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"for line in sys.stdin: s.sendto(bytes.fromhex(line.strip()),({dst!r},{port}))\n"
    )
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], input="\n".join(
        x.hex() for x in payloads) + "\n", text=True, capture_output=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr


def ipv4(payload: bytes, ttl: int = 64, src: str = "10.245.1.0", dst: str = "10.245.2.0", proto: int = 17) -> bytes:
    import struct

    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, ttl, proto, 0,
                                socket.inet_aton(src), socket.inet_aton(dst)))
    s = sum(struct.unpack("!10H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into("!H", hdr, 10, ~s & 0xFFFF)
    return bytes(hdr) + payload


@pytest.mark.parametrize("mode", ["offload", "plain"])
def test_ping_and_bad_input_never_crash_the_pump(pair: Pair, mode: str) -> None:
    extra = PLAIN if mode == "plain" else []
    pair.start(pair.a, extra)
    pair.start(pair.b, extra)
    assert sh("ping", "-c", "2", "-W", "2", "10.245.2.0", ns=pair.a, check=False).returncode == 0
    garbage = [
        b"",
        b"\x45",
        b"\x45\x00\x00\x14" + b"\x00" * 10,  # truncated header
        b"\x60" + b"\x00" * 59,  # IPv6
        b"\x41" + b"\x00" * 39,  # header length 4
        b"\x4f\x00\x00\x28" + b"\x00" * 36,  # header length 60 > total length
        b"\x45\x00\xff\xff" + b"\x00" * 60,  # total length beyond the datagram
        ipv4(b"x" * 8, ttl=1),  # TTL 1: dropped
        ipv4(b"x" * 8, ttl=0),
        os.urandom(1400),
        os.urandom(30000),
        b"\xff" * 65000,
    ]
    send_raw(pair.a, garbage * 3)
    assert pair.alive()
    assert sh("ping", "-c", "2", "-W", "2", "10.245.2.0", ns=pair.a, check=False).returncode == 0


@pytest.mark.parametrize("mode", ["offload", "plain"])
def test_ttl_is_decremented_in_both_proxies(pair: Pair, mode: str) -> None:
    extra = PLAIN if mode == "plain" else []
    pair.start(pair.a, extra)
    pair.start(pair.b, extra)
    # TTL 2: A's proxy makes it 1, B's proxy drops it; TTL 3 arrives with 1 and is delivered locally
    assert sh("ping", "-c", "1", "-W", "1", "-t", "2", "10.245.2.0", ns=pair.a, check=False).returncode != 0
    assert sh("ping", "-c", "1", "-W", "2", "-t", "3", "10.245.2.0", ns=pair.a, check=False).returncode == 0
    assert pair.alive()


PROBE = """
import errno, socket, time
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
raw.settimeout(3)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"probe", ("10.245.99.1", 9))
pkt = raw.recv(2000)
print("icmp", pkt[:28].hex(), pkt[28:48].hex())
"""


@pytest.mark.parametrize("mode", ["offload", "plain"])
def test_unknown_destination_gets_icmp_net_unreachable(pair: Pair, mode: str) -> None:
    pair.start(pair.a, PLAIN if mode == "plain" else [])
    # flannel's ICMP comes from the TUN's own address: without accept_local the kernel drops it as a
    # martian (so flannel's net-unreachable never reaches anyone on a default host either)
    sh("sysctl", "-qw", "net.ipv4.conf.flannel0.accept_local=1", ns=pair.a)
    out = sh(sys.executable, "-c", PROBE, ns=pair.a).stdout.split()
    icmp = bytes.fromhex(out[1])
    assert icmp[8] == 8 and icmp[9] == 1  # TTL 8, ICMP
    assert icmp[12:16] == socket.inet_aton("10.245.1.0")  # from the TUN address
    assert icmp[20:22] == b"\x03\x00"  # net unreachable
    quoted = bytes.fromhex(out[2])
    assert quoted[16:20] == socket.inet_aton("10.245.99.1") and quoted[9] == 17
    # ICMP about ICMP is never sent
    p = sh("ping", "-c", "1", "-W", "1", "10.245.99.1", ns=pair.a, check=False)
    assert p.returncode != 0 and "Unreachable" not in p.stdout
    assert pair.alive()


def tcp_csum_errors(ns: str) -> int:
    out = sh("nstat", "-az", "TcpInCsumErrors", ns=ns).stdout
    for line in out.splitlines():
        if line.startswith("TcpInCsumErrors"):
            return int(line.split()[1])
    return 0


@pytest.mark.parametrize("a_mode,b_mode", [("offload", "plain"), ("plain", "offload"), ("offload", "offload")])
def test_offload_node_interoperates_with_a_plain_one(pair: Pair, a_mode: str, b_mode: str) -> None:
    """A plain node does what flannel's C proxy does: the kernel checks every packet it receives."""
    pair.start(pair.a, PLAIN if a_mode == "plain" else [])
    pair.start(pair.b, PLAIN if b_mode == "plain" else [])
    server = subprocess.Popen(["ip", "netns", "exec", pair.b, "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import time

        time.sleep(0.3)
        for reverse in ([], ["-R"]):
            p = sh("iperf3", "-c", "10.245.2.0", "-n", "30M", *reverse, ns=pair.a, check=False, timeout=120)
            assert p.returncode == 0, p.stdout + p.stderr
            if not reverse:
                server.wait(10)
                server = subprocess.Popen(["ip", "netns", "exec", pair.b, "iperf3", "-s", "-1"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.3)
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGTERM)
            server.wait(5)
    assert tcp_csum_errors(pair.a) == 0 and tcp_csum_errors(pair.b) == 0
    assert pair.alive()
