"""The network configuration (etcd value ``<prefix>/config``): parse and validate, as flannel does.

flannel decodes this JSON with Go's ``encoding/json`` into a struct without tags and then runs
``CheckNetworkConfig``. A drop-in has to accept and reject the same documents with the same
messages, because operators share one config between flannel and pyflannel nodes and search the
web for the error text. This module therefore reproduces the Go decoder's observable rules:

* Object keys are matched to fields case-insensitively (Go's simple case folding, so ``ſ`` counts
  as ``s`` and the Kelvin sign as ``k``); unknown keys are ignored. Keys are applied in document
  order, so when a field appears several times (in any casing) the last occurrence wins, as in Go.
  (Go's "exact match preferred" rule only matters for structs with two fields that differ in case
  only, which flannel's do not have.)
* A value of the wrong JSON type gives Go's ``json: cannot unmarshal <what> into Go struct field
  Config.<Field> of type <type>``. Like Go, decoding carries on after such an error and the
  *first* one is reported; an address that does not parse aborts at once (Go's custom
  ``UnmarshalJSON`` errors are returned immediately), with Go's text, e.g. ``invalid CIDR address:
  10.0.0/8``.
* Syntax errors are reported in Go's words (``unexpected end of JSON input``, ``invalid character
  'x' looking for beginning of value``, ...), translated from Python's decoder messages.

Deliberate differences from flannel, each because flannel's behaviour is an accident:

* JSON ``null`` for any field means "not given" (the default). flannel errors on ``null`` for
  ``Network``/``SubnetMin``/``SubnetMax``/``IPv6Network`` (``invalid CIDR address: null``) and turns
  ``"Backend": null`` into the unknown backend ``""``.
* ``IPv6Network`` must be an IPv6 CIDR and ``IPv6SubnetMin/Max`` IPv6 addresses (flannel silently
  accepts IPv4 ones there and then computes nonsense); the messages are ``invalid IPv6 CIDR format``
  and ``invalid IPv6 address format``, the twins of flannel's IPv4 messages.
* Fields of a disabled address family are not validated (as flannel) and are reported as ``None``
  here, so no caller can use an unchecked value.

Defaults follow flannel's *code*, not its docs: a config without ``Backend`` selects ``udp`` (the
documentation claims vxlan; flannel's ``parseBackendType`` returns ``udp``), so a config written
for flannel keeps the data path it had there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, Self, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """The network config is unusable. ``str()`` is flannel's one-line message."""


# -- Go encoding/json emulation ----------------------------------------------------------------


class GoJSONError(ValueError):
    """A JSON document Go's ``encoding/json`` would reject; the message is Go's."""


class RawFloat(float):
    """A JSON number with a fraction or exponent that remembers its literal text.

    Go reports and re-emits numbers by their literal (``number 1e2``, ``json.RawMessage``), so the
    text must survive decoding.
    """

    raw: str

    def __new__(cls, raw: str) -> Self:
        obj = super().__new__(cls, raw)
        obj.raw = raw
        return obj


class JSONObject(dict[str, Any]):
    """A decoded JSON object that also keeps its key/value pairs in document order (duplicates too).

    Go applies duplicate keys one after the other; a plain dict would lose their order.
    """

    pairs: list[tuple[str, Any]]

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


def _reject_constant(name: str) -> Any:
    # Python accepts NaN/Infinity/-Infinity; JSON (and Go) do not.
    char = "I" if name.startswith("-") else name[0]
    context = "in numeric literal" if name.startswith("-") else "looking for beginning of value"
    raise GoJSONError(f"invalid character {_quote_char(char)} {context}")


# The short escapes Go's strconv quoting uses (shared with cli/flags.py's ``go_quote``).
GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
}


