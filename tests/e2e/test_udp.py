"""udp backend end to end: namespace hosts on a bridge, etcd on its own host, flanneld subprocesses."""

from __future__ import annotations

from pyflannel.lab.cluster import Cluster, wait_until
from pyflannel.lab.netns import Lab

CLUSTER_CONFIG = '{"Network":"10.245.0.0/16","Backend":{"Type":"udp"}}'  # read by the cluster fixture


def test_three_hosts_ping_matrix_and_flannel_objects(cluster: Cluster) -> None:
    nodes = cluster.start_nodes(3)
    assert cluster.all_ping(timeout=10), cluster.ping_matrix()
    h1 = nodes[0]
    env = h1.subnet_env()
    assert env["FLANNEL_NETWORK"] == "10.245.0.0/16"
    assert env["FLANNEL_MTU"] == "1472"
    net_addr = env["FLANNEL_SUBNET"].replace(".1/24", ".0")
    link = h1.host.run("ip", "-d", "link", "show", "flannel0").stdout
    assert "mtu 1472" in link and "tun" in link
    assert f"inet {net_addr}/32" in h1.host.run("ip", "-4", "addr", "show", "flannel0").stdout
    assert "10.245.0.0/16 dev flannel0" in h1.host.run("ip", "-4", "route", "show").stdout
    assert f"{h1.host.ip}:8285" in h1.host.run("ss", "-uln").stdout
    # udp leases carry only PublicIP (flannel writes no BackendType for udp)
    lease = cluster.lease_json(h1)
    assert lease["PublicIP"] == str(h1.host.ip) and "BackendType" not in lease


def test_host_joins_and_leaves(cluster: Cluster) -> None:
    nodes = cluster.start_nodes(2)
    assert cluster.all_ping(timeout=10), cluster.ping_matrix()
    late = cluster.add_node("h3")
    late.wait_ready()
    late.add_pod_network()
    assert cluster.all_ping(timeout=5), cluster.ping_matrix()

    # h3 leaves: stop its daemon and delete its lease; the others drop it from their tables, and
    # traffic to its pods is answered with ICMP net unreachable instead of being sent to it
    subnet = late.subnet_env()["FLANNEL_SUBNET"].replace(".1/", ".0/")
    assert cluster.stop(late) == 0
    cluster.etcd.etcdctl("del", cluster.prefix + "/subnets/" + subnet.replace("/", "-"))
    assert wait_until(lambda: all(f"Subnet removed: {subnet}" in n.log_text() for n in nodes), 5.0)
    assert cluster.all_ping(nodes, timeout=5), cluster.ping_matrix(nodes)


def test_custom_port(lab: Lab) -> None:
    c = Cluster(lab, config='{"Network":"10.245.0.0/16","Backend":{"Type":"udp","port":8999}}')
    try:
        nodes = c.start_nodes(2)
        assert c.all_ping(timeout=10), c.ping_matrix()
        assert f"{nodes[0].host.ip}:8999" in nodes[0].host.run("ss", "-uln").stdout
    finally:
        c.close()
