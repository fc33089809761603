"""Lease values (flannel's LeaseAttrs JSON) and subnet keys, against literal flannel output."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.subnet.lease import (
    Lease,
    LeaseAttrs,
    LeaseError,
    go_json_dumps,
    make_subnet_key,
    parse_subnet_key,
)

# -- values --------------------------------------------------------------------------------------

# Values as flanneld writes them (etcdctl get output of real clusters / flannel's own tests).
FLANNEL_VALUES = [
    '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}',
    '{"PublicIP":"10.0.0.2","PublicIPv6":null}',  # udp / alloc: no BackendType
    '{"PublicIP":"10.0.0.3","PublicIPv6":null,"BackendType":"host-gw"}',
    (
        '{"PublicIP":"172.18.0.2","PublicIPv6":"fc00:f853:ccd:e793::2","BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"1a:2b:3c:4d:5e:6f"},"BackendV6Data":{"VNI":1,"VtepMAC":"7a:2b:3c:4d:5e:6f"}}'
    ),
    '{"PublicIP":"10.0.0.4","PublicIPv6":null,"BackendType":"extension","BackendData":"my-public-key"}',
    '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"abc+/="}}',
]


@pytest.mark.parametrize("text", FLANNEL_VALUES)
def test_round_trip_is_byte_exact(text: str) -> None:
    attrs = LeaseAttrs.from_json(text)
    assert attrs.to_json() == text
    assert LeaseAttrs.from_json(text.encode()) == attrs


@pytest.mark.parametrize(
    ("attrs", "text"),
    [
        (
            LeaseAttrs(
                IPv4Address("192.168.64.3"), None, "vxlan", {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}
            ),
            FLANNEL_VALUES[0],
        ),
        (LeaseAttrs(IPv4Address("10.0.0.2")), '{"PublicIP":"10.0.0.2","PublicIPv6":null}'),
        (
            LeaseAttrs(IPv4Address("10.0.0.2"), IPv6Address("fd00::2"), "host-gw"),
            '{"PublicIP":"10.0.0.2","PublicIPv6":"fd00::2","BackendType":"host-gw"}',
        ),
        # Go's HTML-safe escaping and its float format
        (
            LeaseAttrs(
                IPv4Address("10.0.0.2"),
                None,
                "x",
                {
                    "s": '<a&b>\u2028\x01"\\\n',
                    "f": 1.5,
                    "g": 1e21,
                    "h": 1e-7,
                    "i": 100.0,
                    "n": None,
                    "l": [True, False],
                },
            ),
            (
                '{"PublicIP":"10.0.0.2","PublicIPv6":null,"BackendType":"x","BackendData":{"s":"\\u003ca\\u0026b\\u003e'
                '\\u2028\\u0001\\"\\\\\\n","f":1.5,"g":1e+21,"h":1e-7,"i":100,"n":null,"l":[true,false]}}'
            ),
        ),
        # non-ASCII stays raw UTF-8
        (
            LeaseAttrs(IPv4Address("10.0.0.2"), None, "", "héllo"),
            '{"PublicIP":"10.0.0.2","PublicIPv6":null,"BackendData":"héllo"}',
        ),
    ],
)
def test_to_json(attrs: LeaseAttrs, text: str) -> None:
    assert attrs.to_json() == text


@pytest.mark.parametrize(
    ("addr", "text"),
    [
        ("fd00:12:13::1", "fd00:12:13::1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),  # first longest zero run
        ("2001:db8::", "2001:db8::"),
        ("::ffff:1.2.3.4", "1.2.3.4"),  # Go prints IPv4-mapped addresses dotted
    ],
)
def test_public_ipv6_formatting(addr: str, text: str) -> None:
    attrs = LeaseAttrs(IPv4Address("10.0.0.1"), IPv6Address(addr))
    assert attrs.to_json() == f'{{"PublicIP":"10.0.0.1","PublicIPv6":"{text}"}}'


def test_from_json_is_tolerant_like_go() -> None:
    text = (
        '{"publicip": "10.0.0.9", "PUBLICIPV6": "FD00::9", "backendtype": "vxlan",'
        ' "backenddata": {"VNI": 2, "VtepMAC": "aa:bb:cc:dd:ee:ff"}, "Extra": 1}'
    )
    attrs = LeaseAttrs.from_json(text)
    assert attrs == LeaseAttrs(
        IPv4Address("10.0.0.9"), IPv6Address("fd00::9"), "vxlan", {"VNI": 2, "VtepMAC": "aa:bb:cc:dd:ee:ff"}
    )
    # re-encoded in flannel's canonical form
    assert attrs.to_json() == (
        '{"PublicIP":"10.0.0.9","PublicIPv6":"fd00::9","BackendType":"vxlan",'
        '"BackendData":{"VNI":2,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}'
    )


def test_numbers_in_backend_data_survive_verbatim() -> None:
    text = '{"PublicIP":"10.0.0.2","PublicIPv6":null,"BackendData":{"a":1.50,"b":2e3,"c":-0.0}}'
    assert LeaseAttrs.from_json(text).to_json() == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"PublicIP":"10.0.0.2","PublicIPv6":null,"BackendType":null,"BackendData":null}',
            LeaseAttrs(IPv4Address("10.0.0.2")),
        ),
        ('{"PublicIP":"::ffff:10.0.0.2"}', LeaseAttrs(IPv4Address("10.0.0.2"))),
        ('{"PublicIP":"0.0.0.0"}', LeaseAttrs(IPv4Address("0.0.0.0"))),  # flannel's IPv6-only leases
        ('{"PublicIP":"10.0.0.1","PublicIP":"10.0.0.2"}', LeaseAttrs(IPv4Address("10.0.0.2"))),
    ],
)
def test_from_json_values(text: str, expected: LeaseAttrs) -> None:
    assert LeaseAttrs.from_json(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid lease JSON: unexpected end of JSON input"),
        ("not json", "invalid lease JSON: invalid character 'o' in literal null (expecting 'u')"),
        ('{"PublicIP":"10.0.0.2"', "invalid lease JSON: unexpected end of JSON input"),
        ("[]", "json: cannot unmarshal array into Go value of type lease.LeaseAttrs"),
        ('"10.0.0.2"', "json: cannot unmarshal string into Go value of type lease.LeaseAttrs"),
        ("{}", "lease has no PublicIP"),
        ('{"PublicIPv6":"fd00::1"}', "lease has no PublicIP"),
        ('{"PublicIP":null}', "invalid PublicIP null: not a string"),
        ('{"PublicIP":167772162}', "invalid PublicIP 167772162: not a string"),
        ('{"PublicIP":"10.0.0"}', "invalid PublicIP '10.0.0': invalid IP address format"),
        ('{"PublicIP":"fd00::1"}', "invalid PublicIP 'fd00::1': invalid IPv4 address format"),
        (
            '{"PublicIP":"10.0.0.2","PublicIPv6":"10.0.0.2"}',
            "invalid PublicIPv6 '10.0.0.2': not an IPv6 address",
        ),
        ('{"PublicIP":"10.0.0.2","PublicIPv6":"zz"}', "invalid PublicIPv6 'zz': invalid IP address format"),
        ('{"PublicIP":"10.0.0.2","PublicIPv6":[]}', "invalid PublicIPv6 []: not a string"),
        (
            '{"PublicIP":"10.0.0.2","BackendType":7}',
            "json: cannot unmarshal number into Go struct field LeaseAttrs.BackendType of type string",
        ),
        ('{"PublicIP":"a\\nb"}', "invalid PublicIP 'a\\\\nb': invalid IP address format"),
    ],
)
def test_malformed_values(text: str, message: str) -> None:
    with pytest.raises(LeaseError) as ei:
        LeaseAttrs.from_json(text)
    assert str(ei.value) == message
    assert "\n" not in str(ei.value)


def test_unencodable_backend_data() -> None:
    with pytest.raises(LeaseError):
        LeaseAttrs(IPv4Address("10.0.0.1"), backend_data={"x": float("nan")}).to_json()
    with pytest.raises(LeaseError):
        go_json_dumps(object())


json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(
    ip=st.integers(0, 2**32 - 1),
    ip6=st.none() | st.integers(2**32, 2**128 - 1),
    btype=st.text(max_size=10),
    data=json_values,
    data6=json_values,
)
def test_property_round_trip(ip: int, ip6: int | None, btype: str, data: Any, data6: Any) -> None:
    attrs = LeaseAttrs(IPv4Address(ip), None if ip6 is None else IPv6Address(ip6), btype, data, data6)
    if ip6 is not None and IPv6Address(ip6).ipv4_mapped is not None:
        return  # printed dotted, as Go does; cannot come back as IPv6
    text = attrs.to_json()
    back = LeaseAttrs.from_json(text)
    assert back == attrs
    assert back.to_json() == text


# -- keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sn", "sn6", "key"),
    [
        ("10.5.72.0/24", None, "10.5.72.0-24"),
        ("10.12.13.0/24", "fd00:12:13::/56", "10.12.13.0-24&fd00:12:13::-56"),
        ("10.244.0.0/30", "fd00:0:0:1::/64", "10.244.0.0-30&fd00:0:0:1::-64"),
        ("10.1.2.0/24", "2001:db8:0:0:1::/80", "10.1.2.0-24&2001:db8:0:0:1::-80"),  # longest zero run
        ("10.1.2.0/24", "::/0", "10.1.2.0-24"),  # Go: an empty IP6Net is no IPv6 part
    ],
)
def test_make_and_parse_key(sn: str, sn6: str | None, key: str) -> None:
    net6 = None if sn6 is None else IPv6Network(sn6)
    assert make_subnet_key(IPv4Network(sn), net6) == key
    if sn6 != "::/0":
        assert parse_subnet_key(key) == (IPv4Network(sn), net6)
        assert parse_subnet_key("/coreos.com/network/subnets/" + key) == (IPv4Network(sn), net6)
        assert Lease(IPv4Network(sn), net6, LeaseAttrs(IPv4Address("1.2.3.4"))).key() == key


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("/coreos.com/network/subnets/10.5.72.0-024", ("10.5.72.0/24", None)),  # ParseUint allows zeros
        ("/x/subnets/1.2.3.4.5-24", None),  # leftmost match is 2.3.4.5-24: host bits
        ("/x/subnets/1.2.3.0.10.5.0.0-16", ("10.5.0.0/16", None)),  # leftmost match, as Go's regexp
        ("10.5.72.0-24&fd00::-64", ("10.5.72.0/24", "fd00::/64")),
        ("0.0.0.0-0&fd00:1::-64", ("0.0.0.0/0", "fd00:1::/64")),  # flannel's IPv6-only key form
    ],
)
def test_parse_key_edge_cases(key: str, expected: tuple[str, str | None] | None) -> None:
    got = parse_subnet_key(key)
    if expected is None:
        assert got is None
    else:
        assert got == (IPv4Network(expected[0]), None if expected[1] is None else IPv6Network(expected[1]))


@pytest.mark.parametrize(
    "key",
    [
        "",
        "config",
        "/coreos.com/network/config",
        "10.5.72.0/24",
        "10.5.72.0-24\n",  # Go's $ is the very end
        "10.5.72.0-24 ",
        "10.5.72.0-",
        "10.5.72.256-24",
        "010.5.72.0-24",
        "10.5.72.0-32",  # ParseUint(.., 5): prefix at most 31
        "10.5.72.0-99",
        "10.5.72.1-24",  # host bits (ours: rejected)
        "10.5.72.0-24&fd00::1-64",  # IPv6 host bits
        "10.5.72.0-24&fd00::-128",  # ParseUint(.., 7): at most 127
        "10.5.72.0-24&fd00:::-64",
        "10.5.72.0-24&FD00::-64",  # uppercase is not in flannel's class
        "1x2y3z4-24",  # passes flannel's sloppy regexp, not the address parser
        "\u0661\u0660.5.72.0-24",  # Arabic-Indic digits are not Go's \\d
    ],
)
def test_garbage_keys(key: str) -> None:
    assert parse_subnet_key(key) is None


@given(
    ip=st.integers(0, 2**32 - 1),
    prefix=st.integers(0, 31),
    ip6=st.none() | st.integers(1, 2**128 - 1),
    prefix6=st.integers(1, 127),
)
def test_property_key_round_trip(ip: int, prefix: int, ip6: int | None, prefix6: int) -> None:
    sn = IPv4Network((ip, prefix), strict=False)
    sn6 = None if ip6 is None else IPv6Network((ip6, prefix6), strict=False)
    if sn6 is not None and (
        int(sn6.network_address) == 0
        or int(sn6.network_address) < 2**32
        or sn6.network_address.ipv4_mapped is not None
    ):
        return  # printed the way Go prints them (dotted / empty), not parseable: as in flannel
    key = make_subnet_key(sn, sn6)
    assert parse_subnet_key("/coreos.com/network/subnets/" + key) == (sn, sn6)
