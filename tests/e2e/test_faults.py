"""Faults, end to end: etcd outages and failures, lost leases, dead peers, deleted devices, kill -9.

Every test runs flanneld subprocesses in lab namespace hosts (etcd on a host of its own) and checks
the same two promises: the daemons stay up, and no route of a live peer disappears. The figures each
test prints (downtime, convergence, CPU while etcd was down, lost pings) are recorded in
docs/reliability.md; run with ``-s`` to see them.

Changes "made while etcd was down" are made with etcd listening on 127.0.0.1 only inside its own
namespace (:meth:`EtcdServer.start` with ``local_only``), so the daemons cannot see them until etcd is
reachable again, exactly as if another client had written them before the daemons reconnected.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

from pyflannel.lab.cluster import Cluster, Node, wait_until
from pyflannel.lab.etcd import EtcdServer, start_etcd_cluster
from pyflannel.lab.netns import Lab

# The issue asks for a 60 s outage; everything the test checks runs inside that window.
ETCD_OUTAGE_S = 60.0
# "No CPU spin": the daemon may use at most this share of one core while etcd is down.
MAX_CPU_SHARE_WHILE_DOWN = 0.10

FAKE_MAC = "0e:fa:00:00:00:63"


# -- helpers -----------------------------------------------------------------------------------


def start_nodes(cluster: Cluster, names: list[str], *extra: str) -> list[Node]:
    nodes = [cluster.add_node(name, *extra) for name in names]
    for node in nodes:
        node.wait_ready()
        node.add_pod_network()
    return nodes


def key_of(cluster: Cluster, net: str) -> str:
    return cluster.prefix + "/subnets/" + net.replace("/", "-")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (``ip netns exec`` execs, so the Popen pid is the daemon's)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_lines(node: Node) -> list[str]:
    return node.log_text().splitlines()


def fake_lease(ip: str = "192.168.77.99", mac: str = FAKE_MAC) -> str:
    return json.dumps(
        {"PublicIP": ip, "PublicIPv6": None, "BackendType": "vxlan", "BackendData": {"VNI": 1, "VtepMAC": mac}},
        separators=(",", ":"),
    )


def etcd_revision(etcd: EtcdServer) -> int:
    out = json.loads(etcd.etcdctl("get", "/", "-w", "json"))
    return int(out["header"]["revision"])


def lease_ttl(etcd: EtcdServer, key: str) -> tuple[int, int]:
    """(granted TTL, remaining TTL) of the etcd lease holding ``key``."""
    kv = json.loads(etcd.etcdctl("get", key, "-w", "json"))["kvs"][0]
    out = json.loads(etcd.etcdctl("lease", "timetolive", format(kv["lease"], "x"), "-w", "json"))
    return int(out["granted-ttl"]), int(out["ttl"])


def start_monitor(node: Node, name: str) -> tuple[object, str]:
    path = os.path.join(node.workdir, f"{name}.monitor")
    proc = node.host.popen("ip", "-4", "monitor", "route", log_path=path)
    return proc, path


def deleted_routes(path: str, net: str) -> list[str]:
    with open(path) as f:
        return [line for line in f if line.startswith("Deleted") and net in line]


def ping_loss(out: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


# -- etcd ---------------------------------------------------------------------------------------


def test_etcd_stopped_60s_daemons_stay_up_without_spinning_and_resume(cluster: Cluster) -> None:
    """etcd stopped for 60 s: no exit, kernel untouched, no CPU spin, no log flood; then leases
    renewed, watch resumed and the changes made while the daemons were cut off applied."""
    ttl = 30  # renewal every 15 s: renewals fail during the outage and must resume after it
    h1, h2, h3 = start_nodes(cluster, ["h1", "h2", "h3"], f"--subnet-lease-ttl={ttl}")
    assert cluster.all_ping(timeout=10), cluster.ping_matrix()
    etcd = cluster.etcd
    before = {n.host.name: n.vxlan_state() for n in (h1, h2)}
    mon, mon_path = start_monitor(h1, "outage")
    lines_before = len(log_lines(h1))
    ping = h1.host.popen(
        "ping", "-n", "-q", "-i", "0.2", "-w", str(int(ETCD_OUTAGE_S)), "-I", h1.pod_ip, h2.pod_ip,
        log_path=os.path.join(h1.workdir, "outage.ping"),
    )
    assert h1.proc is not None and h2.proc is not None
    cpu0 = {n.host.name: cpu_seconds(n.proc.pid) for n in (h1, h2) if n.proc}
    t_down = time.monotonic()
    etcd.down()

    # While etcd is down: a peer dies for good (its lease is removed below, "by an admin").
    time.sleep(1)
    assert cluster.stop(h3, signal.SIGKILL) == -signal.SIGKILL
    time.sleep(max(0.0, ETCD_OUTAGE_S - (time.monotonic() - t_down)))

    cpu = {n.host.name: cpu_seconds(n.proc.pid) - cpu0[n.host.name] for n in (h1, h2) if n.proc}
    down_s = time.monotonic() - t_down
    assert h1.alive() and h2.alive(), h1.log_tail() + h2.log_tail()
    assert {n.host.name: n.vxlan_state() for n in (h1, h2)} == before
    ping.wait(15)
    with open(os.path.join(h1.workdir, "outage.ping")) as f:
        ping_out = f.read()
    sent, received = ping_loss(ping_out)
    outage_lines = log_lines(h1)[lines_before:]

    # Changes the daemons cannot see yet: h3's lease removed, a new peer's lease added.
    etcd.start(local_only=True)
    etcd.etcdctl("del", key_of(cluster, h3.subnet))
    new_net = "10.244.250.0/24"
    etcd.etcdctl("put", key_of(cluster, new_net), fake_lease())
    etcd.down()
    etcd.start()
    t_up = time.monotonic()
    gone_net, gone_ip = h3.subnet, str(h3.host.ip)
    assert wait_until(
        lambda: all(
            n.lacks_vxlan_entries(gone_net, gone_ip) and n.has_vxlan_entries(new_net, "192.168.77.99") for n in (h1, h2)
        ),
        20,
    ), (h1.log_tail(), h1.vxlan_state())
    converged = time.monotonic() - t_up
    # Renewal resumed: a fresh etcd lease with the full TTL, renewed after etcd came back.
    assert wait_until(lambda: "renewed lease" in "\n".join(log_lines(h1)[lines_before + len(outage_lines):]),
                      ttl), h1.log_tail()
    granted, remaining = lease_ttl(etcd, key_of(cluster, h1.subnet))
    assert granted == ttl and remaining > ttl / 3
    h1.host.kill(mon)
    assert deleted_routes(mon_path, h2.subnet) == []
    assert h1.alive() and h2.alive()
    assert cluster.all_ping([h1, h2], timeout=5)

    share = {k: v / down_s for k, v in cpu.items()}
    print(
        f"\netcd down {down_s:.1f} s; CPU while down: "
        + ", ".join(f"{k} {v:.2f} s ({share[k]:.2%})" for k, v in cpu.items())
        + f"; h1 log lines during the outage: {len(outage_lines)}"
        + f"; pings h1->h2 during the outage: {sent} sent, {sent - received} lost"
        + f"; changes applied {converged:.2f} s after etcd came back"
    )
    print("\n".join(outage_lines))
    assert all(s < MAX_CPU_SHARE_WHILE_DOWN for s in share.values()), share
    assert len(outage_lines) <= 30, "\n".join(outage_lines)  # a few lines, not one per retry
    assert received == sent, ping_out


def test_three_member_etcd_one_member_killed_daemons_carry_on(lab: Lab) -> None:
    members = start_etcd_cluster(lab)
    endpoints = "--etcd-endpoints=" + ",".join(m.endpoint for m in members)
    c = Cluster(lab, etcd=members[0])
    try:
        # Renewal every 5 s: it has to go through the surviving members.
        h1, h2 = start_nodes(c, ["h1", "h2"], endpoints, "--subnet-lease-ttl=10")
        assert c.all_ping(timeout=10)
        t0 = time.monotonic()
        members[0].kill()
        lines = len(log_lines(h1))
        h3 = c.add_node("h3", endpoints)
        h3.wait_ready(timeout=30)
        assert wait_until(lambda: h1.has_vxlan_peer(h3) and h2.has_vxlan_peer(h3), 20), h1.log_tail()
        joined = time.monotonic() - t0
        survivor = members[1]
        survivor.etcdctl("del", key_of(c, h3.subnet))
        # h3's own watch and writes go through the survivors too: it takes its lease back.
        assert wait_until(lambda: "re-acquired lease" in h3.log_text() and h1.has_vxlan_peer(h3), 10), h3.log_tail()
        assert wait_until(lambda: "renewed lease" in "\n".join(log_lines(h1)[lines:]), 15), h1.log_tail()
        assert h1.alive() and h2.alive() and h3.alive()
        assert h1.has_vxlan_peer(h2) and h2.has_vxlan_peer(h1)
        print(f"\none of 3 etcd members killed: a new host joined and was routed in {joined:.2f} s")
    finally:
        c.close()


def test_compaction_while_cut_off_relists_once_and_applies_missed_changes(cluster: Cluster) -> None:
    h1, h2, h3 = start_nodes(cluster, ["h1", "h2", "h3"])
    etcd = cluster.etcd
    assert cluster.stop(h3) == 0
    etcd.down()
    etcd.start(local_only=True)
    gone_net, gone_ip = h3.subnet, str(h3.host.ip)
    etcd.etcdctl("del", key_of(cluster, gone_net))
    new_net = "10.244.251.0/24"
    etcd.etcdctl("put", key_of(cluster, new_net), fake_lease())
    for i in range(20):  # history to throw away
        etcd.etcdctl("put", f"{cluster.prefix}/noise", str(i))
    etcd.etcdctl("compact", str(etcd_revision(etcd)))
    etcd.down()
    etcd.start()
    t0 = time.monotonic()
    assert wait_until(
        lambda: all(n.lacks_vxlan_entries(gone_net, gone_ip) and n.has_vxlan_entries(new_net, "192.168.77.99")
                    for n in (h1, h2)),
        20,
    ), h1.log_tail()
    converged = time.monotonic() - t0
    time.sleep(1)
    for n in (h1, h2):
        compacted = [line for line in log_lines(n) if "compacted" in line]
        assert len(compacted) == 1, compacted
    assert h1.has_vxlan_peer(h2) and h2.has_vxlan_peer(h1) and h1.alive() and h2.alive()
    print(f"\ncompaction: re-listed and applied the missed add and remove in {converged:.2f} s")


# -- allocation -------------------------------------------------------------------------------------

SIMULTANEOUS = 30


def test_thirty_daemons_started_at_once_get_distinct_subnets(lab: Lab) -> None:
    c = Cluster(lab, '{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}')
    try:
        nodes = [c.add_node(f"n{i}", start=False) for i in range(SIMULTANEOUS)]
        t0 = time.monotonic()
        for node in nodes:
            c.start(node)
        for node in nodes:
            node.wait_ready(timeout=90)
        ready = time.monotonic() - t0
        subnets = [n.subnet_env()["FLANNEL_SUBNET"] for n in nodes]
        assert len(set(subnets)) == SIMULTANEOUS, subnets
        assert all(n.alive() for n in nodes)
        keys = c.lease_keys()
        assert len(keys) == SIMULTANEOUS, keys
        races = sum(n.log_text().count("another node took it") for n in nodes)
        print(f"\n{SIMULTANEOUS} daemons at once: all ready in {ready:.1f} s, {races} create races resolved")
    finally:
        c.close()


# -- own lease ----------------------------------------------------------------------------------------


def test_own_lease_deleted_or_expired_is_reacquired(cluster: Cluster) -> None:
    h1, h2 = start_nodes(cluster, ["h1", "h2"])
    etcd = cluster.etcd
    mine = h1.subnet
    key = key_of(cluster, mine)

    def owned() -> bool:
        out = etcd.etcdctl("get", key, "--print-value-only").strip()
        return bool(out) and json.loads(out)["PublicIP"] == str(h1.host.ip)

    # Deleted by someone.
    etcd.etcdctl("del", key)
    assert wait_until(lambda: owned() and "re-acquired lease" in h1.log_text(), 10), h1.log_tail()
    # Expired: revoking the etcd lease removes the key exactly as expiry does.
    kv = json.loads(etcd.etcdctl("get", key, "-w", "json"))["kvs"][0]
    etcd.etcdctl("lease", "revoke", format(kv["lease"], "x"))
    assert wait_until(lambda: owned() and h1.log_text().count("re-acquired lease") == 2, 10), h1.log_tail()
    assert h1.subnet == mine and h1.alive()
    assert wait_until(lambda: h2.has_vxlan_peer(h1), 5)
    assert cluster.all_ping(timeout=5)

    # Lost and taken by someone else before we could take it back: move, and say so.
    etcd.down()
    etcd.start(local_only=True)
    etcd.etcdctl("del", key)
    etcd.etcdctl("put", key, fake_lease("192.168.77.98", "0e:fa:00:00:00:62"))
    etcd.down()
    etcd.start()
    assert wait_until(lambda: h1.subnet != mine, 20), h1.log_tail()
    assert "was taken by another node" in h1.log_text()
    assert h1.alive()
    h1.pod_cidr = None
    h1.host.run("ip", "addr", "flush", "dev", "cni0")
    h1.add_pod_network()
    assert wait_until(lambda: h2.has_vxlan_peer(h1), 10), h2.log_tail()
    assert cluster.all_ping(timeout=10), cluster.ping_matrix()


# -- peers ---------------------------------------------------------------------------------------------


def test_dead_peer_is_removed_when_its_lease_expires(cluster: Cluster) -> None:
    ttl = 5
    h1, h2, h3 = start_nodes(cluster, ["h1", "h2", "h3"], f"--subnet-lease-ttl={ttl}")
    gone_net, gone_ip = h3.subnet, str(h3.host.ip)
    assert h1.has_vxlan_entries(gone_net, gone_ip) and h2.has_vxlan_entries(gone_net, gone_ip)
    t0 = time.monotonic()
    cluster.stop(h3, signal.SIGKILL)
    assert wait_until(lambda: all(n.lacks_vxlan_entries(gone_net, gone_ip) for n in (h1, h2)), ttl + 5)
    removed = time.monotonic() - t0
    assert h1.has_vxlan_peer(h2) and h2.has_vxlan_peer(h1)
    assert h1.alive() and h2.alive()
    print(f"\ndead peer (lease TTL {ttl} s) removed everywhere {removed:.2f} s after kill -9")


def test_start_removes_stale_entries_of_peers_gone_while_down_and_nothing_else(cluster: Cluster) -> None:
    h1, h2, h3 = start_nodes(cluster, ["h1", "h2", "h3"])
    gone_net, gone_ip = h3.subnet, str(h3.host.ip)
    assert cluster.stop(h1) == 0
    assert cluster.stop(h3) == 0
    cluster.etcd.etcdctl("del", key_of(cluster, gone_net))
    # Routes flanneld does not own: inside the Network via the underlay, outside it on flannel.1.
    h = h1.host
    h.run("ip", "route", "add", "10.244.240.0/24", "via", "192.168.77.254", "dev", "eth0")
    h.run("ip", "route", "add", "10.99.0.0/24", "dev", "flannel.1")
    assert h1.has_vxlan_entries(gone_net, gone_ip)
    mon, path = start_monitor(h1, "restart")
    time.sleep(0.2)
    cluster.start(h1)
    h1.wait_ready()
    assert wait_until(lambda: h1.lacks_vxlan_entries(gone_net, gone_ip), 5), h1.vxlan_state()
    time.sleep(0.5)
    h.kill(mon)
    routes = h1.vxlan_state()["route"]
    assert "10.244.240.0/24 via 192.168.77.254 dev eth0" in routes
    assert "10.99.0.0/24 dev flannel.1" in routes
    assert h1.has_vxlan_peer(h2) and deleted_routes(path, h2.subnet) == []
    assert "removing 3 stale kernel entries" in h1.log_text()


def test_vxlan_device_deleted_by_hand_is_recreated_with_every_peer(cluster: Cluster) -> None:
    h1, h2, h3 = start_nodes(cluster, ["h1", "h2", "h3"])
    mac = h1.host.run("cat", "/sys/class/net/flannel.1/address").stdout.strip()
    t0 = time.monotonic()
    h1.host.run("ip", "link", "del", "flannel.1")
    assert wait_until(lambda: h1.has_vxlan_peer(h2) and h1.has_vxlan_peer(h3), 10), h1.log_tail()
    assert cluster.all_ping(timeout=10), cluster.ping_matrix()
    recovered = time.monotonic() - t0
    assert h1.host.run("cat", "/sys/class/net/flannel.1/address").stdout.strip() == mac
    assert h1.alive()
    print(f"\nflannel.1 deleted by hand: recreated, peers replayed and pinging in {recovered:.2f} s")


def test_kill_9_and_restart_during_ping_loses_nothing(cluster: Cluster) -> None:
    h1, h2 = start_nodes(cluster, ["h1", "h2"])
    before = h1.subnet
    out = os.path.join(h1.workdir, "kill9.ping")
    ping = h1.host.popen("ping", "-n", "-q", "-i", "0.05", "-c", "120", "-I", h1.pod_ip, h2.pod_ip, log_path=out)
    time.sleep(1)
    t0 = time.monotonic()
    assert cluster.stop(h1, signal.SIGKILL) == -signal.SIGKILL
    cluster.start(h1)
    h1.wait_ready()
    back = time.monotonic() - t0
    assert ping.wait(30) == 0
    with open(out) as f:
        sent, received = ping_loss(f.read())
    assert h1.subnet == before
    assert sent == received == 120
    print(f"\nkill -9 + restart: ready again in {back:.2f} s, {sent} pings at 50 ms, {sent - received} lost")