def _quote_char(c: str) -> str:
    """Go's ``quoteChar``: the first *byte* of the character, as a Go rune literal."""
    b = c.encode("utf-8", "surrogatepass")[0] if c else 0
    if b == ord("'"):
        return "'\\''"
    if b == ord('"'):
        return "'\"'"
    ch = chr(b)
    short = GO_ESCAPES
    if ch in short:
        return f"'{short[ch]}'"
    if b < 0x20 or b == 0x7F:
        return f"'\\x{b:02x}'"
    if 0x80 <= b < 0xA0 or b == 0xAD:
        return f"'\\u{b:04x}'"
    return f"'{ch}'"


def _open_container(text: str, pos: int) -> str:
    """The innermost open bracket (``{`` or ``[``) before ``pos``, ignoring brackets in strings."""
    stack: list[str] = []
    in_string = escaped = False
    for ch in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _go_syntax_error(text: str, e: json.JSONDecodeError) -> str:
    """Translate Python's decoder message into the one Go's scanner gives for the same input."""
    pos = e.pos
    if pos >= len(text) or e.msg.startswith("Unterminated string"):
        return "unexpected end of JSON input"
    c = text[pos]
    if e.msg.startswith("Expecting value"):
        if text[pos] in "-0123456789":
            # Python points at the number that is broken; Go at the offending character in it.
            i = pos + 1
            while i < len(text) and text[i] in "0123456789.eE+-":
                i += 1
            if i >= len(text):
                return "unexpected end of JSON input"
            return f"invalid character {_quote_char(text[i])} in numeric literal"
        for literal in ("true", "false", "null"):
            if c == literal[0]:
                # Python rejects a misspelt literal as a whole; Go names the first wrong letter.
                for i, want in enumerate(literal):
                    if pos + i >= len(text):
                        return "unexpected end of JSON input"
                    if text[pos + i] != want:
                        got = _quote_char(text[pos + i])
                        return f"invalid character {got} in literal {literal} (expecting {_quote_char(want)})"
        return f"invalid character {_quote_char(c)} looking for beginning of value"
    if e.msg.startswith("Expecting property name"):
        return f"invalid character {_quote_char(c)} looking for beginning of object key string"
    if e.msg.startswith("Expecting ':'"):
        return f"invalid character {_quote_char(c)} after object key"
    if e.msg.startswith("Expecting ','"):
        where = "object key:value pair" if _open_container(text, pos) == "{" else "array element"
        return f"invalid character {_quote_char(c)} after {where}"
    if e.msg.startswith("Extra data"):
        return f"invalid character {_quote_char(c)} after top-level value"
    if e.msg.startswith("Invalid control character"):
        return f"invalid character {_quote_char(c)} in string literal"
    if e.msg.startswith("Invalid \\escape"):
        bad = text[pos + 1] if pos + 1 < len(text) else ""
        return f"invalid character {_quote_char(bad)} in string escape code"
    if e.msg.startswith("Invalid \\u"):
        return "invalid character in \\u hexadecimal character escape"
    return f"invalid JSON: {e.msg}"  # pragma: no cover - every Python message is mapped above


