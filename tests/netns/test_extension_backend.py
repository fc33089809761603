"""extension backend against the real kernel: commands that program routes in a private namespace.

Each test creates its own named network namespace (``ip netns add pyfl-ext-<random>``) holding a
veth pair, dummy0 (192.168.77.1/24, up) and its peer (the dummy module may be absent), points the
commands at it with ``ip -n <ns>``, and deletes the namespace afterwards. The daemon side
(ExtensionNetwork) runs in the test's own namespace.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.backend.extension import ExtensionCommands, ExtensionNetwork
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.watcher import Event, EventType

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh namespace with veth dummy0 (192.168.77.1/24, up); deleted after the test."""
    ns = f"pyfl-ext-{secrets.token_hex(4)}"
    ip("netns", "add", ns)
    try:
        ip("-n", ns, "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy0p")  # no dummy module
        ip("-n", ns, "link", "set", "dummy0p", "up")
        ip("-n", ns, "addr", "add", "192.168.77.1/24", "dev", "dummy0")
        ip("-n", ns, "link", "set", "dummy0", "up")
        yield ns
    finally:
        ip("netns", "del", ns)


def lease(subnet: str, public_ip: str) -> Lease:
    return Lease(IPv4Network(subnet), None, LeaseAttrs(IPv4Address(public_ip), None, "extension", None))


def routes(ns: str) -> list[str]:
    return [line.strip() for line in ip("-n", ns, "route", "show", "proto", "static").splitlines()]


async def test_host_gw_by_commands(netns: str) -> None:
    cmds = ExtensionCommands(
        subnet_add=f"ip -n {netns} route replace $SUBNET via $PUBLIC_IP dev dummy0 proto static",
        subnet_remove=f"ip -n {netns} route del $SUBNET",
    )
    net = ExtensionNetwork(cmds, 1500)
    a, b = lease("10.50.1.0/24", "192.168.77.2"), lease("10.50.2.0/24", "192.168.77.3")
    await net.apply([Event(EventType.ADDED, a), Event(EventType.ADDED, b)], snapshot=True)
    assert routes(netns) == [
        "10.50.1.0/24 via 192.168.77.2 dev dummy0",
        "10.50.2.0/24 via 192.168.77.3 dev dummy0",
    ]
    await net.apply([Event(EventType.REMOVED, a)], snapshot=False)
    assert routes(netns) == ["10.50.2.0/24 via 192.168.77.3 dev dummy0"]


async def test_flannels_shell_quoted_example_fails_without_a_shell(
    netns: str, caplog: pytest.LogCaptureFixture
) -> None:
    # dist/extension-hostgw quotes its variables for sh; exec'd directly, the quotes reach `ip`.
    cmds = ExtensionCommands(subnet_add=f'ip -n {netns} route add "$SUBNET" via "$PUBLIC_IP"')
    net = ExtensionNetwork(cmds, 1500)
    caplog.set_level(logging.INFO)
    await net.apply([Event(EventType.ADDED, lease("10.50.1.0/24", "192.168.77.2"))], snapshot=False)
    assert routes(netns) == []
    assert "failed to run command" in caplog.text and "Err: exit status" in caplog.text
