"""flanneld's command line: Go ``flag`` package semantics plus the ``FLANNELD_*`` environment overlay.

Compatibility notes (flannel HEAD ``main.go``, Go ``flag``, coreos/pkg ``flagutil``, klog v2):

* ``-x`` and ``--x`` are the same; values as ``-x=v`` or ``-x v``. Bool flags take no separate
  argument (``-ip-masq false`` sets ip-masq and stops parsing at ``false``); ``-x=<bool>`` accepts
  what Go's ``strconv.ParseBool`` accepts. ``--`` ends the flags, and so does the first argument that
  is not a flag (flannel ignores the rest; we report them as a warning). Repeating a flag: last value
  wins, except ``-iface`` and ``-iface-regex`` which accumulate.
* Integer flags use ``strconv.ParseInt(s, 0, 64)`` (``0x10``, ``0o17``, ``017``, ``1_000``); ``-v``
  uses klog's ``ParseInt(s, 10, 32)`` and reports strconv's own error text.
* Error messages are Go's: ``flag provided but not defined: -foo``, ``flag needs an argument: -iface``,
  ``invalid value "x" for flag -healthz-port: parse error``,
  ``invalid boolean value "x" for -ip-masq: parse error``, ``bad flag syntax: ---x``.
* Environment: after the command line, every flag *not* given there is looked up as ``FLANNELD_`` +
  upper-cased name with ``-``/``.`` turned into ``_``; empty values are ignored; a repeatable flag gets
  exactly one value (no splitting). A bad value does not stop start-up: it becomes a warning
  ``Failed to set flag FLANNELD_X from env: ...`` (flannel logs one error for the last bad value only;
  we report each). ``--version`` is taken from the command line only, as flannel checks it before
  applying the environment.
* Differences: flannel's usage function calls ``exit(0)`` even after a flag error; pyflannel's caller
  exits 2 on :class:`UsageError`. ``-subnet-lease-ttl`` is a pyflannel extension.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pyflannel.config import GO_ESCAPES
from pyflannel.settings import (
    EtcdSettings,
    HealthSettings,
    InterfaceSettings,
    KubeSettings,
    LogSettings,
    Settings,
    SubnetSettings,
    TrafficSettings,
)

log = logging.getLogger(__name__)

ENV_PREFIX = "FLANNELD"

Kind = Literal["string", "int", "bool", "list", "level", "vmodule", "trace"]
Value = str | int | bool | list[str]


class UsageError(Exception):
    """A command-line error; ``str()`` is Go's message. The caller prints it and :func:`usage`."""


class HelpRequested(Exception):
    """``-h``, ``-help`` or ``--help`` was given: print :func:`usage` and exit 0."""


class _SetError(Exception):
    """A flag value was rejected; ``str()`` is the text after ``...for flag -x: `` in Go."""


@dataclass(frozen=True)
class _Flag:
    name: str
    kind: Kind
    default: str | int | bool
    usage: str


