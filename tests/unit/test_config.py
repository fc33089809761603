"""Network config: flannel's defaults, validation messages and Go JSON decoding rules."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.config import ConfigError, NetworkConfig, backend_option, parse_config


def cfg(**fields: Any) -> NetworkConfig:
    return parse_config(json.dumps(fields))


# -- defaults (flannel's CheckNetworkConfig) -------------------------------------------------


@pytest.mark.parametrize(
    ("network", "subnet_len", "smin", "smax"),
    [
        ("10.5.0.0/16", 24, "10.5.1.0", "10.5.255.0"),  # spec example: 255 leases
        ("10.5.0.0/24", 26, "10.5.0.64", "10.5.0.192"),  # spec example: 3 leases
        ("10.0.0.0/8", 24, "10.0.1.0", "10.255.255.0"),
        ("10.5.0.0/22", 24, "10.5.1.0", "10.5.3.0"),  # /22 still gets /24
        ("10.5.0.0/23", 25, "10.5.0.128", "10.5.1.128"),  # prefix + 2
        ("10.5.0.0/28", 30, "10.5.0.4", "10.5.0.12"),  # smallest allowed
        ("255.0.0.0/8", 24, "255.0.1.0", "255.255.255.0"),  # no overflow at the top
        ("10.5.0.3/16", 24, "10.5.1.0", "10.5.255.0"),  # host bits masked
    ],
)
def test_ipv4_defaults(network: str, subnet_len: int, smin: str, smax: str) -> None:
    c = cfg(Network=network)
    assert c.network == IPv4Network(network, strict=False)
    assert (c.subnet_len, c.subnet_min, c.subnet_max) == (subnet_len, IPv4Address(smin), IPv4Address(smax))


def test_full_defaults() -> None:
    c = parse_config('{"Network": "10.5.0.0/16"}')
    assert c == NetworkConfig(
        enable_ipv4=True,
        enable_ipv6=False,
        enable_nftables=False,
        network=IPv4Network("10.5.0.0/16"),
        subnet_len=24,
        subnet_min=IPv4Address("10.5.1.0"),
        subnet_max=IPv4Address("10.5.255.0"),
        ipv6_network=None,
        ipv6_subnet_len=0,
        ipv6_subnet_min=None,
        ipv6_subnet_max=None,
        backend_type="udp",  # flannel's code default (docs say vxlan)
        backend={},
    )
    assert c.subnet_capacity() == 255


def test_explicit_values_kept() -> None:
    c = cfg(
        Network="10.5.0.0/16", SubnetLen=20, SubnetMin="10.5.16.0", SubnetMax="10.5.32.0", EnableNFTables=True
    )
    assert (c.subnet_len, str(c.subnet_min), str(c.subnet_max), c.enable_nftables) == (
        20,
        "10.5.16.0",
        "10.5.32.0",
        True,
    )
    assert c.subnet_capacity() == 2


@pytest.mark.parametrize(
    ("fields", "smin", "smax"),
    [
        # zero values mean "not set" in flannel (it compares against the zero value)
        ({"SubnetLen": 0}, "10.5.1.0", "10.5.255.0"),
        ({"SubnetMin": "0.0.0.0", "SubnetMax": "0.0.0.0"}, "10.5.1.0", "10.5.255.0"),
        ({"SubnetMin": "10.5.0.0"}, "10.5.0.0", "10.5.255.0"),  # first subnet allowed when asked
        ({"SubnetMin": "::ffff:10.5.7.0"}, "10.5.7.0", "10.5.255.0"),  # Go's ParseIP + To4
    ],
)
def test_ipv4_zero_and_explicit(fields: dict[str, Any], smin: str, smax: str) -> None:
    c = cfg(Network="10.5.0.0/16", **fields)
    assert (str(c.subnet_min), str(c.subnet_max)) == (smin, smax)


@pytest.mark.parametrize(
    ("network", "subnet_len", "smin", "smax"),
    [
        ("fd00:10::/56", 64, "fd00:10:0:1::", "fd00:10:0:ff::"),
        ("fd00::/62", 64, "fd00:0:0:1::", "fd00:0:0:3::"),
        ("fd00::/64", 66, "fd00::4000:0:0:0", "fd00::c000:0:0:0"),
        ("fd00::/124", 126, "fd00::4", "fd00::c"),
        ("fd00::1/48", 64, "fd00:0:0:1::", "fd00:0:0:ffff::"),  # host bits masked
    ],
)
def test_ipv6_defaults(network: str, subnet_len: int, smin: str, smax: str) -> None:
    c = cfg(Network="10.5.0.0/16", EnableIPv6=True, IPv6Network=network)
    assert c.ipv6_network == IPv6Network(network, strict=False)
    assert (c.ipv6_subnet_len, c.ipv6_subnet_min, c.ipv6_subnet_max) == (
        subnet_len,
        IPv6Address(smin),
        IPv6Address(smax),
    )


def test_ipv6_only_and_disabled_families() -> None:
    c = cfg(EnableIPv4=False, EnableIPv6=True, IPv6Network="fd00::/56", Network="10.5.0.0/30", SubnetLen=99)
    # a disabled family is not validated (flannel) and not exposed (pyflannel)
    assert c.network is None and c.subnet_len == 0 and c.ipv6_network == IPv6Network("fd00::/56")
    with pytest.raises(ConfigError, match="invalid CIDR address"):  # ... but it is still decoded, as in Go
        cfg(EnableIPv4=False, EnableIPv6=True, IPv6Network="fd00::/56", Network="garbage/99")
    c = cfg(Network="10.5.0.0/16", IPv6Network="fd00::/56", IPv6SubnetLen=200)  # IPv6 off: unchecked
    assert c.ipv6_network is None and c.ipv6_subnet_len == 0 and not c.enable_ipv6


# -- validation messages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "please define a correct Network parameter in the flannel config"),
        ({"Network": "0.0.0.0/0"}, "please define a correct Network parameter in the flannel config"),
        ({"Network": "10.0.0.0/0"}, "please define a correct Network parameter in the flannel config"),
        ({"Network": None}, "please define a correct Network parameter in the flannel config"),
        ({"Network": "10.5.0.0/29"}, "network is too small. Minimum useful network prefix is /28"),
        ({"Network": "10.5.0.0/32"}, "network is too small. Minimum useful network prefix is /28"),
        ({"Network": "10.5.0.0/16", "SubnetLen": 31}, "SubnetLen must be less than /31"),
        ({"Network": "10.5.0.0/16", "SubnetLen": 99}, "SubnetLen must be less than /31"),
        (
            {"Network": "10.5.0.0/16", "SubnetLen": 17},
            "network must be able to accommodate at least four subnets",
        ),
        (
            {"Network": "10.5.0.0/16", "SubnetLen": 8},
            "network must be able to accommodate at least four subnets",
        ),
        (
            {"Network": "10.5.0.0/29", "SubnetLen": 30},
            "network must be able to accommodate at least four subnets",
        ),
        ({"Network": "10.5.0.0/16", "SubnetMin": "10.6.0.0"}, "SubnetMin is not in the range of the Network"),
        (
            {"Network": "10.5.0.0/16", "SubnetMax": "10.4.255.0"},
            "SubnetMax is not in the range of the Network",
        ),
        (
            {"Network": "10.5.0.0/16", "SubnetMin": "10.5.1.1"},
            "SubnetMin is not on a SubnetLen boundary: 10.5.1.1",
        ),
        (
            {"Network": "10.5.0.0/16", "SubnetMax": "10.5.200.128"},
            "SubnetMax is not on a SubnetLen boundary: 10.5.200.128",
        ),
        # flannel checks both ranges before any alignment
        (
            {"Network": "10.5.0.0/16", "SubnetMin": "10.5.1.1", "SubnetMax": "10.9.0.0"},
            "SubnetMax is not in the range of the Network",
        ),
        (
            {"Network": "10.5.0.0/16", "EnableIPv6": True},
            "please define a correct IPv6Network parameter in the flannel config",
        ),
        (
            {"Network": "10.5.0.0/16", "EnableIPv6": True, "IPv6Network": "::/0"},
            "please define a correct IPv6Network parameter in the flannel config",
        ),
        (
            {"Network": "10.5.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00::/125"},
            "IPv6Network is too small. Minimum useful network prefix is /124",
        ),
        (
            {"Network": "10.5.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00::/56", "IPv6SubnetLen": 127},
            "SubnetLen must be less than /127",
        ),
        (
            {"Network": "10.5.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00::/56", "IPv6SubnetLen": 57},
            "network must be able to accommodate at least four subnets",
        ),
        (
            {
                "Network": "10.5.0.0/16",
                "EnableIPv6": True,
                "IPv6Network": "fd00::/56",
                "IPv6SubnetMin": "fd01::",
            },
            "IPv6SubnetMin is not in the range of the IPv6Network",
        ),
        (
            {
                "Network": "10.5.0.0/16",
                "EnableIPv6": True,
                "IPv6Network": "fd00::/56",
                "IPv6SubnetMax": "fc00::",
            },
            "IPv6SubnetMax is not in the range of the IPv6Network",
        ),
        (
            {
                "Network": "10.5.0.0/16",
                "EnableIPv6": True,
                "IPv6Network": "fd00::/56",
                "IPv6SubnetMin": "fd00::1",
            },
            "IPv6SubnetMin is not on a SubnetLen boundary: fd00::1",
        ),
        (
            {
                "Network": "10.5.0.0/16",
                "EnableIPv6": True,
                "IPv6Network": "fd00::/56",
                "IPv6SubnetMax": "fd00:0:0:5::8",
            },
            "IPv6SubnetMax is not on a SubnetLen boundary: fd00:0:0:5::8",
        ),
        # IPv4 problems are reported before IPv6 ones
        (
            {"Network": "10.5.0.0/29", "EnableIPv6": True},
            "network is too small. Minimum useful network prefix is /28",
        ),
    ],
)
def test_validation_messages(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        cfg(**fields)
    assert str(ei.value) == message


# -- decoding: addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"Network": "10.5.0.0"}, "invalid CIDR address: 10.5.0.0"),
        ({"Network": "10.5.0/16"}, "invalid CIDR address: 10.5.0/16"),
        ({"Network": "10.5.0.0/33"}, "invalid CIDR address: 10.5.0.0/33"),
        ({"Network": "10.5.0.0/"}, "invalid CIDR address: 10.5.0.0/"),
        ({"Network": "10.5.0.0/255.255.0.0"}, "invalid CIDR address: 10.5.0.0/255.255.0.0"),
        ({"Network": "010.5.0.0/16"}, "invalid CIDR address: 010.5.0.0/16"),
        ({"Network": ""}, "invalid CIDR address: "),
        ({"Network": 10}, "invalid CIDR address: 10"),
        ({"Network": True}, "invalid CIDR address: true"),
        ({"Network": "fd00::/56"}, "invalid IPv4 CIDR format"),
        ({"Network": "10.5.0.0/16", "SubnetMin": "10.5.1"}, "invalid IP address format"),
        ({"Network": "10.5.0.0/16", "SubnetMin": 5}, "invalid IP address format"),
        ({"Network": "10.5.0.0/16", "SubnetMax": "fd00::1"}, "invalid IPv4 address format"),
        ({"Network": "10.5.0.0/16", "IPv6Network": "fd00::/129"}, "invalid CIDR address: fd00::/129"),
        ({"Network": "10.5.0.0/16", "IPv6Network": "10.0.0.0/8"}, "invalid IPv6 CIDR format"),
        ({"Network": "10.5.0.0/16", "IPv6SubnetMin": "nope"}, "invalid IP address format"),
        ({"Network": "10.5.0.0/16", "IPv6SubnetMax": "10.0.0.1"}, "invalid IPv6 address format"),
    ],
)
def test_address_decoding_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        cfg(**fields)
    assert str(ei.value) == message


def test_prefix_with_leading_zero_is_accepted_like_go() -> None:
    assert cfg(Network="10.5.0.0/016").network == IPv4Network("10.5.0.0/16")


def test_raw_number_text_in_cidr_error() -> None:
    with pytest.raises(ConfigError, match=r"^invalid CIDR address: 1e5$"):
        parse_config('{"Network": 1e5}')


# -- decoding: keys, types, nulls --------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"network": "10.5.0.0/16", "subnetlen": 25, "BACKEND": {"TYPE": "VXLAN"}}',
        '{"NETWORK": "10.5.0.0/16", "SubnetLEN": 25, "backend": {"type": "vxlan"}}',
        # Go's folding: U+017F (long s) is an "s", U+212A (Kelvin) a "k"
        '{"Network": "10.5.0.0/16", "\u017fubnetLen": 25, "Bac\u212aend": {"Type": "vxlan"}}',
    ],
)
def test_keys_case_insensitive(text: str) -> None:
    c = parse_config(text)
    assert (c.network, c.subnet_len, c.backend_type) == (IPv4Network("10.5.0.0/16"), 25, "vxlan")


def test_duplicate_keys_last_wins_in_document_order() -> None:
    c = parse_config('{"Network": "10.5.0.0/16", "subnetlen": 20, "SubnetLen": 22, "SUBNETLEN": 25}')
    assert c.subnet_len == 25
    c = parse_config('{"network": "10.6.0.0/16", "Network": "10.5.0.0/16"}')
    assert c.network == IPv4Network("10.5.0.0/16")


def test_unknown_keys_ignored_and_backend_type_key_ignored() -> None:
    c = parse_config('{"Network": "10.5.0.0/16", "Foo": [1, {"x": null}], "BackendType": "vxlan"}')
    assert c.backend_type == "udp"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"SubnetLen": "24"},
            "json: cannot unmarshal string into Go struct field Config.SubnetLen of type uint",
        ),
        (
            {"SubnetLen": -1},
            "json: cannot unmarshal number -1 into Go struct field Config.SubnetLen of type uint",
        ),
        (
            {"SubnetLen": 24.5},
            "json: cannot unmarshal number 24.5 into Go struct field Config.SubnetLen of type uint",
        ),
        (
            {"SubnetLen": True},
            "json: cannot unmarshal bool into Go struct field Config.SubnetLen of type uint",
        ),
        (
            {"SubnetLen": [24]},
            "json: cannot unmarshal array into Go struct field Config.SubnetLen of type uint",
        ),
        (
            {"IPv6SubnetLen": {}},
            "json: cannot unmarshal object into Go struct field Config.IPv6SubnetLen of type uint",
        ),
        (
            {"SubnetLen": 2**64},
            "json: cannot unmarshal number 18446744073709551616 into Go struct field Config.SubnetLen of type uint",
        ),
        (
            {"EnableIPv6": "true"},
            "json: cannot unmarshal string into Go struct field Config.EnableIPv6 of type bool",
        ),
        (
            {"EnableIPv4": 1},
            "json: cannot unmarshal number into Go struct field Config.EnableIPv4 of type bool",
        ),
        (
            {"EnableNFTables": []},
            "json: cannot unmarshal array into Go struct field Config.EnableNFTables of type bool",
        ),
    ],
)
def test_wrong_types(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        cfg(Network="10.5.0.0/16", **fields)
    assert str(ei.value) == message


def test_exponent_literal_is_reported_verbatim() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config('{"Network": "10.5.0.0/16", "SubnetLen": 2.4e1}')
    assert (
        str(ei.value)
        == "json: cannot unmarshal number 2.4e1 into Go struct field Config.SubnetLen of type uint"
    )


def test_first_type_error_wins_but_address_error_aborts() -> None:
    # Go keeps decoding after a type error and reports the first one ...
    with pytest.raises(ConfigError, match="Config.EnableIPv6 of type bool"):
        parse_config('{"EnableIPv6": 1, "SubnetLen": "x", "Network": "10.5.0.0/16"}')
    # ... but an UnmarshalJSON error (addresses) is returned at once, even after a type error.
    with pytest.raises(ConfigError, match="^invalid CIDR address: x$"):
        parse_config('{"EnableIPv6": 1, "Network": "x"}')
    # a duplicate that fixes the value does not clear the saved error (Go)
    with pytest.raises(ConfigError, match="Config.SubnetLen"):
        parse_config('{"Network": "10.5.0.0/16", "SubnetLen": "x", "SubnetLen": 24}')


def test_null_leaves_defaults() -> None:
    c = parse_config(
        '{"Network": "10.5.0.0/16", "SubnetLen": null, "SubnetMin": null, "SubnetMax": null,'
        ' "EnableIPv4": null, "EnableIPv6": null, "EnableNFTables": null, "Backend": null,'
        ' "IPv6Network": null, "IPv6SubnetMin": null}'
    )
    assert (c.subnet_len, str(c.subnet_min), c.enable_ipv4, c.enable_ipv6, c.backend_type) == (
        24,
        "10.5.1.0",
        True,
        False,
        "udp",
    )


def test_null_after_value_keeps_value() -> None:
    # Go: null does not touch a non-pointer field, so an earlier duplicate's value stays
    assert parse_config('{"Network": "10.5.0.0/16", "SubnetLen": 25, "subnetlen": null}').subnet_len == 25


# -- Backend -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "btype"),
    [
        ({"Type": "vxlan"}, "vxlan"),
        ({"Type": "VXLAN"}, "vxlan"),  # backends are looked up lower-cased
        ({"type": "host-gw"}, "host-gw"),
        ({}, ""),  # present without Type: unknown backend "" (flannel exits with that)
        ({"Type": None}, ""),
    ],
)
def test_backend_type(backend: dict[str, Any], btype: str) -> None:
    c = cfg(Network="10.5.0.0/16", Backend=backend)
    assert c.backend_type == btype
    assert c.backend == backend


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ("vxlan", "json: cannot unmarshal string into Go value of type struct { Type string }"),
        ([{"Type": "vxlan"}], "json: cannot unmarshal array into Go value of type struct { Type string }"),
        (5, "json: cannot unmarshal number into Go value of type struct { Type string }"),
        (True, "json: cannot unmarshal bool into Go value of type struct { Type string }"),
        ({"Type": 5}, "json: cannot unmarshal number into Go struct field .Type of type string"),
        ({"Type": ["vxlan"]}, "json: cannot unmarshal array into Go struct field .Type of type string"),
    ],
)
def test_backend_errors(backend: Any, message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        cfg(Network="10.5.0.0/16", Backend=backend)
    assert str(ei.value) == "error decoding Backend property of config: " + message


def test_backend_options_are_not_validated_by_parse_config() -> None:
    c = parse_config('{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "VNI": "x", "Extra": [1]}}')
    assert c.backend == {"Type": "vxlan", "VNI": "x", "Extra": [1]}


@pytest.mark.parametrize(
    ("backend", "name", "default", "type_", "expected"),
    [
        ({"VNI": 4}, "VNI", 1, int, 4),
        ({"vni": 4}, "VNI", 1, int, 4),
        ({"VNI": 4, "vni": 7}, "VNI", 1, int, 7),  # last wins
        ({}, "VNI", 1, int, 1),
        ({"VNI": None}, "VNI", 1, int, 1),
        ({"directrouting": True}, "DirectRouting", False, bool, True),
        ({"MacPrefix": "0e:2a"}, "MacPrefix", "", str, "0e:2a"),
        ({"Ratio": 2}, "Ratio", 0.0, float, 2.0),
    ],
)
def test_backend_option(backend: dict[str, Any], name: str, default: Any, type_: type, expected: Any) -> None:
    value = backend_option(backend, name, default, type_)
    assert value == expected and type(value) is type(expected)


def test_backend_option_through_parse_config_keeps_duplicate_order() -> None:
    c = parse_config('{"Network": "10.5.0.0/16", "Backend": {"VNI": 1, "vni": 2, "VNI": 3}}')
    assert backend_option(c.backend, "VNI", 0, int) == 3


@pytest.mark.parametrize(
    ("text", "name", "type_", "message"),
    [
        ('{"VNI": "4"}', "VNI", int, "json: cannot unmarshal string into Go struct field .VNI of type int"),
        (
            '{"VNI": 4.0}',
            "VNI",
            int,
            "json: cannot unmarshal number 4.0 into Go struct field .VNI of type int",
        ),
        (
            '{"VNI": 1e3}',
            "VNI",
            int,
            "json: cannot unmarshal number 1e3 into Go struct field .VNI of type int",
        ),
        ('{"VNI": true}', "VNI", int, "json: cannot unmarshal bool into Go struct field .VNI of type int"),
        ('{"GBP": 1}', "GBP", bool, "json: cannot unmarshal number into Go struct field .GBP of type bool"),
        (
            '{"GBP": "yes"}',
            "GBP",
            bool,
            "json: cannot unmarshal string into Go struct field .GBP of type bool",
        ),
        ('{"Cmd": {}}', "Cmd", str, "json: cannot unmarshal object into Go struct field .Cmd of type string"),
        ('{"Cmd": 5}', "Cmd", str, "json: cannot unmarshal number into Go struct field .Cmd of type string"),
    ],
)
def test_backend_option_wrong_type(text: str, name: str, type_: type, message: str) -> None:
    c = parse_config('{"Network": "10.5.0.0/16", "Backend": ' + text + "}")
    with pytest.raises(ConfigError) as ei:
        backend_option(c.backend, name, type_(), type_)
    assert str(ei.value) == message


# -- syntax errors in Go's words --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "unexpected end of JSON input"),
        ("   ", "unexpected end of JSON input"),
        ("{", "unexpected end of JSON input"),
        ('{"Network": "10.5', "unexpected end of JSON input"),
        ("nul", "unexpected end of JSON input"),
        ("x", "invalid character 'x' looking for beginning of value"),
        ("{'Network': 1}", "invalid character '\\'' looking for beginning of object key string"),
        ('{"a": 1,}', "invalid character '}' looking for beginning of object key string"),
        ('{"a" 1}', "invalid character '1' after object key"),
        ('{"a": 1 "b": 2}', "invalid character '\"' after object key:value pair"),
        ('{"a": [1 2]}', "invalid character '2' after array element"),
        ("{} {}", "invalid character '{' after top-level value"),
        ('{"a": tru}', "invalid character '}' in literal true (expecting 'e')"),
        ('{"a": -x}', "invalid character 'x' in numeric literal"),
        ('{"a": "\\q"}', "invalid character 'q' in string escape code"),
        ('{"a": "\n"}', "invalid character '\\n' in string literal"),
        ('{"a": NaN}', "invalid character 'N' looking for beginning of value"),
        ("\ufeff{}", "invalid character 'ï' looking for beginning of value"),
        ("[]", "json: cannot unmarshal array into Go value of type subnet.Config"),
        ("null", "please define a correct Network parameter in the flannel config"),
        ('"x"', "json: cannot unmarshal string into Go value of type subnet.Config"),
    ],
)
def test_broken_json(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config(text)
    assert str(ei.value) == message
    assert "\n" not in str(ei.value)


def test_bytes_input_and_invalid_utf8() -> None:
    assert parse_config(b'{"Network": "10.5.0.0/16", "x": "\xff"}').network == IPv4Network("10.5.0.0/16")


# -- helpers ------------------------------------------------------------------------------------


def test_contains_subnet() -> None:
    c = cfg(Network="10.5.0.0/16", SubnetMin="10.5.10.0", SubnetMax="10.5.20.0")
    assert c.contains_subnet(IPv4Network("10.5.10.0/24"))
    assert c.contains_subnet(IPv4Network("10.5.20.0/24"))
    assert not c.contains_subnet(IPv4Network("10.5.9.0/24"))
    assert not c.contains_subnet(IPv4Network("10.5.21.0/24"))
    assert not c.contains_subnet(IPv4Network("10.5.10.0/25"))  # wrong size
    assert c.contains_ipv6_subnet(None)
    assert not c.contains_ipv6_subnet(IPv6Network("fd00::/64"))  # IPv6 off: must be absent


def test_contains_ipv6_subnet() -> None:
    c = cfg(Network="10.5.0.0/16", EnableIPv6=True, IPv6Network="fd00::/56")
    assert c.contains_ipv6_subnet(IPv6Network("fd00:0:0:1::/64"))
    assert not c.contains_ipv6_subnet(IPv6Network("fd00::/64"))  # the skipped first subnet
    assert not c.contains_ipv6_subnet(None)
    assert not c.contains_ipv6_subnet(IPv6Network("fd00:0:0:1::/65"))


@given(prefix=st.integers(min_value=1, max_value=28), base=st.integers(min_value=1, max_value=2**32 - 1))
def test_property_defaults_are_consistent(prefix: int, base: int) -> None:
    net = IPv4Network((base, prefix), strict=False)
    c = cfg(Network=f"{net.network_address}/{prefix}")
    assert c.network == net
    size = 1 << (32 - c.subnet_len)
    assert c.subnet_len == (24 if prefix <= 22 else prefix + 2)
    assert c.subnet_min is not None and c.subnet_max is not None
    assert int(c.subnet_min) == int(net.network_address) + size
    assert int(c.subnet_max) + size == int(net.broadcast_address) + 1
    assert c.subnet_capacity() == net.num_addresses // size - 1
