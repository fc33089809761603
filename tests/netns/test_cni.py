"""The flannel CNI plugin end to end with Debian's real bridge and host-local plugins.

Topology (all namespaces named ``pfcni-<hex>-*``, deleted in ``finally`` with everything in them):

    pod p1 --veth-- [cni0 10.244.1.1/24] host h1 eth0 192.168.77.1 ==veth== 192.168.77.2 eth0 host h2 [cni0 10.244.2.1/24] --veth-- pod p2

No flanneld runs: each host gets a hand-written subnet.env (network 10.244.0.0/16, MTU 1450) and a static
route to the other host's pod subnet over the underlay, which is what flannel's host-gw backend would
program. The plugin is installed with ``pyflannel.cni.install`` into a temporary bin dir and run inside
the host namespace (``ip netns exec``) like a runtime on that host would. host-local and the plugin's
scratch configs use private directories under tmp_path, so nothing lands in /var/lib/cni.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pyflannel.cni import install

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not os.path.exists("/usr/lib/cni/bridge"), reason="needs containernetworking-plugins"),
]

HOSTS = {"h1": ("192.168.77.1", "10.244.1.1/24"), "h2": ("192.168.77.2", "10.244.2.1/24")}


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check)


class CniBed:
    """Two namespace hosts joined by a veth underlay, plus helpers to run the plugin on them."""

    def __init__(self, tmp: Path, cni_version: str) -> None:
        self.prefix = f"pfcni-{secrets.token_hex(3)}-"
        self.tmp = tmp
        self.cni_version = cni_version
        self.namespaces: list[str] = []
        self.bin_dir = tmp / "bin"
        install.install(str(self.bin_dir))

    def ns(self, name: str) -> str:
        return self.prefix + name

    def add_ns(self, name: str) -> str:
        full = self.ns(name)
        sh("ip", "netns", "add", full)
        self.namespaces.append(full)
        sh("ip", "-n", full, "link", "set", "lo", "up")
        return full

    def build(self) -> None:
        h1, h2 = self.add_ns("h1"), self.add_ns("h2")
        sh("ip", "-n", h1, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", h2)
        for host, peer in (("h1", "h2"), ("h2", "h1")):
            ip, subnet = HOSTS[host]
            peer_ip, peer_subnet = HOSTS[peer]
            full = self.ns(host)
            sh("ip", "-n", full, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", full, "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", full, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            peer_net = peer_subnet.replace(".1/24", ".0/24")
            sh("ip", "-n", full, "route", "add", peer_net, "via", peer_ip)
            (self.tmp / f"{host}.env").write_text(
                f"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")

    def close(self) -> None:
        for full in reversed(self.namespaces):
            sh("ip", "netns", "del", full, check=False)

    def config(self, host: str, **extra: Any) -> dict[str, Any]:
        return {
            "cniVersion": self.cni_version, "name": "pfcni", "type": "flannel",
            "subnetFile": str(self.tmp / f"{host}.env"),
            "dataDir": str(self.tmp / f"{host}-flannel"),
            "ipam": {"dataDir": str(self.tmp / f"{host}-ipam")},
            "delegate": {"hairpinMode": True, "isDefaultGateway": True},
            **extra,
        }

    def plugin(self, host: str, command: str, pod: str, config: dict[str, Any]) -> tuple[int, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command, "CNI_CONTAINERID": f"{self.prefix}{pod}",
            "CNI_NETNS": f"/var/run/netns/{self.ns(pod)}", "CNI_IFNAME": "eth0",
            "CNI_PATH": f"{self.bin_dir}:/usr/lib/cni",
        }
        proc = subprocess.run(["ip", "netns", "exec", self.ns(host), str(self.bin_dir / "flannel")],
                              input=json.dumps(config), env=env, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout


@pytest.fixture(params=["0.3.1", "0.4.0", "1.0.0"])
def testbed(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    bed = CniBed(tmp_path, request.param)
    try:
        bed.build()
        yield bed
    finally:
        bed.close()


def test_pods_on_two_hosts_talk_check_and_delete(testbed: CniBed) -> None:
    results: dict[str, dict[str, Any]] = {}
    for host, pod in (("h1", "p1"), ("h2", "p2")):
        testbed.add_ns(pod)
        status, out = testbed.plugin(host, "ADD", pod, testbed.config(host))
        assert status == 0, out
        results[pod] = json.loads(out)
        assert results[pod]["cniVersion"] == testbed.cni_version

    ip1 = results["p1"]["ips"][0]["address"].split("/")[0]
    ip2 = results["p2"]["ips"][0]["address"].split("/")[0]
    assert ip1.startswith("10.244.1.") and ip2.startswith("10.244.2.")
    assert {"dst": "10.244.0.0/16", "gw": "10.244.1.1"} in results["p1"]["routes"]

    # The delegate got flannel's settings: the bridge and the pod interface carry FLANNEL_MTU.
    assert "mtu 1450" in sh("ip", "-n", testbed.ns("h1"), "link", "show", "cni0").stdout
    assert "mtu 1450" in sh("ip", "-n", testbed.ns("p1"), "link", "show", "eth0").stdout
    saved = json.loads((testbed.tmp / "h1-flannel" / f"{testbed.prefix}p1").read_text())
    assert saved["type"] == "bridge" and saved["ipMasq"] is False and saved["isGateway"] is True

    ping = sh("ip", "netns", "exec", testbed.ns("p1"), "ping", "-c", "2", "-W", "2", ip2, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    ping = sh("ip", "netns", "exec", testbed.ns("p2"), "ping", "-c", "1", "-W", "2", ip1, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    check_conf = testbed.config("h1", prevResult=results["p1"])
    status, out = testbed.plugin("h1", "CHECK", "p1", check_conf)
    if testbed.cni_version == "0.3.1":
        assert status == 1 and json.loads(out)["msg"] == "config version does not allow CHECK"
    else:
        assert (status, out) == (0, "")

    ipam_dir = testbed.tmp / "h1-ipam" / "pfcni"
    assert (ipam_dir / ip1).exists()
    status, out = testbed.plugin("h1", "DEL", "p1", testbed.config("h1"))
    assert (status, out) == (0, "")
    assert not (ipam_dir / ip1).exists()
    assert all(testbed.prefix not in f.read_text() for f in ipam_dir.iterdir() if f.is_file())
    assert not (testbed.tmp / "h1-flannel" / f"{testbed.prefix}p1").exists()
    assert "eth0" not in sh("ip", "-n", testbed.ns("p1"), "link", "show").stdout

    # A repeated DEL (runtimes retry) is a success without a saved config.
    assert testbed.plugin("h1", "DEL", "p1", testbed.config("h1")) == (0, "")


def test_delegate_error_passes_through(testbed: CniBed) -> None:
    """A delegate failure comes back as the delegate's own CNI error (here: host-local out of range)."""
    testbed.add_ns("p1")
    conf = testbed.config("h1")
    (testbed.tmp / "bad.env").write_text(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/31\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    conf["subnetFile"] = str(testbed.tmp / "bad.env")
    status, out = testbed.plugin("h1", "ADD", "p1", conf)
    doc = json.loads(out)
    assert status == 1 and doc["cniVersion"] == testbed.cni_version
    assert doc["code"] == 999 and "too small to allocate from" in doc["msg"], doc