_FLAG_LIST: tuple[_Flag, ...] = (
    _Flag(
        "etcd-endpoints",
        "string",
        "http://127.0.0.1:4001,http://127.0.0.1:2379",
        "a comma-delimited list of etcd endpoints",
    ),
    _Flag("etcd-prefix", "string", "/coreos.com/network", "etcd prefix"),
    _Flag("etcd-keyfile", "string", "", "SSL key file used to secure etcd communication"),
    _Flag("etcd-certfile", "string", "", "SSL certification file used to secure etcd communication"),
    _Flag("etcd-cafile", "string", "", "SSL Certificate Authority file used to secure etcd communication"),
    _Flag("etcd-username", "string", "", "username for BasicAuth to etcd"),
    _Flag("etcd-password", "string", "", "password for BasicAuth to etcd"),
    _Flag(
        "iface",
        "list",
        "",
        "interface to use (IP or name) for inter-host communication. Can be specified multiple times "
        "to check each option in order. Returns the first match found.",
    ),
    _Flag(
        "iface-regex",
        "list",
        "",
        "regex expression to match the first interface to use (IP or name) for inter-host "
        "communication. Can be specified multiple times to check each regex in order. Returns the "
        "first match found. Regexes are checked after specific interfaces specified by the iface "
        "option have already been checked.",
    ),
    _Flag(
        "iface-can-reach",
        "string",
        "",
        "detect interface to use (IP or name) for inter-host communication based on which will be "
        "used for provided IP. This is exactly the interface to use of command "
        "'ip route get <ip-address>'",
    ),
    _Flag(
        "subnet-file",
        "string",
        "/run/flannel/subnet.env",
        "filename where env variables (subnet, MTU, ... ) will be written to",
    ),
    _Flag("public-ip", "string", "", "IP accessible by other nodes for inter-host communication"),
    _Flag("public-ipv6", "string", "", "IPv6 accessible by other nodes for inter-host communication"),
    _Flag(
        "subnet-lease-renew-margin",
        "int",
        60,
        "subnet lease renewal margin, in minutes, ranging from 1 to 1439",
    ),
    _Flag(
        "subnet-lease-ttl",
        "int",
        86400,
        "pyflannel extension: TTL of the subnet lease in etcd, in seconds (flannel always uses 86400)",
    ),
    _Flag(
        "ip-masq", "bool", False, "setup IP masquerade rule for traffic destined outside of overlay network"
    ),
    _Flag("ip-masq-fully-random-disable", "bool", False, "disable fully-random mode for MASQUERADE"),
    _Flag(
        "kube-subnet-mgr", "bool", False, "contact the Kubernetes API for subnet assignment instead of etcd."
    ),
    _Flag(
        "kube-api-url",
        "string",
        "",
        "Kubernetes API server URL. Does not need to be specified if flannel is running in a pod.",
    ),
    _Flag(
        "kube-annotation-prefix",
        "string",
        "flannel.alpha.coreos.com",
        'Kubernetes annotation prefix. Can contain single slash "/", otherwise it will be appended '
        "at the end.",
    ),
    _Flag(
        "kubeconfig-file",
        "string",
        "",
        "kubeconfig file location. Does not need to be specified if flannel is running in a pod.",
    ),
    _Flag("version", "bool", False, "print version and exit"),
    _Flag("healthz-ip", "string", "0.0.0.0", "the IP address for healthz server to listen"),
    _Flag("healthz-port", "int", 0, "the port for healthz server to listen(0 to disable)"),
    _Flag("iptables-resync", "int", 5, "resync period for iptables rules, in seconds"),
    _Flag("iptables-forward-rules", "bool", True, "add default accept rules to FORWARD chain in iptables"),
    _Flag("ip-blackhole-route", "bool", False, "add blackroute route ont the node for the local podCIDR"),
    _Flag(
        "net-config-path",
        "string",
        "/etc/kube-flannel/net-conf.json",
        "path to the network configuration file",
    ),
    _Flag("set-node-network-unavailable", "bool", True, "set NodeNetworkUnavailable after ready"),
    # klog flags flannel copies into its flag set (the file-logging ones are not offered).
    _Flag("v", "level", 0, "number for the log level verbosity"),
    _Flag("vmodule", "vmodule", "", "comma-separated list of pattern=N settings for file-filtered logging"),
    _Flag("log_backtrace_at", "trace", "", "when logging hits line file:N, emit a stack trace"),
)

_FLAGS: dict[str, _Flag] = {f.name: f for f in _FLAG_LIST}


# --------------------------------------------------------------------------- Go value parsing


