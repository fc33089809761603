"""vxlan end to end: namespace hosts on a bridge, etcd on its own host, flanneld subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from pyflannel.lab.cluster import Cluster, wait_until
from pyflannel.lab.netns import Lab

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_three_hosts_ping_matrix_and_flannel_kernel_objects(cluster: Cluster) -> None:
    nodes = cluster.start_nodes(3)
    assert cluster.all_ping(timeout=10), cluster.ping_matrix()
    h1, h2 = nodes[0], nodes[1]
    link = h1.host.run("ip", "-d", "link", "show", "flannel.1").stdout
    assert f"vxlan id 1 local {h1.host.ip} dev eth0" in link
    assert "dstport 8472" in link and "nolearning" in link
    assert "mtu 1450" in link
    env = h1.subnet_env()
    assert env["FLANNEL_NETWORK"] == "10.244.0.0/16"
    assert env["FLANNEL_MTU"] == "1450" and env["FLANNEL_IPMASQ"] == "false"
    addr = h1.host.run("ip", "-4", "addr", "show", "dev", "flannel.1").stdout
    assert f"inet {env['FLANNEL_SUBNET'].split('/')[0][:-1]}0/32" in addr
    assert h1.has_vxlan_peer(h2)
    # Lease JSON in etcd carries the device's MAC.
    value = cluster.lease_json(h1)
    mac = h1.host.run("cat", "/sys/class/net/flannel.1/address").stdout.strip()
    assert value == {
        "PublicIP": str(h1.host.ip),
        "PublicIPv6": None,
        "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": mac},
    }


def test_late_host_is_reachable_within_2s_and_deleted_lease_is_cleaned_within_2s(cluster: Cluster) -> None:
    nodes = cluster.start_nodes(3)
    late = cluster.add_node("h4")
    late.wait_ready()
    t0 = time.monotonic()
    assert wait_until(lambda: all(n.has_vxlan_peer(late) for n in nodes), 2.0), [n.vxlan_state() for n in nodes]
    joined = time.monotonic() - t0
    late.add_pod_network()
    assert cluster.all_ping(timeout=5), cluster.ping_matrix()

    # h3 leaves: stop its daemon (state stays), then delete its lease as an admin would.
    gone = nodes[2]
    subnet = gone.subnet_env()["FLANNEL_SUBNET"].replace(".1/", ".0/")
    assert cluster.stop(gone) == 0
    cluster.etcd.etcdctl("del", cluster.prefix + "/subnets/" + subnet.replace("/", "-"))
    t0 = time.monotonic()
    others = [nodes[0], nodes[1], late]
    assert wait_until(lambda: all(n.lacks_vxlan_entries(subnet, str(gone.host.ip)) for n in others), 2.0)
    print(f"join propagated in {joined:.2f} s, removal in {time.monotonic() - t0:.2f} s")


def test_restart_keeps_subnet_and_traffic(cluster: Cluster) -> None:
    nodes = cluster.start_nodes(2)
    h1 = nodes[0]
    before = h1.subnet_env()["FLANNEL_SUBNET"]
    mac = h1.host.run("cat", "/sys/class/net/flannel.1/address").stdout.strip()
    assert cluster.stop(h1) == 0
    assert "Exiting cleanly" in h1.log_text()
    # Kernel state is left in place on SIGTERM: traffic keeps flowing with the daemon down.
    assert cluster.all_ping(timeout=3)
    cluster.start(h1)
    env = h1.wait_ready()
    assert env["FLANNEL_SUBNET"] == before
    assert h1.host.run("cat", "/sys/class/net/flannel.1/address").stdout.strip() == mac
    assert cluster.all_ping(timeout=5)
    assert "reusing existing flannel.1" in h1.log_text()


def test_sigterm_exits_zero_and_leaves_kernel_state(cluster: Cluster) -> None:
    h1 = cluster.start_nodes(2)[0]
    state = h1.vxlan_state()
    assert cluster.stop(h1, signal.SIGTERM) == 0
    assert h1.vxlan_state() == state


def test_readme_demo_command(lab: Lab) -> None:
    """The README's first command runs the demo; run the demo module exactly as `make demo` does."""
    out = subprocess.run(
        [sys.executable, "-m", "pyflannel.lab.demo", "--hosts", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "ping matrix" in out.stdout.lower()


def test_restart_does_not_touch_kernel_state_that_is_right(cluster: Cluster) -> None:
    h1, h2 = cluster.start_nodes(2)
    monitor_log = os.path.join(h1.workdir, "monitor.log")
    cluster.stop(h1)
    mon = h1.host.popen("ip", "-4", "monitor", "route", "neigh", "link", log_path=monitor_log)
    try:
        time.sleep(0.3)
        cluster.start(h1)
        h1.wait_ready()
        time.sleep(1.0)  # the snapshot reconcile runs right after start
    finally:
        h1.host.kill(mon)
    with open(monitor_log) as f:
        events = f.read()
    peer_net = h2.subnet_env()["FLANNEL_SUBNET"].replace(".1/", ".0/")
    assert peer_net.split("/")[0] not in events, events
    assert "flannel.1" not in events, events


def test_waits_for_config_with_one_clear_line_then_starts(lab: Lab) -> None:
    c = Cluster(lab, config=None)
    try:
        node = c.add_node("h1", "--healthz-port=8471", "--healthz-ip=127.0.0.1")
        assert wait_until(lambda: "flannel config not found" in node.log_text(), 10), node.log_text()
        c.put_config('{"Network":"10.244.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}')
        assert wait_until(lambda: "invalid network config" in node.log_text(), 10), node.log_text()
        errors = node.log_text().count("Couldn't fetch network config")
        assert errors == 2, node.log_text()  # one line per distinct problem, not one per second
        ready = node.host.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              "http://127.0.0.1:8471/readyz", check=False)
        assert ready.stdout == "503" or ready.returncode != 0  # curl may be absent: then skip this check
        c.put_config('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
        env = node.wait_ready()
        assert env["FLANNEL_SUBNET"].endswith("/24")
        probe = (
            "import urllib.request as u;"
            "print(u.urlopen('http://127.0.0.1:8471/healthz').read().decode());"
            "print(u.urlopen('http://127.0.0.1:8471/readyz').read().decode())"
        )
        out = node.host.run(sys.executable, "-c", probe).stdout
        assert out.split("\n")[:2] == ["flanneld is running", "flanneld is ready"]
    finally:
        c.close()


def test_direct_routing_uses_plain_routes_between_hosts_on_one_l2(lab: Lab) -> None:
    c = Cluster(lab, '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}')
    try:
        h1, h2 = c.start_nodes(2)
        assert c.all_ping(timeout=10), c.ping_matrix()
        peer = h2.subnet_env()["FLANNEL_SUBNET"].replace(".1/", ".0/")
        st = h1.vxlan_state()
        assert f"{peer} via {h2.host.ip} dev eth0" in st["route"]
        assert st["neigh"].strip() == "" and f"dst {h2.host.ip}" not in st["fdb"]
    finally:
        c.close()


def test_reboot_keeps_subnet_and_vtep_mac_and_programs_every_peer(cluster: Cluster) -> None:
    """A reboot loses flannel.1 and /run/flannel/subnet.env but not the lease in etcd: the lease is
    found again by public IP, flannel.1 comes back with the MAC the peers know (flannel picks a
    new one, #1036), and the peers programmed before that was known are programmed again."""
    h1, h2, h3 = cluster.start_nodes(3)
    subnet = h1.subnet
    mac = h1.host.run("cat", "/sys/class/net/flannel.1/address").stdout.strip()
    assert cluster.stop(h1) == 0
    h1.host.run("ip", "link", "del", "flannel.1")
    os.unlink(h1.subnet_file)
    cluster.start(h1)
    h1.wait_ready()
    assert h1.subnet == subnet
    assert h1.host.run("cat", "/sys/class/net/flannel.1/address").stdout.strip() == mac
    assert "created flannel.1" in h1.log_text()
    assert f"recreating flannel.1 with the MAC of our lease ({mac})" in h1.log_text()
    assert wait_until(lambda: h1.has_vxlan_peer(h2) and h1.has_vxlan_peer(h3), 5), h1.vxlan_state()
    assert cluster.all_ping(timeout=5), cluster.ping_matrix()
    assert cluster.lease_json(h1)["BackendData"] == {"VNI": 1, "VtepMAC": mac}


def test_fresh_start_programs_peers_before_its_own_address_and_each_only_once(cluster: Cluster) -> None:
    """With flannel.1 created now, peers go in while the lease is acquired (start-up time, issue 6);
    the watch's first snapshot then finds them right and adds nothing a second time."""
    h1, h2, h3 = cluster.start_nodes(3)
    assert cluster.stop(h1) == 0
    h1.host.run("ip", "link", "del", "flannel.1")
    # No lease of ours left either (else this is the reboot case: the device is made again with
    # that lease's MAC, and the peers programmed a second time on it).
    cluster.etcd.etcdctl("del", cluster.prefix + "/subnets/" + h1.subnet.replace("/", "-"))
    monitor_log = os.path.join(h1.workdir, "fresh.monitor")
    mon = h1.host.popen("ip", "-4", "monitor", "route", "address", log_path=monitor_log)
    try:
        time.sleep(0.3)
        cluster.start(h1)
        h1.wait_ready()
        assert wait_until(lambda: h1.has_vxlan_peer(h2) and h1.has_vxlan_peer(h3), 5), h1.vxlan_state()
        time.sleep(1.0)  # the first snapshot is reconciled right after start
    finally:
        h1.host.kill(mon)
    with open(monitor_log) as f:
        lines = [line for line in f.read().splitlines() if "flannel.1" in line]
    own = h1.subnet.split("/")[0]
    address = next(i for i, line in enumerate(lines) if f"inet {own}/32" in line)
    for peer in (h2, h3):
        added = [i for i, line in enumerate(lines) if line.startswith(peer.subnet + " via")]
        assert len(added) == 1, lines  # programmed once: the snapshot found it right
        assert added[0] < address, lines
    assert cluster.all_ping(timeout=5), cluster.ping_matrix()