def go_json_loads(data: str | bytes) -> Any:
    """Decode JSON with Go's acceptance rules and error texts.

    Objects become :class:`JSONObject` (a dict with the ordered pairs), numbers with a fraction or
    exponent :class:`RawFloat`. Bytes are UTF-8, invalid sequences replaced (as Go does).
    """
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if text.startswith("\ufeff"):
        raise GoJSONError(f"invalid character {_quote_char(text[0])} looking for beginning of value")
    try:
        return json.loads(
            text, object_pairs_hook=JSONObject, parse_float=RawFloat, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as e:
        raise GoJSONError(_go_syntax_error(text, e)) from None
    except RecursionError:
        raise GoJSONError("exceeded max depth") from None


def go_fold(name: str) -> str:
    """Fold a key the way Go's field matching does (simple folding onto ASCII field names)."""
    return name.lower().replace("\u017f", "s")


def json_kind(value: Any) -> str:
    """Go's word for a JSON value in ``cannot unmarshal <kind>`` (numbers carry their literal)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, RawFloat):
        return "number " + value.raw
    if isinstance(value, int):
        return f"number {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    return "array"


def _short_kind(value: Any) -> str:
    # Go names numbers by literal only when the target is numeric; otherwise just "number".
    kind = json_kind(value)
    return "number" if kind.startswith("number") else kind


def unmarshal_type_error(value: Any, where: str, go_type: str) -> str:
    """Go's ``UnmarshalTypeError`` text. ``where`` is ``Struct.Field`` (``.Field`` if anonymous)."""
    numeric = go_type in ("int", "uint", "int64", "uint64", "uint16", "uint32", "float64")
    kind = json_kind(value) if numeric else _short_kind(value)
    return f"json: cannot unmarshal {kind} into Go struct field {where} of type {go_type}"


def go_raw_text(value: Any) -> str:
    """The JSON text of a decoded value, compact, as Go would hand it to ``UnmarshalJSON``."""
    if isinstance(value, str):
        return value
    if isinstance(value, RawFloat):
        return value.raw
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def iter_fields(obj: JSONObject | Mapping[str, Any], names: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    """Yield ``(field, value)`` for every key of ``obj`` that matches a field, in document order."""
    by_fold = {go_fold(n): n for n in names}
    pairs = obj.pairs if isinstance(obj, JSONObject) else list(obj.items())
    for key, value in pairs:
        name = by_fold.get(go_fold(key))
        if name is not None:
            yield name, value


# -- address parsing with Go's messages ---------------------------------------------------------


def _parse_cidr(text: str) -> IPv4Network | IPv6Network:
    """Go's ``net.ParseCIDR``: ``addr/prefix``, host bits masked; ``invalid CIDR address: x``."""
    err = ConfigError(f"invalid CIDR address: {text}")
    addr, sep, prefix = text.partition("/")
    if not sep or not prefix or not (prefix.isascii() and prefix.isdigit()) or "%" in addr:
        raise err
    try:
        ip = ip_address(addr)
    except ValueError:
        raise err from None
    bits = int(prefix)
    if bits > ip.max_prefixlen:
        raise err
    if isinstance(ip, IPv4Address):
        return IPv4Network((int(ip), bits), strict=False)
    return IPv6Network((int(ip), bits), strict=False)


def parse_ip4_net(value: Any) -> IPv4Network:
    """flannel's ``ip.IP4Net`` JSON decoding."""
    net = _parse_cidr(go_raw_text(value))
    if not isinstance(net, IPv4Network):
        raise ConfigError("invalid IPv4 CIDR format")
    return net


def parse_ip6_net(value: Any) -> IPv6Network:
    """flannel's ``ip.IP6Net`` JSON decoding, restricted to IPv6 (see the module docstring)."""
    net = _parse_cidr(go_raw_text(value))
    if not isinstance(net, IPv6Network):
        raise ConfigError("invalid IPv6 CIDR format")
    return net


def parse_ip4(value: Any) -> IPv4Address:
    """flannel's ``ip.IP4`` JSON decoding (``ParseIP4``): IPv4 or IPv4-mapped IPv6."""
    try:
        ip = ip_address(go_raw_text(value))
    except ValueError:
        raise ConfigError("invalid IP address format") from None
    if isinstance(ip, IPv6Address):
        if ip.ipv4_mapped is None:
            raise ConfigError("invalid IPv4 address format")
        return ip.ipv4_mapped
    return ip


def parse_ip6(value: Any) -> IPv6Address:
    """flannel's ``ip.IP6`` JSON decoding, restricted to IPv6."""
    try:
        ip = ip_address(go_raw_text(value))
    except ValueError:
        raise ConfigError("invalid IP address format") from None
    if not isinstance(ip, IPv6Address):
        raise ConfigError("invalid IPv6 address format")
    return ip


# -- the config -------------------------------------------------------------------------------

_FIELDS = (
    "EnableIPv4",
    "EnableIPv6",
    "EnableNFTables",
    "Network",
    "IPv6Network",
    "SubnetMin",
    "SubnetMax",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "SubnetLen",
    "IPv6SubnetLen",
    "Backend",
)
_UINT_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class NetworkConfig:
    """A validated network config with flannel's defaults filled in.

    Fields of a disabled family are ``None`` / 0. ``backend`` is the raw ``Backend`` object with its
    keys as written (backends look keys up with :func:`backend_option`, case-insensitively).
    """

    enable_ipv4: bool
    enable_ipv6: bool
    enable_nftables: bool
    network: IPv4Network | None
    subnet_len: int
    subnet_min: IPv4Address | None
    subnet_max: IPv4Address | None
    ipv6_network: IPv6Network | None
    ipv6_subnet_len: int
    ipv6_subnet_min: IPv6Address | None
    ipv6_subnet_max: IPv6Address | None
    backend_type: str
    backend: dict[str, Any] = field(default_factory=dict)

    def contains_subnet(self, sn: IPv4Network) -> bool:
        """flannel's ``isSubnetConfigCompat``: SubnetMin <= sn <= SubnetMax and /SubnetLen."""
        if self.subnet_min is None or self.subnet_max is None:
            return False
        return self.subnet_min <= sn.network_address <= self.subnet_max and sn.prefixlen == self.subnet_len

    def contains_ipv6_subnet(self, sn6: IPv6Network | None) -> bool:
        """flannel's ``isIPv6SubnetConfigCompat``; with IPv6 disabled only "no IPv6 subnet" fits."""
        if not self.enable_ipv6:
            return sn6 is None
        if sn6 is None or self.ipv6_subnet_min is None or self.ipv6_subnet_max is None:
            return False
        return (
            self.ipv6_subnet_min <= sn6.network_address <= self.ipv6_subnet_max
            and sn6.prefixlen == self.ipv6_subnet_len
        )

    def subnet_capacity(self) -> int:
        """How many /SubnetLen subnets lie in SubnetMin..SubnetMax (0 if IPv4 is disabled)."""
        if self.subnet_min is None or self.subnet_max is None:
            return 0
        size = 1 << (32 - self.subnet_len)
        return max(0, (int(self.subnet_max) - int(self.subnet_min)) // size + 1)


@dataclass
class _Raw:
    """The Go ``Config`` struct after decoding, before ``CheckNetworkConfig``."""

    enable_ipv4: bool = True
    enable_ipv6: bool = False
    enable_nftables: bool = False
    network: IPv4Network | None = None
    ipv6_network: IPv6Network | None = None
    subnet_min: IPv4Address | None = None
    subnet_max: IPv4Address | None = None
    ipv6_subnet_min: IPv6Address | None = None
    ipv6_subnet_max: IPv6Address | None = None
    subnet_len: int = 0
    ipv6_subnet_len: int = 0
    backend: Any = None


def _decode(doc: Any) -> _Raw:
    if doc is None:
        doc = {}  # a top-level null leaves the whole struct alone in Go
    if not isinstance(doc, dict):
        raise ConfigError(f"json: cannot unmarshal {_short_kind(doc)} into Go value of type subnet.Config")
    raw = _Raw()
    first_type_error: str | None = None

    def type_error(value: Any, name: str, go_type: str) -> None:
        nonlocal first_type_error
        if first_type_error is None:
            first_type_error = unmarshal_type_error(value, f"Config.{name}", go_type)

    for name, value in iter_fields(doc, _FIELDS):
        if value is None:
            continue  # null: Go leaves the field alone (we do so for every field, see above)
        if name in ("EnableIPv4", "EnableIPv6", "EnableNFTables"):
            if not isinstance(value, bool):
                type_error(value, name, "bool")
                continue
            setattr(
                raw,
                {"EnableIPv4": "enable_ipv4", "EnableIPv6": "enable_ipv6"}.get(name, "enable_nftables"),
                value,
            )
        elif name in ("SubnetLen", "IPv6SubnetLen"):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT_MAX:
                type_error(value, name, "uint")
                continue
            setattr(raw, "subnet_len" if name == "SubnetLen" else "ipv6_subnet_len", value)
        elif name == "Network":
            raw.network = parse_ip4_net(value)
        elif name == "IPv6Network":
            raw.ipv6_network = parse_ip6_net(value)
        elif name == "SubnetMin":
            raw.subnet_min = parse_ip4(value)
        elif name == "SubnetMax":
            raw.subnet_max = parse_ip4(value)
        elif name == "IPv6SubnetMin":
            raw.ipv6_subnet_min = parse_ip6(value)
        elif name == "IPv6SubnetMax":
            raw.ipv6_subnet_max = parse_ip6(value)
        else:  # Backend: kept raw, any JSON value (json.RawMessage)
            raw.backend = value
    if first_type_error is not None:
        raise ConfigError(first_type_error)
    return raw


def _backend_type(backend: Any) -> str:
    """flannel's ``parseBackendType``: ``udp`` when absent, else ``Backend.Type``."""
    if backend is None:
        return "udp"
    prefix = "error decoding Backend property of config: "
    if not isinstance(backend, dict):
        raise ConfigError(
            f"{prefix}json: cannot unmarshal {_short_kind(backend)} into Go value of type struct {{ Type string }}"
        )
    btype = ""
    first_error: str | None = None
    for _name, value in iter_fields(backend, ("Type",)):
        if value is None:
            continue
        if not isinstance(value, str):
            first_error = first_error or unmarshal_type_error(value, ".Type", "string")
            continue
        btype = value
    if first_error is not None:
        raise ConfigError(prefix + first_error)
    return btype.lower()


def _check_family(
    net: IPv4Network | IPv6Network | None,
    subnet_len: int,
    subnet_min: IPv4Address | IPv6Address | None,
    subnet_max: IPv4Address | IPv6Address | None,
    *,
    default_len: int,
    net_name: str,
    small_name: str,
    min_name: str,
    max_name: str,
) -> tuple[int, int, int]:
    """flannel's ``CheckNetworkConfig`` for one address family, with its messages and defaults.

    Returns (SubnetLen, SubnetMin, SubnetMax) as integers; the family's width comes from ``net``.
    """
    if net is None or (int(net.network_address) == 0 and net.prefixlen == 0):
        raise ConfigError(f"please define a correct {net_name} parameter in the flannel config")
    bits = net.max_prefixlen
    if subnet_len > 0:
        if subnet_len > bits - 2:
            raise ConfigError(f"SubnetLen must be less than /{bits - 1}")
        if subnet_len < net.prefixlen + 2:
            raise ConfigError("network must be able to accommodate at least four subnets")
    elif net.prefixlen > bits - 4:
        raise ConfigError(f"{small_name} is too small. Minimum useful network prefix is /{bits - 4}")
    elif net.prefixlen <= default_len - 2:
        subnet_len = default_len
    else:
        subnet_len = net.prefixlen + 2

    size = 1 << (bits - subnet_len)
    base = int(net.network_address)
    # An explicit 0.0.0.0 / :: counts as "not given": flannel compares against the zero value.
    if subnet_min is None or int(subnet_min) == 0:
        smin = base + size
    elif subnet_min not in net:
        raise ConfigError(f"{min_name} is not in the range of the {net_name}")
    else:
        smin = int(subnet_min)
    if subnet_max is None or int(subnet_max) == 0:
        smax = base + net.num_addresses - size
    elif subnet_max not in net:
        raise ConfigError(f"{max_name} is not in the range of the {net_name}")
    else:
        smax = int(subnet_max)
    addr = type(net.network_address)
    if smin % size:
        raise ConfigError(f"{min_name} is not on a SubnetLen boundary: {addr(smin)}")
    if smax % size:
        raise ConfigError(f"{max_name} is not on a SubnetLen boundary: {addr(smax)}")
    return subnet_len, smin, smax


def _check_ipv4(raw: _Raw) -> tuple[IPv4Network, int, IPv4Address, IPv4Address]:
    """flannel's ``CheckNetworkConfig``, IPv4 half."""
    length, smin, smax = _check_family(
        raw.network, raw.subnet_len, raw.subnet_min, raw.subnet_max, default_len=24,
        net_name="Network", small_name="network", min_name="SubnetMin", max_name="SubnetMax",
    )  # fmt: skip
    assert raw.network is not None
    return raw.network, length, IPv4Address(smin), IPv4Address(smax)


def _check_ipv6(raw: _Raw) -> tuple[IPv6Network, int, IPv6Address, IPv6Address]:
    """flannel's ``CheckNetworkConfig``, IPv6 half."""
    length, smin, smax = _check_family(
        raw.ipv6_network, raw.ipv6_subnet_len, raw.ipv6_subnet_min, raw.ipv6_subnet_max, default_len=64,
        net_name="IPv6Network", small_name="IPv6Network", min_name="IPv6SubnetMin", max_name="IPv6SubnetMax",
    )  # fmt: skip
    assert raw.ipv6_network is not None
    return raw.ipv6_network, length, IPv6Address(smin), IPv6Address(smax)


def parse_config(text: str | bytes) -> NetworkConfig:
    """Parse and validate a network config (flannel's ``ParseConfig`` + ``CheckNetworkConfig``).

    Raises :class:`ConfigError` with flannel's message.
    """
    try:
        doc = go_json_loads(text)
    except GoJSONError as e:
        raise ConfigError(str(e)) from None
    raw = _decode(doc)
    backend_type = _backend_type(raw.backend)

    network = smin = smax = None
    subnet_len = 0
    if raw.enable_ipv4:
        network, subnet_len, smin, smax = _check_ipv4(raw)
    network6 = smin6 = smax6 = None
    subnet_len6 = 0
    if raw.enable_ipv6:
        network6, subnet_len6, smin6, smax6 = _check_ipv6(raw)

    backend = raw.backend if isinstance(raw.backend, dict) else JSONObject([])
    return NetworkConfig(
        enable_ipv4=raw.enable_ipv4,
        enable_ipv6=raw.enable_ipv6,
        enable_nftables=raw.enable_nftables,
        network=network,
        subnet_len=subnet_len,
        subnet_min=smin,
        subnet_max=smax,
        ipv6_network=network6,
        ipv6_subnet_len=subnet_len6,
        ipv6_subnet_min=smin6,
        ipv6_subnet_max=smax6,
        backend_type=backend_type,
        backend=backend,
    )


# -- backend options ---------------------------------------------------------------------------

_GO_TYPES: dict[type, str] = {bool: "bool", int: "int", float: "float64", str: "string"}


def _accepts(type_: type, value: Any) -> bool:
    if type_ is bool:
        return isinstance(value, bool)
    if type_ is int:
        return isinstance(value, int) and not isinstance(value, bool) and -(1 << 63) <= value < (1 << 63)
    if type_ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) != float("inf")
    if type_ is dict:
        return isinstance(value, dict)
    if type_ is list:
        return isinstance(value, list)
    return isinstance(value, type_)


def backend_option(backend: Mapping[str, Any], name: str, default: T, type_: type[T]) -> T:
    """One option of the ``Backend`` object, decoded as Go's ``json.Unmarshal`` into a backend struct.

    The key is matched case-insensitively (the last matching key wins); a missing key or ``null``
    gives ``default``. A value of the wrong JSON type raises :class:`ConfigError` with Go's text,
    e.g. ``json: cannot unmarshal string into Go struct field .VNI of type int`` (flannel's backend
    structs are anonymous, hence the empty struct name). ``int`` means Go ``int`` (int64), so a
    number with a fraction or exponent is rejected as in Go; ``float`` accepts any number.
    """
    result: Any = default
    for _field, value in iter_fields(backend, (name,)):
        if value is None:
            continue
        if not _accepts(type_, value):
            go_type = _GO_TYPES.get(type_, type_.__name__)
            raise ConfigError(unmarshal_type_error(value, "." + name, go_type))
        result = float(value) if type_ is float else value
    return result  # type: ignore[no-any-return]