def go_quote(s: str) -> str:
    """Go's ``strconv.Quote`` (``%q``) for the strings that reach error messages."""
    escapes = {**GO_ESCAPES, '"': '\\"'}
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch in escapes:
            out.append(escapes[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # undecodable argv byte (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def parse_go_bool(s: str) -> bool:
    """Go's ``strconv.ParseBool``; raises ``ValueError`` for anything else."""
    if s in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if s in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f"invalid boolean {s!r}")


class _NumError(ValueError):
    def __init__(self, kind: Literal["syntax", "range"]) -> None:
        super().__init__("invalid syntax" if kind == "syntax" else "value out of range")
        self.kind = kind


def _underscore_ok(s: str) -> bool:
    """Go's ``strconv.underscoreOK``: underscores only between digits (or after a base prefix)."""
    saw = "^"
    i = 0
    if s[:1] in ("-", "+"):
        s = s[1:]
    hexa = False
    if len(s) >= 2 and s[0] == "0" and s[1].lower() in "box":
        i = 2
        saw = "0"
        hexa = s[1].lower() == "x"
    while i < len(s):
        c = s[i]
        if "0" <= c <= "9" or (hexa and "a" <= c.lower() <= "f"):
            saw = "0"
        elif c == "_":
            if saw != "0":
                return False
            saw = "_"
        elif saw == "_":
            return False
        else:
            saw = "!"
        i += 1
    return saw != "_"


def parse_go_int(s: str, base: int = 0, bits: int = 64) -> int:
    """Go's ``strconv.ParseInt(s, base, bits)`` for base 0 or 10; raises :class:`_NumError`."""
    if not s:
        raise _NumError("syntax")
    s0 = s
    neg = False
    if s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
        if not s:
            raise _NumError("syntax")
    base0 = base == 0
    if base0:
        base = 10
        if s[0] == "0":
            if len(s) >= 3 and s[1].lower() in "box":
                base = {"b": 2, "o": 8, "x": 16}[s[1].lower()]
                s = s[2:]
            else:
                base = 8
                s = s[1:]
    n = 0
    underscores = False
    for c in s:
        if c == "_" and base0:
            underscores = True
            continue
        if "0" <= c <= "9":
            d = ord(c) - ord("0")
        elif "a" <= c.lower() <= "z" and c.isascii():
            d = ord(c.lower()) - ord("a") + 10
        else:
            raise _NumError("syntax")
        if d >= base:
            raise _NumError("syntax")
        n = n * base + d
    if underscores and not _underscore_ok(s0):
        raise _NumError("syntax")
    cutoff = 1 << (bits - 1)
    if (not neg and n >= cutoff) or (neg and n > cutoff):
        raise _NumError("range")
    return -n if neg else n


def _check_vmodule(value: str) -> None:
    """klog's ``parseModuleSpec`` validation."""
    for pat in value.split(","):
        if not pat:
            continue
        parts = pat.split("=")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise _SetError("syntax error: expect comma-separated list of filename=N")
        try:
            level = parse_go_int(parts[1], 10, 32)
        except _NumError:
            raise _SetError("syntax error: expect comma-separated list of filename=N") from None
        if level < 0:
            raise _SetError("negative value for vmodule level")


def _check_trace(value: str) -> None:
    """klog's ``traceLocation.Set`` validation."""
    if value == "":
        return
    fields = value.split(":")
    if len(fields) != 2 or "." not in fields[0]:
        raise _SetError("syntax error: expect file.go:234")
    try:
        line = parse_go_int(fields[1], 10, 64)
    except _NumError:
        raise _SetError("syntax error: expect file.go:234") from None
    if line <= 0:
        raise _SetError("negative or zero value for level")


def _set(values: dict[str, Value], flag: _Flag, raw: str) -> None:
    """``flag.Value.Set``: store ``raw`` into ``values`` or raise :class:`_SetError`."""
    if flag.kind == "string":
        values[flag.name] = raw
    elif flag.kind == "bool":
        try:
            values[flag.name] = parse_go_bool(raw)
        except ValueError:
            raise _SetError("parse error") from None
    elif flag.kind == "int":
        try:
            values[flag.name] = parse_go_int(raw, 0, 64)
        except _NumError as e:
            raise _SetError("parse error" if e.kind == "syntax" else "value out of range") from None
    elif flag.kind == "list":
        current = values[flag.name]
        assert isinstance(current, list)
        values[flag.name] = [*current, raw]
    elif flag.kind == "level":
        try:
            values[flag.name] = parse_go_int(raw, 10, 32)
        except _NumError as e:
            raise _SetError(f"strconv.ParseInt: parsing {go_quote(raw)}: {e}") from None
    elif flag.kind == "vmodule":
        _check_vmodule(raw)
        values[flag.name] = raw
    else:  # trace
        _check_trace(raw)
        values[flag.name] = raw


# --------------------------------------------------------------------------- parsing


def _defaults() -> dict[str, Value]:
    return {f.name: ([] if f.kind == "list" else f.default) for f in _FLAG_LIST}


def _parse_command_line(argv: Sequence[str], values: dict[str, Value]) -> tuple[set[str], list[str]]:
    """Go ``FlagSet.Parse``: returns the names set and the arguments left after the flags."""
    args = list(argv)
    seen: set[str] = set()
    i = 0
    while i < len(args):
        s = args[i]
        if len(s) < 2 or s[0] != "-":
            break
        minuses = 1
        if s[1] == "-":
            minuses = 2
            if len(s) == 2:  # "--" terminates the flags
                i += 1
                break
        name = s[minuses:]
        if not name or name[0] in "-=":
            raise UsageError(f"bad flag syntax: {s}")
        i += 1
        has_value = False
        value = ""
        eq = name.find("=", 1)
        if eq > 0:
            name, value, has_value = name[:eq], name[eq + 1 :], True
        flag = _FLAGS.get(name)
        if flag is None:
            if name in ("help", "h"):
                raise HelpRequested()
            raise UsageError(f"flag provided but not defined: -{name}")
        if flag.kind == "bool":
            try:
                _set(values, flag, value if has_value else "true")
            except _SetError as e:
                raise UsageError(f"invalid boolean value {go_quote(value)} for -{name}: {e}") from None
        else:
            if not has_value and i < len(args):
                value, has_value = args[i], True
                i += 1
            if not has_value:
                raise UsageError(f"flag needs an argument: -{name}")
            try:
                _set(values, flag, value)
            except _SetError as e:
                raise UsageError(f"invalid value {go_quote(value)} for flag -{name}: {e}") from None
        seen.add(name)
    return seen, args[i:]


def env_var_name(flag_name: str) -> str:
    """``FLANNELD_`` + the flag name upper-cased, ``-`` and ``.`` replaced by ``_``."""
    return f"{ENV_PREFIX}_{flag_name.upper().replace('-', '_').replace('.', '_')}"


def _apply_env(environ: Mapping[str, str], values: dict[str, Value], seen: set[str]) -> list[str]:
    """coreos/pkg ``flagutil.SetFlagsFromEnv``; returns one warning per rejected variable."""
    warnings: list[str] = []
    for flag in sorted(_FLAG_LIST, key=lambda f: f.name):
        if flag.name in seen:
            continue
        key = env_var_name(flag.name)
        raw = environ.get(key, "")
        if raw == "":
            continue
        try:
            _set(values, flag, raw)
        except _SetError as e:
            warnings.append(
                f"Failed to set flag {key} from env: invalid value {go_quote(raw)} for {key}: {e}"
            )
    return warnings


def _get_str(values: Mapping[str, Value], name: str) -> str:
    v = values[name]
    assert isinstance(v, str)
    return v


def _get_int(values: Mapping[str, Value], name: str) -> int:
    v = values[name]
    assert isinstance(v, int) and not isinstance(v, bool)
    return v


def _get_bool(values: Mapping[str, Value], name: str) -> bool:
    v = values[name]
    assert isinstance(v, bool)
    return v


def _get_list(values: Mapping[str, Value], name: str) -> tuple[str, ...]:
    v = values[name]
    assert isinstance(v, list)
    return tuple(v)


def _build(values: Mapping[str, Value], version: bool) -> Settings:
    s, i, b, lst = _get_str, _get_int, _get_bool, _get_list
    return Settings(
        etcd=EtcdSettings(
            endpoints=tuple(s(values, "etcd-endpoints").split(",")),
            prefix=s(values, "etcd-prefix"),
            cafile=s(values, "etcd-cafile"),
            certfile=s(values, "etcd-certfile"),
            keyfile=s(values, "etcd-keyfile"),
            username=s(values, "etcd-username"),
            password=s(values, "etcd-password"),
        ),
        interface=InterfaceSettings(
            iface=lst(values, "iface"),
            iface_regex=lst(values, "iface-regex"),
            iface_can_reach=s(values, "iface-can-reach"),
            public_ip=s(values, "public-ip"),
            public_ipv6=s(values, "public-ipv6"),
        ),
        subnet=SubnetSettings(
            subnet_file=s(values, "subnet-file"),
            renew_margin_minutes=i(values, "subnet-lease-renew-margin"),
            lease_ttl_seconds=i(values, "subnet-lease-ttl"),
        ),
        traffic=TrafficSettings(
            ip_masq=b(values, "ip-masq"),
            ip_masq_fully_random_disable=b(values, "ip-masq-fully-random-disable"),
            iptables_resync=i(values, "iptables-resync"),
            iptables_forward_rules=b(values, "iptables-forward-rules"),
            ip_blackhole_route=b(values, "ip-blackhole-route"),
        ),
        health=HealthSettings(
            healthz_ip=s(values, "healthz-ip"),
            healthz_port=i(values, "healthz-port"),
        ),
        kube=KubeSettings(
            kube_subnet_mgr=b(values, "kube-subnet-mgr"),
            kube_api_url=s(values, "kube-api-url"),
            kubeconfig_file=s(values, "kubeconfig-file"),
            kube_annotation_prefix=s(values, "kube-annotation-prefix"),
            net_config_path=s(values, "net-config-path"),
            set_node_network_unavailable=b(values, "set-node-network-unavailable"),
        ),
        log=LogSettings(
            verbosity=i(values, "v"),
            vmodule=s(values, "vmodule"),
            log_backtrace_at=s(values, "log_backtrace_at"),
        ),
        version=version,
    )


def parse_args_with_warnings(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[Settings, list[str]]:
    """Parse ``argv`` (without the program name) and overlay ``environ``.

    Returns the settings and warnings to log once logging is configured (bad ``FLANNELD_*`` values,
    ignored non-flag arguments). Raises :class:`HelpRequested` or :class:`UsageError`.
    """
    values = _defaults()
    seen, rest = _parse_command_line(argv, values)
    version = _get_bool(values, "version")  # flannel checks --version before reading the environment
    warnings: list[str] = []
    if rest:
        warnings.append("ignoring non-flag command-line arguments: " + " ".join(go_quote(a) for a in rest))
    warnings.extend(_apply_env(environ, values, seen))
    return _build(values, version), warnings


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Like :func:`parse_args_with_warnings`, logging the warnings on this module's logger."""
    settings, warnings = parse_args_with_warnings(argv, environ)
    for w in warnings:
        log.warning("%s", w)
    return settings


def validate(settings: Settings) -> None:
    """flanneld's checks after parsing; raises ``ValueError`` with flannel's message."""
    margin = settings.subnet.renew_margin_minutes
    if margin >= 24 * 60 or margin <= 0:
        raise ValueError("Invalid subnet-lease-renew-margin option, out of acceptable range")
    if settings.subnet.lease_ttl_seconds <= 0:
        raise ValueError("Invalid subnet-lease-ttl option, must be a positive number of seconds")


def usage(prog: str = "flanneld") -> str:
    """The text flanneld prints for ``-h``: Go ``FlagSet.PrintDefaults`` layout, sorted by name."""
    lines = [f"Usage: {prog} [OPTION]...\n"]
    for flag in sorted(_FLAG_LIST, key=lambda f: f.name):
        type_name = {"string": "string", "int": "int", "bool": ""}.get(flag.kind, "value")
        head = f"  -{flag.name}" + (f" {type_name}" if type_name else "")
        text = head + ("\t" if len(head) <= 4 else "\n    \t") + flag.usage.replace("\n", "\n    \t")
        if flag.kind == "string" and flag.default != "":
            assert isinstance(flag.default, str)
            text += f" (default {go_quote(flag.default)})"
        elif flag.kind == "int" and flag.default != 0:
            text += f" (default {flag.default})"
        elif flag.kind == "bool" and flag.default is True:
            text += " (default true)"
        lines.append(text + "\n")
    return "".join(lines)
