"""Container-runtime integration on flanneld hosts: CNI pods, masquerade, systemd notify."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from typing import Any

from pyflannel.cni import install
from pyflannel.lab.cluster import Cluster, Node, wait_until
from pyflannel.lab.netns import Lab

UDP_ECHO_SOURCE = (
    "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('0.0.0.0',5555));"
    "s.settimeout(8);d,a=s.recvfrom(100);print(a[0])"
)


def send_udp(dst: str) -> str:
    return (
        "import socket,time\nfor _ in range(20):\n"
        f"    socket.socket(socket.AF_INET,socket.SOCK_DGRAM).sendto(b'x',('{dst}',5555));time.sleep(0.2)"
    )


class Pods:
    """Pod namespaces created through the installed `flannel` CNI plugin, deleted in close()."""

    def __init__(self, lab: Lab, tmp: str) -> None:
        self.lab = lab
        self.tmp = tmp
        self.bin_dir = os.path.join(tmp, "bin")
        os.makedirs(self.bin_dir)
        install.install(self.bin_dir)
        self.netns: list[str] = []

    def cni(self, node: Node, command: str, pod: str) -> dict[str, Any]:
        config = {
            "cniVersion": "1.0.0", "name": "pfe2e", "type": "flannel",
            "subnetFile": node.subnet_file,
            "dataDir": os.path.join(self.tmp, node.host.name + "-flannel"),
            "ipam": {"dataDir": os.path.join(self.tmp, node.host.name + "-ipam")},
            "delegate": {"hairpinMode": True, "isDefaultGateway": True},
        }
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command, "CNI_CONTAINERID": f"{self.lab.prefix}-{pod}",
            "CNI_NETNS": f"/var/run/netns/{self.lab.prefix}-{pod}", "CNI_IFNAME": "eth0",
            "CNI_PATH": f"{self.bin_dir}:/usr/lib/cni",
        }
        proc = subprocess.run(
            ["ip", "netns", "exec", node.host.netns, os.path.join(self.bin_dir, "flannel")],
            input=json.dumps(config), env=env, capture_output=True, text=True, check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout) if proc.stdout.strip() else {}

    def add(self, node: Node, pod: str) -> str:
        name = f"{self.lab.prefix}-{pod}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.netns.append(name)
        result = self.cni(node, "ADD", pod)
        return str(result["ips"][0]["address"].split("/")[0])

    def run(self, pod: str, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", f"{self.lab.prefix}-{pod}", *cmd],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def popen(self, pod: str, *cmd: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", f"{self.lab.prefix}-{pod}", *cmd],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def close(self) -> None:
        for name in self.netns:
            subprocess.run(["ip", "netns", "del", name], check=False)


def test_cni_pods_across_flanneld_hosts_with_masquerade(cluster: Cluster, lab: Lab) -> None:
    h1 = cluster.add_node("h1", "--ip-masq")
    h2 = cluster.add_node("h2", "--ip-masq")
    outside = lab.add_host("out")  # an address outside the overlay, standing for the internet
    for n in (h1, h2):
        n.wait_ready()
    assert h1.subnet_env()["FLANNEL_IPMASQ"] == "true"
    net, sn = "10.244.0.0/16", h1.subnet_env()["FLANNEL_SUBNET"].replace(".1/", ".0/")
    nat = h1.host.run("iptables", "-t", "nat", "-S").stdout
    rf = " --random-fully" if "--random-fully" in nat else ""
    for line in [
        '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
        '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
        f'-A FLANNEL-POSTRTG -s {sn} -d {net} -m comment --comment "flanneld masq" -j RETURN',
        f'-A FLANNEL-POSTRTG -s {net} -d {sn} -m comment --comment "flanneld masq" -j RETURN',
        f'-A FLANNEL-POSTRTG ! -s {net} -d {sn} -m comment --comment "flanneld masq" -j RETURN',
        f'-A FLANNEL-POSTRTG -s {net} ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE{rf}',
        f'-A FLANNEL-POSTRTG ! -s {net} -d {net} -m comment --comment "flanneld masq" -j MASQUERADE{rf}',
    ]:
        assert line in nat.splitlines(), nat
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        pods = Pods(lab, tmp)
        try:
            ip1 = pods.add(h1, "pod1")
            ip2 = pods.add(h2, "pod2")
            assert ip1.startswith(h1.subnet_env()["FLANNEL_SUBNET"].rsplit(".", 1)[0])
            ping = pods.run("pod1", "ping", "-c", "2", "-W", "2", ip2)
            assert ping.returncode == 0, ping.stdout
            # Pod to pod keeps the pod's source address (no NAT inside the overlay) ...
            listener = pods.popen("pod2", sys.executable, "-c", UDP_ECHO_SOURCE)
            pods.run("pod1", sys.executable, "-c", send_udp(ip2))
            out, err = listener.communicate(timeout=15)
            assert out.strip() == ip1, err
            # ... and leaving the overlay it is masqueraded to the host's address.
            far = outside.popen(sys.executable, "-c", UDP_ECHO_SOURCE, log_path=os.path.join(tmp, "far.log"))
            sent = pods.run("pod1", sys.executable, "-c", send_udp(str(outside.ip)))
            far.wait(timeout=15)
            with open(os.path.join(tmp, "far.log")) as f:
                seen = f.read()
            assert seen.split()[:1] == [str(h1.host.ip)], (seen, sent.stderr)
            # DEL releases the address.
            pods.cni(h1, "DEL", "pod1")
            ipam = os.path.join(tmp, "h1-ipam", "pfe2e")
            assert not os.path.exists(os.path.join(ipam, ip1))
        finally:
            pods.close()


def test_sd_notify_ready_after_subnet_env(cluster: Cluster) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(20)
        try:
            node = cluster.add_node("h1", start=False)
            cluster.start(node, env={"NOTIFY_SOCKET": path})
            msg = sock.recv(1024).decode()
            assert "READY=1" in msg
            assert "FLANNEL_SUBNET" in node.subnet_env()  # written before READY=1
        finally:
            sock.close()


def test_nftables_mode_from_the_config(lab: Lab) -> None:
    c = Cluster(lab, '{"Network":"10.244.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}')
    try:
        h1 = c.add_node("h1", "--ip-masq")
        h2 = c.add_node("h2", "--ip-masq")
        for n in (h1, h2):
            n.wait_ready()
            n.add_pod_network()
        assert c.all_ping(timeout=10)
        sn = h1.subnet_env()["FLANNEL_SUBNET"].replace(".1/", ".0/")
        chain = h1.host.run("nft", "list", "chain", "ip", "flannel-ipv4", "postrtg").stdout
        assert "type nat hook postrouting priority srcnat; policy accept;" in chain
        assert f"ip saddr {sn} ip daddr 10.244.0.0/16 return" in chain
        assert "masquerade" in chain
        fwd = h1.host.run("nft", "list", "chain", "ip", "flannel-ipv4", "forward").stdout
        assert "ip saddr 10.244.0.0/16 accept" in fwd
        assert "FLANNEL-POSTRTG" not in h1.host.run("iptables", "-t", "nat", "-S").stdout
    finally:
        c.close()


def test_ip_blackhole_route_drops_the_unused_part_of_the_subnet_and_never_hides_the_bridge(cluster: Cluster) -> None:
    h1, h2 = cluster.start_nodes(2, "--ip-blackhole-route", "--iptables-resync=1", pods=False)
    subnet = h1.subnet
    want = f"blackhole {subnet} metric 4294967295"

    def blackholes() -> str:
        return h1.host.run("ip", "-4", "route", "show", "type", "blackhole").stdout

    assert wait_until(lambda: want in blackholes(), 3), blackholes()
    unused = subnet.replace(".0/24", ".77")
    # No bridge yet (Canal-like): an address of our subnet nobody has is dropped here.
    assert h1.host.run("ip", "route", "get", unused, check=False).returncode != 0
    # The bridge comes after flanneld, as with the CNI bridge plugin: its connected route wins.
    for n in (h1, h2):
        n.add_pod_network()
    assert " dev cni0 " in h1.host.run("ip", "route", "get", unused).stdout
    assert cluster.all_ping([h1, h2], timeout=5), cluster.ping_matrix([h1, h2])
    # Deleted by hand: back within the resync period, with one log line.
    h1.host.run("ip", "route", "del", "blackhole", subnet, "metric", "4294967295")
    assert wait_until(lambda: want in blackholes(), 3), blackholes()
    assert f"re-added blackhole route for {subnet}" in h1.log_text()
    assert "Failed to setup blackhole route" not in h1.log_text()
    assert want not in h2.host.run("ip", "-4", "route", "show", "type", "blackhole").stdout  # h2's own only
