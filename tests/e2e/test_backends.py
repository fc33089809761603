"""host-gw, alloc and extension end to end, and two networks on one host."""

from __future__ import annotations

import json
import os
import time

import pytest

from pyflannel.lab.cluster import Cluster, Node, wait_until
from pyflannel.lab.netns import Lab

HOSTGW = '{"Network":"10.246.0.0/16","Backend":{"Type":"host-gw"}}'


def read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def routes(node: Node) -> str:
    return node.host.run("ip", "-4", "route", "show").stdout


def test_host_gw_ping_matrix_join_leave_and_route_check(lab: Lab) -> None:
    c = Cluster(lab, HOSTGW)
    try:
        h1, h2, h3 = c.start_nodes(3)
        assert c.all_ping(timeout=10), c.ping_matrix()
        assert f"{h2.subnet} via {h2.host.ip} dev eth0" in routes(h1)
        assert h1.subnet_env()["FLANNEL_MTU"] == "1500"
        lease = c.lease_json(h1)
        assert lease == {"PublicIP": str(h1.host.ip), "PublicIPv6": None, "BackendType": "host-gw"}
        # Someone deletes a route: the 10 s check puts it back.
        h1.host.run("ip", "route", "del", h2.subnet)
        assert wait_until(lambda: h2.subnet in routes(h1), 12), routes(h1)
        # A late joiner is reachable; a leaver's route disappears.
        h4 = c.start_nodes(1)[0]
        assert wait_until(lambda: h4.subnet in routes(h1), 2)
        assert c.all_ping(timeout=5)
        gone = h3.subnet
        c.stop(h3)
        c.etcd.etcdctl("del", c.prefix + "/subnets/" + gone.replace("/", "-"))
        assert wait_until(lambda: all(gone not in routes(n) for n in (h1, h2, h4)), 2)
    finally:
        c.close()


def test_host_gw_refuses_nat(lab: Lab) -> None:
    c = Cluster(lab, HOSTGW)
    try:
        n = c.add_node("h1", "--public-ip=203.0.113.9")
        assert n.proc is not None
        assert n.proc.wait(timeout=20) == 1
        assert "your PublicIP differs from interface IP, meaning that probably you're on a NAT" in n.log_text()
    finally:
        c.close()


def test_alloc_only_leases(lab: Lab) -> None:
    c = Cluster(lab, '{"Network":"10.247.0.0/16","Backend":{"Type":"alloc"}}')
    try:
        h1, h2 = c.start_nodes(2)
        assert h1.subnet != h2.subnet
        value = c.lease_json(h1)
        assert value == {"PublicIP": str(h1.host.ip), "PublicIPv6": None}
        assert h2.subnet not in routes(h1)  # no data path of its own
    finally:
        c.close()


def test_extension_runs_commands_without_shell(lab: Lab, tmp_path: object) -> None:
    out = os.path.join(str(tmp_path), "ext")
    os.makedirs(out)
    os.chmod(str(tmp_path), 0o755)
    script = os.path.join(out, "record.sh")
    with open(script, "w") as f:
        f.write('#!/bin/sh\necho "$0 $* SUBNET=$SUBNET PUBLIC_IP=$PUBLIC_IP" >> "$(dirname "$0")/calls.log"\n'
                'cat >> "$(dirname "$0")/stdin.log"\n')
    os.chmod(script, 0o755)
    cfg = {
        "Network": "10.248.0.0/16",
        "Backend": {
            "Type": "extension",
            "PreStartupCommand": "/bin/echo vtep-data",
            "SubnetAddCommand": f"{script} add",
            "SubnetRemoveCommand": f"{script} remove",
        },
    }
    c = Cluster(lab, json.dumps(cfg))
    try:
        h1, h2 = c.start_nodes(2)
        calls = os.path.join(out, "calls.log")
        assert wait_until(lambda: f"SUBNET={h2.subnet}" in read(calls), 5)
        text = read(calls)
        assert f"add SUBNET={h2.subnet} PUBLIC_IP={h2.host.ip}" in text
        assert "vtep-data" in read(os.path.join(out, "stdin.log"))
        value = c.lease_json(h1)
        assert value["BackendType"] == "extension" and value["BackendData"] == "vtep-data"
        gone = h2.subnet
        c.stop(h2)
        c.etcd.etcdctl("del", c.prefix + "/subnets/" + gone.replace("/", "-"))
        assert wait_until(lambda: f"remove SUBNET={gone}" in read(calls), 5)
    finally:
        c.close()


def test_two_networks_on_one_host_take_their_own_paths(lab: Lab) -> None:
    """flannel's functional 'multi' case: vxlan and host-gw side by side, distinct prefixes and files."""
    vx = Cluster(lab, '{"Network":"10.11.0.0/16","Backend":{"Type":"vxlan"}}', prefix="/vxlan/network")
    hg = Cluster(lab, '{"Network":"10.12.0.0/16","Backend":{"Type":"host-gw"}}', prefix="/hostgw/network",
                 etcd=vx.etcd)
    try:
        v1, v2 = (vx.add_node(n) for n in ("h1", "h2"))
        g1 = hg.add_node("h1", host=v1.host)
        g2 = hg.add_node("h2", host=v2.host)
        for n in (v1, v2, g1, g2):
            n.wait_ready()
        v1.add_pod_network("cni0")
        v2.add_pod_network("cni0")
        g1.add_pod_network("cni1")
        g2.add_pod_network("cni1")
        assert vx.all_ping(timeout=10), vx.ping_matrix()
        assert hg.all_ping(timeout=10), hg.ping_matrix()
        r = routes(v1)
        assert f"{v2.subnet} via {v2.subnet.split('/')[0]} dev flannel.1 onlink" in r
        assert f"{g2.subnet} via {v2.host.ip} dev eth0" in r
        # Each network's traffic takes its own path: forced onto the wrong device it fails.
        vx_dev = v1.host.run("ping", "-c", "1", "-W", "1", "-I", "flannel.1", g2.pod_ip, check=False)
        assert vx_dev.returncode != 0
        eth = v1.host.run("ping", "-c", "1", "-W", "1", "-I", "eth0", v2.pod_ip, check=False)
        assert eth.returncode != 0
        # Both daemons' subnet files and leases are separate.
        assert v1.subnet_env()["FLANNEL_NETWORK"] == "10.11.0.0/16"
        assert g1.subnet_env()["FLANNEL_NETWORK"] == "10.12.0.0/16"
        assert len(vx.lease_keys()) == 2 and len(hg.lease_keys()) == 2
        time.sleep(0.5)
        assert all(n.alive() for n in (v1, v2, g1, g2))
    finally:
        hg.close()
        vx.close()


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_leases_of_other_backend_types_are_ignored(lab: Lab, backend: str) -> None:
    c = Cluster(lab, json.dumps({"Network": "10.249.0.0/16", "Backend": {"Type": backend}}))
    try:
        (h1,) = c.start_nodes(1)
        c.etcd.etcdctl("put", c.prefix + "/subnets/10.249.200.0-24",
                       '{"PublicIP":"192.168.77.50","PublicIPv6":null,"BackendType":"ipip"}')
        assert wait_until(lambda: "of backend type 'ipip'" in h1.log_text(), 5), h1.log_text()
        assert "10.249.200.0" not in routes(h1)
    finally:
        c.close()
