"""Pure parts of the vxlan backend and the manager: leases in, kernel objects and decisions out."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from pyflannel.backend.peers import reconcile_ops
from pyflannel.backend.vxlan import VxlanOptions, peer_objects, random_mac, vtep_mac
from pyflannel.config import ConfigError, parse_config
from pyflannel.iface import HostFacts, InterfaceError, choose
from pyflannel.kernel.netlink import Address, Fdb, Link, Neighbour, Route
from pyflannel.settings import InterfaceSettings
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.manager import peer_problem, renew_delay

CFG = parse_config('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')


def lease(subnet: str, ip: str = "192.168.77.2", mac: object = "aa:bb:cc:dd:ee:02", btype: str = "vxlan") -> Lease:
    data = {"VNI": 1, "VtepMAC": mac} if mac is not None else None
    return Lease(IPv4Network(subnet), None, LeaseAttrs(IPv4Address(ip), None, btype, data))


def test_peer_objects_are_flannels_three() -> None:
    objs = peer_objects(lease("10.244.5.0/24"), dev_index=7, direct_oif=None)
    gw = IPv4Address("10.244.5.0")
    assert objs == [
        Neighbour(7, gw, "aa:bb:cc:dd:ee:02"),
        Fdb(7, "aa:bb:cc:dd:ee:02", IPv4Address("192.168.77.2")),
        Route(IPv4Network("10.244.5.0/24"), gw, 7, onlink=True),
    ]


def test_direct_routing_is_a_plain_route_via_public_ip() -> None:
    objs = peer_objects(lease("10.244.5.0/24"), dev_index=7, direct_oif=2)
    assert objs == [Route(IPv4Network("10.244.5.0/24"), IPv4Address("192.168.77.2"), 2)]


@pytest.mark.parametrize(
    "mac,expected",
    [
        ("AA:BB:CC:DD:EE:02", "aa:bb:cc:dd:ee:02"),
        ("aa:bb:cc:dd:ee", None),
        ("zz:bb:cc:dd:ee:02", None),
        ("01:00:5e:00:00:01", None),  # multicast
        (42, None),
        (None, None),
    ],
)
def test_vtep_mac_validation(mac: object, expected: str | None) -> None:
    assert vtep_mac(lease("10.244.5.0/24", mac=mac)) == expected


def test_reconcile_ops_keeps_what_is_right_and_deletes_stale_first() -> None:
    keep = Route(IPv4Network("10.244.5.0/24"), IPv4Address("10.244.5.0"), 7, onlink=True)
    stale = Route(IPv4Network("10.244.6.0/24"), IPv4Address("10.244.6.0"), 7, onlink=True)
    new = Neighbour(7, IPv4Address("10.244.8.0"), "aa:bb:cc:dd:ee:08")
    ops = reconcile_ops([keep, new], [keep, stale])
    assert ops == [("delete", stale), ("replace", new)]
    assert reconcile_ops([keep], [keep]) == []


def test_random_mac_is_local_unicast() -> None:
    for _ in range(50):
        first = int(random_mac().split(":")[0], 16)
        assert first & 1 == 0 and first & 2 == 2


def test_vxlan_options_defaults_and_case_insensitive_keys() -> None:
    o = VxlanOptions.from_config(CFG)
    assert (o.vni, o.port, o.gbp, o.learning, o.direct_routing, o.mtu) == (1, 8472, False, False, False, None)
    o = VxlanOptions.from_config(
        parse_config('{"Network":"10.0.0.0/8","Backend":{"type":"vxlan","vni":4,"port":4789,"gbp":true,'
                     '"directrouting":true,"MTU":9000}}')
    )
    assert (o.vni, o.port, o.gbp, o.direct_routing, o.mtu, o.device_name) == (4, 4789, True, True, 9000, "flannel.4")
    with pytest.raises(ConfigError):
        VxlanOptions.from_config(parse_config('{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan","VNI":"x"}}'))


@pytest.mark.parametrize(
    "subnet,ip,problem",
    [
        ("10.244.5.0/24", "192.168.77.2", None),
        ("10.99.5.0/24", "192.168.77.2", "not a /24 of the Network"),
        ("10.244.0.0/16", "192.168.77.2", "not a /24"),
        ("10.244.5.0/25", "192.168.77.2", "not a /24"),
        ("10.244.5.0/24", "0.0.0.0", "not a usable unicast"),
        ("10.244.5.0/24", "127.0.0.1", "not a usable unicast"),
        ("10.244.5.0/24", "224.0.0.1", "not a usable unicast"),
        ("10.244.5.0/24", "10.244.9.9", "inside the overlay Network"),
    ],
)
def test_peer_problem(subnet: str, ip: str, problem: str | None) -> None:
    got = peer_problem(CFG, lease(subnet, ip))
    assert (got is None) if problem is None else (got is not None and problem in got)


def test_renew_delay_margin_and_short_ttl() -> None:
    l1 = Lease(IPv4Network("10.244.5.0/24"), None, LeaseAttrs(IPv4Address("1.2.3.4")), expiration=1000 + 86400)
    assert renew_delay(l1, 60, 86400, now=1000) == 86400 - 3600
    l2 = Lease(IPv4Network("10.244.5.0/24"), None, LeaseAttrs(IPv4Address("1.2.3.4")), expiration=1010)
    assert renew_delay(l2, 60, 10, now=1000) == 5


def _facts() -> HostFacts:
    lo = Link(1, "lo", None, 65536, None, True)
    eth0 = Link(2, "eth0", "veth", 1500, "aa:00:00:00:00:02", True)
    eth1 = Link(3, "eth1", "veth", 9000, "aa:00:00:00:00:03", True)
    return HostFacts(
        links=[lo, eth0, eth1],
        addresses=[
            Address(1, IPv4Interface("127.0.0.1/8")),
            Address(2, IPv4Interface("192.168.77.1/24")),
            Address(3, IPv4Interface("172.16.0.1/24")),
        ],
        default_routes=[Route(IPv4Network("0.0.0.0/0"), IPv4Address("192.168.77.254"), 2)],
    )


def iface_settings(**kw: object) -> InterfaceSettings:
    base: dict[str, object] = {
        "iface": (), "iface_regex": (), "iface_can_reach": "", "public_ip": "", "public_ipv6": ""
    }
    base.update(kw)
    return InterfaceSettings(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kw,name,addr",
    [
        ({}, "eth0", "192.168.77.1"),
        ({"iface": ("eth1",)}, "eth1", "172.16.0.1"),
        ({"iface": ("172.16.0.1",)}, "eth1", "172.16.0.1"),
        ({"iface": ("nope", "eth1")}, "eth1", "172.16.0.1"),
        ({"iface_regex": (r"^172\.16",)}, "eth1", "172.16.0.1"),
        ({"iface_regex": (r"eth1",)}, "eth1", "172.16.0.1"),
        ({"public_ip": "172.16.0.1"}, "eth1", "172.16.0.1"),
    ],
)
def test_interface_choice(kw: dict[str, object], name: str, addr: str) -> None:
    link, ip = choose(iface_settings(**kw), _facts())
    assert (link.name, str(ip)) == (name, addr)


def test_interface_choice_errors() -> None:
    with pytest.raises(InterfaceError, match="failed to find any interface"):
        choose(iface_settings(iface=("nope",)), _facts())
    with pytest.raises(InterfaceError, match="not an address of this host"):
        choose(iface_settings(public_ip="8.8.8.8"), _facts())
    facts = _facts()
    with pytest.raises(InterfaceError, match="default route"):
        choose(iface_settings(), HostFacts(facts.links, facts.addresses, []))
