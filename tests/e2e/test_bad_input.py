"""Bad input, end to end: what reaches the kernel. The lease table of tests/etcd/test_bad_input.py
is written into a running cluster's etcd; no route may appear outside the Network or over a network
the host already has, the daemons stay up, and a good lease written afterwards is still routed.
"""

from __future__ import annotations

import importlib.util
from ipaddress import IPv4Network
from pathlib import Path

from pyflannel.lab.cluster import Cluster, Node, wait_until
from pyflannel.lab.netns import Lab

# The lease table lives with the etcd-level test (tests are not a package: load it by path).
_spec = importlib.util.spec_from_file_location(
    "bad_etcd_input_table", Path(__file__).resolve().parent.parent / "etcd" / "test_bad_etcd_input.py"
)
assert _spec is not None and _spec.loader is not None
_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_table)
BAD_LEASES: list[tuple[str, str, str]] = _table.BAD_LEASES
GOOD_LEASE: tuple[str, str] = _table.GOOD_LEASE
MAC: str = _table.MAC

NETWORK = IPv4Network("10.244.0.0/16")


def flannel_routes(node: Node) -> list[IPv4Network]:
    out = node.host.run("ip", "-4", "route", "show", "dev", "flannel.1").stdout
    return [IPv4Network(line.split()[0]) for line in out.splitlines() if line.strip()]


def test_no_lease_from_etcd_routes_outside_the_network_or_over_a_host_network(cluster: Cluster) -> None:
    h1, h2 = (cluster.add_node(n) for n in ("h1", "h2"))
    for n in (h1, h2):
        n.wait_ready()
        n.add_pod_network()
    # A network h1 already has inside the overlay range (a docker bridge, say), and a lease for it.
    h1.host.add_pod_network("10.244.200.1/24", name="docker0")
    subnets = cluster.prefix + "/subnets/"
    clash = ("10.244.200.0-24", '{"PublicIP":"192.168.77.89","BackendType":"vxlan",' + MAC + "}")
    # A vxlan lease without a usable VtepMAC, and one of another backend type: no route either.
    no_mac = ("10.244.121.0-24", '{"PublicIP":"192.168.77.88","BackendType":"vxlan","BackendData":{"VNI":1}}')
    mcast_value = '{"PublicIP":"192.168.77.87","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}}'
    mcast = ("10.244.122.0-24", mcast_value)
    hostgw = ("10.244.123.0-24", '{"PublicIP":"192.168.77.86","BackendType":"host-gw"}')
    for key, value in [(k, v) for k, v, _ in BAD_LEASES] + [clash, no_mac, mcast, hostgw]:
        cluster.etcd.etcdctl("put", subnets + key, value)
    cluster.etcd.etcdctl("put", subnets + GOOD_LEASE[0], GOOD_LEASE[1])
    good = IPv4Network(GOOD_LEASE[0].replace("-", "/"))
    peer = IPv4Network(h2.subnet_env()["FLANNEL_SUBNET"], strict=False)
    assert wait_until(lambda: good in flannel_routes(h1), 10), h1.log_tail()
    assert set(flannel_routes(h1)) == {good, peer}
    routes = h1.host.run("ip", "-4", "route", "show").stdout
    assert "10.244.200.0/24 dev docker0 proto kernel scope link src 10.244.200.1" in routes
    assert "ignoring lease 10.244.200.0/24: it overlaps 10.244.200.0/24 on this host" in h1.log_text()
    # h2 has no such network: the same lease is an ordinary peer there.
    assert IPv4Network("10.244.200.0/24") in flannel_routes(h2)
    for n in (h1, h2):
        assert all(r.subnet_of(NETWORK) for r in flannel_routes(n))
        assert n.alive()
        text = n.log_text()
        for key, _, _ in BAD_LEASES:
            assert text.count(f"subnets/{key}:") == 1, key
    # Restart: the same inputs met at start-up (the listing, not the watch) change nothing.
    cluster.stop(h1)
    cluster.start(h1)
    h1.wait_ready()
    assert wait_until(lambda: set(flannel_routes(h1)) == {good, peer}, 5), flannel_routes(h1)
    assert cluster.all_ping([h1, h2], timeout=5)
    # A new flannel.1 (peers programmed while the lease is acquired): filtered just the same.
    cluster.stop(h1)
    h1.host.run("ip", "link", "del", "flannel.1")
    before = len(h1.log_text())
    cluster.start(h1)
    h1.wait_ready()
    assert wait_until(lambda: set(flannel_routes(h1)) == {good, peer}, 5), flannel_routes(h1)
    assert h1.host.run("ip", "-4", "route", "show", "10.244.200.0/24").stdout.split()[:3] == ["10.244.200.0/24", "dev", "docker0"]
    text = h1.log_text()[before:]
    assert text.count("ignoring lease 10.244.121.0/24: BackendData has no valid VtepMAC") == 1, text
    assert cluster.all_ping([h1, h2], timeout=5)


def test_bad_configs_are_waited_out_never_a_crash_loop(lab: Lab) -> None:
    c = Cluster(lab, config="{")
    try:
        node = c.add_node("h1")
        assert wait_until(lambda: "unexpected end of JSON input" in node.log_text(), 10), node.log_text()
        c.put_config('{"Network":"10.244.0.0/16","Backend":{"Type":"bogus"}}')
        assert wait_until(lambda: "unknown backend type: bogus" in node.log_text(), 10), node.log_text()
        c.put_config('{"Network":"10.244.0.0/16","SubnetLen":33,"Backend":{"Type":"vxlan"}}')
        assert wait_until(lambda: "SubnetLen must be less than /31" in node.log_text(), 10), node.log_text()
        assert node.alive()
        c.put_config('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
        node.wait_ready()
        assert node.log_text().count("Couldn't fetch network config") == 3
        assert node.restarts == 0 and node.alive()
    finally:
        c.close()
