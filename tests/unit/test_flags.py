"""Go ``flag`` semantics and the FLANNELD_* environment overlay of pyflannel.cli.flags."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import pytest

from pyflannel.cli.flags import (
    HelpRequested,
    UsageError,
    env_var_name,
    parse_args,
    parse_args_with_warnings,
    parse_go_int,
    usage,
    validate,
)
from pyflannel.settings import Settings


def parse(*argv: str, **env: str) -> Settings:
    settings, _ = parse_args_with_warnings(list(argv), env)
    return settings


def test_defaults() -> None:
    s = parse()
    assert s.etcd.endpoints == ("http://127.0.0.1:4001", "http://127.0.0.1:2379")
    assert s.etcd.prefix == "/coreos.com/network"
    assert (s.etcd.cafile, s.etcd.certfile, s.etcd.keyfile) == ("", "", "")
    assert (s.etcd.username, s.etcd.password) == ("", "")
    assert s.interface.iface == () and s.interface.iface_regex == ()
    assert s.interface.iface_can_reach == s.interface.public_ip == s.interface.public_ipv6 == ""
    assert s.subnet.subnet_file == "/run/flannel/subnet.env"
    assert s.subnet.renew_margin_minutes == 60
    assert s.subnet.lease_ttl_seconds == 86400
    assert s.traffic.ip_masq is False and s.traffic.ip_masq_fully_random_disable is False
    assert s.traffic.iptables_resync == 5
    assert s.traffic.iptables_forward_rules is True
    assert s.traffic.ip_blackhole_route is False
    assert s.health.healthz_ip == "0.0.0.0" and s.health.healthz_port == 0
    assert s.kube.kube_subnet_mgr is False
    assert s.kube.kube_api_url == s.kube.kubeconfig_file == ""
    assert s.kube.kube_annotation_prefix == "flannel.alpha.coreos.com"
    assert s.kube.net_config_path == "/etc/kube-flannel/net-conf.json"
    assert s.kube.set_node_network_unavailable is True
    assert (s.log.verbosity, s.log.vmodule, s.log.log_backtrace_at) == (0, "", "")
    assert s.version is False
    validate(s)


Getter = Callable[[Settings], Any]

SYNTAX_CASES: list[tuple[list[str], Getter, Any]] = [
    (["-etcd-prefix=/a"], lambda s: s.etcd.prefix, "/a"),
    (["--etcd-prefix=/a"], lambda s: s.etcd.prefix, "/a"),
    (["-etcd-prefix", "/a"], lambda s: s.etcd.prefix, "/a"),
    (["--etcd-prefix", "/a"], lambda s: s.etcd.prefix, "/a"),
    (["--etcd-prefix="], lambda s: s.etcd.prefix, ""),
    (["--etcd-prefix", "-x"], lambda s: s.etcd.prefix, "-x"),  # a value may look like a flag
    (["--etcd-prefix=a=b"], lambda s: s.etcd.prefix, "a=b"),
    (["--etcd-prefix=/a", "--etcd-prefix=/b"], lambda s: s.etcd.prefix, "/b"),  # last wins
    (["--etcd-endpoints=http://a:1,http://b:2"], lambda s: s.etcd.endpoints, ("http://a:1", "http://b:2")),
    (["--etcd-endpoints=http://a:1"], lambda s: s.etcd.endpoints, ("http://a:1",)),
    (["--etcd-password", "pw"], lambda s: s.etcd.password, "pw"),
    (["--healthz-port=8081"], lambda s: s.health.healthz_port, 8081),
    (["--healthz-port", "8081"], lambda s: s.health.healthz_port, 8081),
    (["--healthz-port=0x10"], lambda s: s.health.healthz_port, 16),
    (["--healthz-port=010"], lambda s: s.health.healthz_port, 8),
    (["--healthz-port=1_000"], lambda s: s.health.healthz_port, 1000),
    (["--iptables-resync=-1"], lambda s: s.traffic.iptables_resync, -1),
    (["--subnet-lease-renew-margin=30"], lambda s: s.subnet.renew_margin_minutes, 30),
    (["--subnet-lease-ttl=20"], lambda s: s.subnet.lease_ttl_seconds, 20),
    (["--iface=eth0"], lambda s: s.interface.iface, ("eth0",)),
    (
        ["--iface=eth0", "-iface", "10.0.0.1", "--iface=eth1"],
        lambda s: s.interface.iface,
        ("eth0", "10.0.0.1", "eth1"),
    ),
    (
        ["--iface-regex=^eth", "--iface-regex", "10\\..*"],
        lambda s: s.interface.iface_regex,
        ("^eth", "10\\..*"),
    ),
    (["--iface=a,b"], lambda s: s.interface.iface, ("a,b",)),  # no splitting
    (["-v=3"], lambda s: s.log.verbosity, 3),
    (["--v", "2"], lambda s: s.log.verbosity, 2),
    (["-vmodule=manager=2,etcd*=1"], lambda s: s.log.vmodule, "manager=2,etcd*=1"),
    (["-log_backtrace_at=main.go:12"], lambda s: s.log.log_backtrace_at, "main.go:12"),
    (["--version"], lambda s: s.version, True),
    (
        ["--kube-subnet-mgr", "--kubeconfig-file=/k"],
        lambda s: (s.kube.kube_subnet_mgr, s.kube.kubeconfig_file),
        (True, "/k"),
    ),
    # parsing stops at "--" and at the first non-flag argument
    (["--", "--ip-masq"], lambda s: s.traffic.ip_masq, False),
    (["extra", "--ip-masq"], lambda s: s.traffic.ip_masq, False),
    (["-", "--ip-masq"], lambda s: s.traffic.ip_masq, False),
    (["--ip-masq", "--", "x"], lambda s: s.traffic.ip_masq, True),
]


@pytest.mark.parametrize(("argv", "get", "want"), SYNTAX_CASES)
def test_syntax(argv: list[str], get: Getter, want: Any) -> None:
    assert get(parse(*argv)) == want


BOOL_CASES: list[tuple[list[str], bool]] = [
    (["--ip-masq"], True),
    (["-ip-masq"], True),
    (["--ip-masq=true"], True),
    (["--ip-masq=TRUE"], True),
    (["--ip-masq=True"], True),
    (["--ip-masq=t"], True),
    (["--ip-masq=T"], True),
    (["--ip-masq=1"], True),
    (["--ip-masq=false"], False),
    (["--ip-masq=FALSE"], False),
    (["--ip-masq=False"], False),
    (["--ip-masq=f"], False),
    (["--ip-masq=F"], False),
    (["--ip-masq=0"], False),
    (["--ip-masq", "--ip-masq=false"], False),
    # a bool flag never consumes the next argument: "false" is a positional that stops parsing
    (["--ip-masq", "false"], True),
]


@pytest.mark.parametrize(("argv", "want"), BOOL_CASES)
def test_bool(argv: list[str], want: bool) -> None:
    assert parse(*argv).traffic.ip_masq is want


def test_bool_default_true_can_be_disabled() -> None:
    s = parse("--iptables-forward-rules=false", "-set-node-network-unavailable=0")
    assert s.traffic.iptables_forward_rules is False
    assert s.kube.set_node_network_unavailable is False


def test_bool_does_not_consume_next_flag() -> None:
    s = parse("--ip-masq", "--iface", "eth0")
    assert s.traffic.ip_masq is True and s.interface.iface == ("eth0",)


def test_positional_arguments_are_reported() -> None:
    s, warnings = parse_args_with_warnings(["--ip-masq", "false", "--iface=x"], {})
    assert s.interface.iface == ()
    assert warnings == ['ignoring non-flag command-line arguments: "false" "--iface=x"']


ERROR_CASES: list[tuple[list[str], str]] = [
    (["--foo"], "flag provided but not defined: -foo"),
    (["-foo=bar"], "flag provided but not defined: -foo"),
    (["--ip_masq"], "flag provided but not defined: -ip_masq"),
    (["--iface"], "flag needs an argument: -iface"),
    (["--ip-masq", "-etcd-prefix"], "flag needs an argument: -etcd-prefix"),
    (["--healthz-port=x"], 'invalid value "x" for flag -healthz-port: parse error'),
    (["--healthz-port", ""], 'invalid value "" for flag -healthz-port: parse error'),
    (["--healthz-port=1_"], 'invalid value "1_" for flag -healthz-port: parse error'),
    (["--healthz-port=08"], 'invalid value "08" for flag -healthz-port: parse error'),
    (["--healthz-port=1.5"], 'invalid value "1.5" for flag -healthz-port: parse error'),
    (
        ["--healthz-port=99999999999999999999"],
        'invalid value "99999999999999999999" for flag -healthz-port: value out of range',
    ),
    (["--ip-masq=yes"], 'invalid boolean value "yes" for -ip-masq: parse error'),
    (["--ip-masq="], 'invalid boolean value "" for -ip-masq: parse error'),
    (["--ip-masq=tRuE"], 'invalid boolean value "tRuE" for -ip-masq: parse error'),
    (["-v=x"], 'invalid value "x" for flag -v: strconv.ParseInt: parsing "x": invalid syntax'),
    (["-v=0x1"], 'invalid value "0x1" for flag -v: strconv.ParseInt: parsing "0x1": invalid syntax'),
    (
        ["-vmodule=foo"],
        'invalid value "foo" for flag -vmodule: syntax error: expect comma-separated list of filename=N',
    ),
    (["-vmodule=foo=-1"], 'invalid value "foo=-1" for flag -vmodule: negative value for vmodule level'),
    (
        ["-log_backtrace_at=main:1"],
        'invalid value "main:1" for flag -log_backtrace_at: syntax error: expect file.go:234',
    ),
    (
        ["-log_backtrace_at=main.go:0"],
        'invalid value "main.go:0" for flag -log_backtrace_at: negative or zero value for level',
    ),
    (["---ip-masq"], "bad flag syntax: ---ip-masq"),
    (["-=x"], "bad flag syntax: -=x"),
    (["--=x"], "bad flag syntax: --=x"),
    (["--healthz-port=\n"], 'invalid value "\\n" for flag -healthz-port: parse error'),
]


@pytest.mark.parametrize(("argv", "message"), ERROR_CASES)
def test_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse(*argv)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    "argv", [["-h"], ["--h"], ["-help"], ["--help"], ["--help=false"], ["--ip-masq", "-h"]]
)
def test_help(argv: list[str]) -> None:
    with pytest.raises(HelpRequested):
        parse(*argv)


def test_help_after_positional_is_ignored() -> None:
    parse("x", "--help")


def test_parse_go_int() -> None:
    assert parse_go_int("0b101") == 5
    assert parse_go_int("0o17") == 15
    assert parse_go_int("-0x_1F") == -31
    assert parse_go_int("+7") == 7
    assert parse_go_int("9223372036854775807") == 2**63 - 1
    assert parse_go_int("-9223372036854775808") == -(2**63)
    for bad in ("", "+", "-", "0x", "1__0", "_1", "0b2", "٣"):
        with pytest.raises(ValueError):
            parse_go_int(bad)
    with pytest.raises(ValueError, match="out of range"):
        parse_go_int("9223372036854775808")


# ----------------------------------------------------------------------------- environment


def test_env_var_names() -> None:
    assert env_var_name("etcd-endpoints") == "FLANNELD_ETCD_ENDPOINTS"
    assert env_var_name("ip-masq") == "FLANNELD_IP_MASQ"
    assert env_var_name("v") == "FLANNELD_V"
    assert env_var_name("log_backtrace_at") == "FLANNELD_LOG_BACKTRACE_AT"
    assert env_var_name("a.b-c") == "FLANNELD_A_B_C"


ENV_CASES: list[tuple[list[str], dict[str, str], Getter, Any]] = [
    ([], {"FLANNELD_ETCD_ENDPOINTS": "http://e:2379"}, lambda s: s.etcd.endpoints, ("http://e:2379",)),
    ([], {"FLANNELD_ETCD_PREFIX": "/p"}, lambda s: s.etcd.prefix, "/p"),
    ([], {"FLANNELD_IFACE": "eth1"}, lambda s: s.interface.iface, ("eth1",)),
    ([], {"FLANNELD_IFACE": "eth1,eth2"}, lambda s: s.interface.iface, ("eth1,eth2",)),  # one value
    ([], {"FLANNELD_IFACE_REGEX": "^e"}, lambda s: s.interface.iface_regex, ("^e",)),
    ([], {"FLANNELD_IP_MASQ": "true"}, lambda s: s.traffic.ip_masq, True),
    ([], {"FLANNELD_IP_MASQ": "1"}, lambda s: s.traffic.ip_masq, True),
    ([], {"FLANNELD_IPTABLES_FORWARD_RULES": "false"}, lambda s: s.traffic.iptables_forward_rules, False),
    ([], {"FLANNELD_HEALTHZ_PORT": "8081"}, lambda s: s.health.healthz_port, 8081),
    ([], {"FLANNELD_V": "4"}, lambda s: s.log.verbosity, 4),
    ([], {"FLANNELD_SUBNET_LEASE_TTL": "30"}, lambda s: s.subnet.lease_ttl_seconds, 30),
    ([], {"FLANNELD_ETCD_PASSWORD": "secret"}, lambda s: s.etcd.password, "secret"),
    # the command line wins over the environment
    (["--etcd-prefix=/cli"], {"FLANNELD_ETCD_PREFIX": "/env"}, lambda s: s.etcd.prefix, "/cli"),
    (["--iface=cli"], {"FLANNELD_IFACE": "env"}, lambda s: s.interface.iface, ("cli",)),
    (["--ip-masq=false"], {"FLANNELD_IP_MASQ": "true"}, lambda s: s.traffic.ip_masq, False),
    # even when the command-line value equals the default
    (
        ["--etcd-prefix=/coreos.com/network"],
        {"FLANNELD_ETCD_PREFIX": "/env"},
        lambda s: s.etcd.prefix,
        "/coreos.com/network",
    ),
    # empty values are ignored
    ([], {"FLANNELD_ETCD_PREFIX": ""}, lambda s: s.etcd.prefix, "/coreos.com/network"),
    ([], {"FLANNELD_IFACE": ""}, lambda s: s.interface.iface, ()),
    # names are exact: lower case or missing prefix do nothing
    ([], {"flanneld_etcd_prefix": "/x", "ETCD_PREFIX": "/y"}, lambda s: s.etcd.prefix, "/coreos.com/network"),
    # --version comes from the command line only
    ([], {"FLANNELD_VERSION": "true"}, lambda s: s.version, False),
    # flags after a positional are not "set", so the environment applies to them
    (["x", "--etcd-prefix=/cli"], {"FLANNELD_ETCD_PREFIX": "/env"}, lambda s: s.etcd.prefix, "/env"),
]


@pytest.mark.parametrize(("argv", "env", "get", "want"), ENV_CASES)
def test_env_overlay(argv: list[str], env: dict[str, str], get: Getter, want: Any) -> None:
    settings, warnings = parse_args_with_warnings(argv, env)
    assert get(settings) == want
    assert not [w for w in warnings if "env" in w]


BAD_ENV_CASES: list[tuple[dict[str, str], str]] = [
    (
        {"FLANNELD_IP_MASQ": "yes"},
        'Failed to set flag FLANNELD_IP_MASQ from env: invalid value "yes" for FLANNELD_IP_MASQ: parse error',
    ),
    (
        {"FLANNELD_HEALTHZ_PORT": "http"},
        (
            'Failed to set flag FLANNELD_HEALTHZ_PORT from env: invalid value "http" for FLANNELD_HEALTHZ_PORT: '
            "parse error"
        ),
    ),
    (
        {"FLANNELD_V": "high"},
        (
            'Failed to set flag FLANNELD_V from env: invalid value "high" for FLANNELD_V: '
            'strconv.ParseInt: parsing "high": invalid syntax'
        ),
    ),
]


@pytest.mark.parametrize(("env", "warning"), BAD_ENV_CASES)
def test_bad_env_value_warns_and_continues(env: dict[str, str], warning: str) -> None:
    env = {**env, "FLANNELD_ETCD_PREFIX": "/still-applied"}
    settings, warnings = parse_args_with_warnings([], env)
    assert warnings == [warning]
    assert settings.etcd.prefix == "/still-applied"
    assert settings.traffic.ip_masq is False
    assert settings.health.healthz_port == 0


def test_every_bad_env_value_is_reported() -> None:
    _, warnings = parse_args_with_warnings([], {"FLANNELD_IP_MASQ": "x", "FLANNELD_HEALTHZ_PORT": "y"})
    assert len(warnings) == 2


def test_parse_args_logs_warnings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pyflannel.cli.flags"):
        s = parse_args([], {"FLANNELD_IP_MASQ": "nope"})
    assert s.traffic.ip_masq is False
    assert "Failed to set flag FLANNELD_IP_MASQ from env" in caplog.text


# ----------------------------------------------------------------------------- validate, repr, usage


@pytest.mark.parametrize(
    ("margin", "ok"), [(0, False), (-5, False), (1, True), (60, True), (1439, True), (1440, False)]
)
def test_validate_renew_margin(margin: int, ok: bool) -> None:
    s = parse(f"--subnet-lease-renew-margin={margin}")
    if ok:
        validate(s)
    else:
        with pytest.raises(
            ValueError, match="^Invalid subnet-lease-renew-margin option, out of acceptable range$"
        ):
            validate(s)


def test_validate_lease_ttl() -> None:
    with pytest.raises(ValueError, match="subnet-lease-ttl"):
        validate(parse("--subnet-lease-ttl=0"))


def test_password_not_in_repr() -> None:
    s = parse("--etcd-password=hunter2", "--etcd-username=root")
    assert "hunter2" not in repr(s)
    assert "root" in repr(s)


def test_usage_layout() -> None:
    text = usage()
    assert text.startswith("Usage: flanneld [OPTION]...\n  -etcd-cafile string\n    \tSSL Certificate")
    assert (
        "  -etcd-endpoints string\n    \ta comma-delimited list of etcd endpoints "
        '(default "http://127.0.0.1:4001,http://127.0.0.1:2379")\n'
    ) in text
    assert (
        "  -ip-masq\n    \tsetup IP masquerade rule for traffic destined outside of overlay network\n" in text
    )
    assert (
        "  -iptables-forward-rules\n    \tadd default accept rules to FORWARD chain in iptables (default true)\n"
        in text
    )
    assert (
        "  -subnet-lease-renew-margin int\n    \tsubnet lease renewal margin, in minutes, ranging from 1 to 1439 (default 60)\n"
        in text
    )
    assert "  -healthz-port int\n    \tthe port for healthz server to listen(0 to disable)\n" in text
    assert "  -iface value\n    \tinterface to use" in text
    assert "  -v value\n    \tnumber for the log level verbosity\n" in text
    assert "-help" not in text
    assert usage("/opt/bin/flanneld").startswith("Usage: /opt/bin/flanneld [OPTION]...\n")
    names = re.findall(r"^  -(\S+)", text, re.MULTILINE)
    assert names == sorted(names)
    assert set(names) >= {
        "etcd-endpoints",
        "etcd-prefix",
        "etcd-keyfile",
        "etcd-certfile",
        "etcd-cafile",
        "etcd-username",
        "etcd-password",
        "version",
        "kube-subnet-mgr",
        "kube-api-url",
        "kube-annotation-prefix",
        "kubeconfig-file",
        "iface",
        "iface-regex",
        "iface-can-reach",
        "subnet-file",
        "public-ip",
        "public-ipv6",
        "subnet-lease-renew-margin",
        "healthz-ip",
        "healthz-port",
        "iptables-resync",
        "iptables-forward-rules",
        "ip-masq",
        "ip-masq-fully-random-disable",
        "net-config-path",
        "set-node-network-unavailable",
        "ip-blackhole-route",
        "v",
        "vmodule",
        "log_backtrace_at",
        "subnet-lease-ttl",
    }
