"""The lab itself: namespace hosts on one bridge, pod bridges, cleanup, etcd in a host."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from pyflannel.lab.netns import CommandError, Lab, netns_list, wait_until


def test_three_hosts_ping_each_other(lab: Lab) -> None:
    hosts = [lab.add_host(f"h{i}") for i in (1, 2, 3)]
    assert [str(h.ip) for h in hosts] == ["192.168.77.1", "192.168.77.2", "192.168.77.3"]
    assert all(h.netns.startswith(lab.prefix + "-") for h in hosts)
    for a in hosts:
        for b in hosts:
            if a is not b:
                assert a.ping(str(b.ip)), f"{a.name} -> {b.name}"
        assert a.ping(str(lab.router.ip))
    h1 = hosts[0]
    assert "default via 192.168.77.254 dev eth0" in h1.run("ip", "route").stdout
    assert h1.run("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert "UP" in h1.run("ip", "-br", "link", "show", "lo").stdout
    rtt = h1.ping_rtt(str(hosts[1].ip), count=2)
    assert rtt is not None and rtt >= 0


def test_mtu_and_failed_command_message(lab: Lab) -> None:
    h = lab.add_host("small", mtu=1400)
    assert "mtu 1400" in h.run("ip", "link", "show", "eth0").stdout
    with pytest.raises(CommandError) as err:
        h.run("ip", "link", "show", "nosuchdev")
    assert h.netns in str(err.value) and "nosuchdev" in str(err.value)
    assert h.run("false", check=False).returncode == 1


def test_pod_network_on_a_cni0_bridge(lab: Lab) -> None:
    h1, h2 = lab.add_host("h1"), lab.add_host("h2")
    h1.add_pod_network("10.244.5.1/24")
    h1.add_pod_network("10.244.5.1/24")  # idempotent
    assert "bridge" in h1.run("ip", "-d", "link", "show", "cni0").stdout
    assert "inet 10.244.5.1/24" in h1.run("ip", "-4", "addr", "show", "dev", "cni0").stdout
    # Reachable from another host once it has a route (what a backend would program).
    h2.run("ip", "route", "add", "10.244.5.0/24", "via", str(h1.ip))
    assert h2.ping("10.244.5.1")
    assert h1.ping(str(h2.ip), src="10.244.5.1")
    h2.run("ip", "route", "del", "10.244.5.0/24")
    assert not h1.ping(str(h2.ip), src="10.244.5.1", timeout=0.3)  # no way back without the route


def test_cleanup_leaves_no_namespaces_and_no_processes(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    with Lab() as lab:
        h1, h2 = lab.add_host("h1"), lab.add_host("h2")
        sleeper = h1.popen("sleep", "300")
        # Ignores SIGTERM and leaves a child behind: SIGKILL, then the namespace sweep.
        stubborn = h2.popen("sh", "-c", "trap '' TERM; sleep 300 & echo $!; wait", log_path=str(log))
        assert wait_until(lambda: log.read_text().strip().isdigit(), 5)
        orphan = int(log.read_text())
        prefix = lab.prefix
        assert len([ns for ns in netns_list() if ns.startswith(prefix)]) == 3
    assert [ns for ns in netns_list() if ns.startswith(prefix)] == []
    assert sleeper.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
    assert wait_until(lambda: not os.path.exists(f"/proc/{orphan}"), 2)
    for pid in (sleeper.pid, stubborn.pid):
        assert not os.path.exists(f"/proc/{pid}")


def test_cleanup_after_an_error_and_remove_host() -> None:
    prefix = ""
    with pytest.raises(KeyboardInterrupt), Lab() as lab:
        prefix = lab.prefix
        h = lab.add_host("h1")
        gone = lab.add_host("h2")
        proc = gone.popen("sleep", "300")
        lab.remove_host(gone)
        assert proc.poll() is not None
        assert gone.netns not in netns_list() and h.netns in netns_list()
        raise KeyboardInterrupt
    assert [ns for ns in netns_list() if ns.startswith(prefix)] == []


@pytest.mark.etcd
def test_etcd_in_a_host_is_reachable_from_another_host(lab: Lab) -> None:
    server = lab.start_etcd()
    assert server.host is not None and server.host.netns == f"{lab.prefix}-etcd"
    assert server.endpoint == f"http://{server.host.ip}:2379"
    h1 = lab.add_host("h1")
    assert str(h1.ip) == "192.168.77.1"
    server.etcdctl("put", "/lab/key", "hello")
    out = h1.run("etcdctl", f"--endpoints={server.endpoint}", "get", "/lab/key", "--print-value-only")
    assert out.stdout.strip() == "hello"
    # ... and on 127.0.0.1 inside its own host.
    assert (
        "hello" in server.host.run("etcdctl", "--endpoints=http://127.0.0.1:2379", "get", "/lab/key").stdout
    )


def test_root_namespace_is_left_alone() -> None:
    def snapshot() -> tuple[str, str, str]:
        links = subprocess.run(
            ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
        ).stdout
        names = "\n".join(sorted(line.split(":")[1].strip() for line in links.splitlines()))
        routes = subprocess.run(["ip", "route", "show"], capture_output=True, text=True, check=True).stdout
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            return names, routes, f.read()

    before = snapshot()
    with Lab() as lab:
        lab.add_host("h1").add_pod_network("10.244.1.1/24")
        assert snapshot() == before
    assert snapshot() == before
