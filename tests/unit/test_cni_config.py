"""The CNI plugin's pure parts: subnet.env parsing, delegate config building, skel checks, error JSON.

Expected delegate configs follow flannel-io/cni-plugin (flannel_linux.go ``doCmdAdd`` and
``getDelegateIPAM``) plus pyflannel's one addition, ``gw`` on the generated routes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pyflannel.cni import plugin
from pyflannel.cni.plugin import CNIError

SUBNET_ENV = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"


def env(text: str = SUBNET_ENV) -> plugin.SubnetEnv:
    return plugin.parse_subnet_env(text, "/run/flannel/subnet.env")


def test_subnet_env_masks_subnet_and_dedups_networks() -> None:
    se = env("FLANNEL_NETWORK=10.244.0.0/16,10.244.7.7/16,10.9.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\r\n"
             "FLANNEL_IPV6_NETWORK=fd00:10::/56\nFLANNEL_IPV6_SUBNET=fd00:10:0:5::1/64\n"
             "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
    assert se.networks == ["10.244.0.0/16", "10.9.0.0/16"]
    assert se.subnet == "10.244.1.0/24"
    assert (se.ipv6_networks, se.ipv6_subnet) == (["fd00:10::/56"], "fd00:10:0:5::/64")
    assert (se.mtu, se.ipmasq) == (1450, False)


@pytest.mark.parametrize(("text", "message"), [
    ("FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
     "/run/flannel/subnet.env is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK"),
    ("", ("/run/flannel/subnet.env is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, "
         "FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ")),
    (SUBNET_ENV.replace("10.244.1.1/24", "10.244.1.01/24"), "invalid CIDR address: 10.244.1.01/24"),
    (SUBNET_ENV.replace("1450", "x"), 'strconv.ParseUint: parsing "x": invalid syntax'),
])
def test_subnet_env_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        env(text)
    assert str(exc.value) == message


def test_load_subnet_env_wraps_like_flannel(tmp_path: Any) -> None:
    with pytest.raises(CNIError) as exc:
        plugin.load_subnet_env(str(tmp_path / "nope.env"))
    assert exc.value.code == 999
    assert exc.value.msg == (f"failed to load flannel 'subnet.env' file: open {tmp_path}/nope.env: no such "
                             "file or directory. Check the flannel pod log for this node.")


def test_default_delegate() -> None:
    conf = {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
            "delegate": {"hairpinMode": True, "isDefaultGateway": True}}
    assert plugin.build_delegate(conf, env()) == {
        "cniVersion": "1.0.0", "name": "cbr0", "type": "bridge", "hairpinMode": True,
        "isDefaultGateway": True, "ipMasq": False, "mtu": 1450, "isGateway": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                 "routes": [{"dst": "10.244.0.0/16", "gw": "10.244.1.1"}]},
    }
    assert conf["delegate"] == {"hairpinMode": True, "isDefaultGateway": True}  # input untouched


def test_delegate_serialised_like_go() -> None:
    conf = {"cniVersion": "0.3.1", "name": "cbr0", "type": "flannel"}
    assert plugin.go_json(plugin.build_delegate(conf, env(SUBNET_ENV.replace("=true", "=false")))) == (
        '{"cniVersion":"0.3.1","ipMasq":true,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],'
        '"routes":[{"dst":"10.244.0.0/16","gw":"10.244.1.1"}],"type":"host-local"},"isGateway":true,'
        '"mtu":1450,"name":"cbr0","type":"bridge"}')


def test_delegate_keeps_given_values_and_top_level_ipam() -> None:
    conf = {"name": "n", "runtimeConfig": {"portMappings": []},
            "ipam": {"dataDir": "/tmp/x", "routes": [{"dst": "192.168.0.0/16"}]},
            "delegate": {"type": "ipvlan", "ipMasq": True, "mtu": 1400, "master": "eth0"}}
    delegate = plugin.build_delegate(conf, env())
    assert delegate == {
        "name": "n", "type": "ipvlan", "ipMasq": True, "mtu": 1400, "master": "eth0",
        "runtimeConfig": {"portMappings": []},
        "ipam": {"type": "host-local", "dataDir": "/tmp/x", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                 "routes": [{"dst": "192.168.0.0/16"}, {"dst": "10.244.0.0/16", "gw": "10.244.1.1"}]},
    }
    assert "cniVersion" not in delegate and "isGateway" not in delegate


def test_dual_stack_routes() -> None:
    se = env(SUBNET_ENV + "FLANNEL_IPV6_NETWORK=fd00:10::/56\nFLANNEL_IPV6_SUBNET=fd00:10:0:5::1/64\n")
    ipam = plugin.build_ipam(None, se)
    assert ipam["ranges"] == [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:0:5::/64"}]]
    assert ipam["routes"] == [{"dst": "10.244.0.0/16", "gw": "10.244.1.1"},
                              {"dst": "fd00:10::/56", "gw": "fd00:10:0:5::1"}]


@pytest.mark.parametrize(("delegate", "message"), [
    ({"type": 5}, "'delegate' dictionary, if present, must have (string) 'type' field"),
    ({"name": "x"}, "'delegate' dictionary must not have 'name' field, it'll be set by flannel"),
    ({"ipam": {}}, "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel"),
])
def test_bad_delegate(delegate: dict[str, Any], message: str) -> None:
    with pytest.raises(CNIError) as exc:
        plugin.build_delegate({"name": "n", "delegate": delegate}, env())
    assert (exc.value.code, exc.value.msg) == (999, message)


def test_error_json_shape() -> None:
    doc = json.loads(plugin.error_json("0.4.0", CNIError(7, "missing network name")))
    assert doc == {"cniVersion": "0.4.0", "code": 7, "msg": "missing network name"}
    doc = json.loads(plugin.error_json("1.0.0", CNIError(1, "incompatible CNI versions", "d")))
    assert doc == {"cniVersion": "1.0.0", "code": 1, "msg": "incompatible CNI versions", "details": "d"}


@pytest.mark.parametrize(("environ", "code", "msg"), [
    ({"CNI_COMMAND": "ADD"}, 4, "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"),
    ({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0"}, 4,
     "required env variables [CNI_PATH] missing"),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "-bad", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0", "CNI_PATH": "/"},
     4, "invalid characters in containerID"),
    ({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "averyveryverylongname", "CNI_PATH": "/"},
     4, "interface name is too long"),
])
def test_environment_checks(environ: dict[str, str], code: int, msg: str) -> None:
    with pytest.raises(CNIError) as exc:
        plugin.check_environment(environ)
    assert (exc.value.code, exc.value.msg) == (code, msg)


ENV_OK = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/p",
          "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}


@pytest.mark.parametrize(("command", "config", "code", "msg", "details"), [
    ("ADD", b"{", 6, None, ""),
    ("ADD", b'{"cniVersion":"1.0.0"}', 7, "missing network name", ""),
    ("ADD", b'{"name":"a b"}', 7, "invalid characters found in network name", "a b"),
    ("ADD", b'{"name":"n","cniVersion":"1.1.0"}', 1, "incompatible CNI versions",
     'config is "1.1.0", plugin supports ["0.1.0" "0.2.0" "0.3.0" "0.3.1" "0.4.0" "1.0.0"]'),
    ("CHECK", b'{"name":"n","cniVersion":"0.3.1"}', 1, "config version does not allow CHECK", ""),
    ("GC", b'{"name":"n","cniVersion":"1.0.0"}', 1, "config version does not allow GC", ""),
    ("FOO", b'{"name":"n"}', 4, "unknown CNI_COMMAND: FOO", ""),
    ("ADD", b'{"name":"n","subnetFile":"/nonexistent/subnet.env"}', 999,
     ("failed to load flannel 'subnet.env' file: open /nonexistent/subnet.env: no such file or directory. "
     "Check the flannel pod log for this node."), ""),
])
def test_dispatch_errors(command: str, config: bytes, code: int, msg: str | None, details: str) -> None:
    with pytest.raises(CNIError) as exc:
        plugin.dispatch({**ENV_OK, "CNI_COMMAND": command}, config)
    assert exc.value.code == code
    if msg is not None:
        assert (exc.value.msg, exc.value.details) == (msg, details)


def test_add_reports_missing_delegate_with_flannel_prefix(tmp_path: Any) -> None:
    (tmp_path / "subnet.env").write_text(SUBNET_ENV)
    conf = {"name": "n", "cniVersion": "1.0.0", "subnetFile": str(tmp_path / "subnet.env"),
            "dataDir": str(tmp_path / "data")}
    with pytest.raises(CNIError) as exc:
        plugin.dispatch({**ENV_OK, "CNI_PATH": f"{tmp_path}:/nonexistent"}, json.dumps(conf).encode())
    assert exc.value.msg == f'failed to delegate add: failed to find plugin "bridge" in path [{tmp_path} /nonexistent]'
    saved = (tmp_path / "data" / "c1")
    assert saved.stat().st_mode & 0o777 == 0o600  # saved before the delegate runs, as flannel does
    assert json.loads(saved.read_text())["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]


def test_del_without_saved_config_succeeds(tmp_path: Any) -> None:
    conf = {"name": "n", "cniVersion": "1.0.0", "dataDir": str(tmp_path)}
    assert plugin.dispatch({**ENV_OK, "CNI_COMMAND": "DEL"}, json.dumps(conf).encode()) == b""


def test_version_output() -> None:
    assert plugin.dispatch({"CNI_COMMAND": "VERSION"}, b"") == (
        b'{"cniVersion":"1.0.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0"]}\n')
