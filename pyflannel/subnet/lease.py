"""Leases: the etcd key of a subnet and the JSON value flannel stores under it.

Both are a wire format shared with real flanneld nodes in the same registry, so they are written
byte for byte as flannel's Go code writes them:

* key ``10.5.72.0-24`` (IPv4) or ``10.12.13.0-24&fd00:12:13::-56`` (dual stack, IPv6 in Go's
  compressed form), under ``<prefix>/subnets/``;
* value ``{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{...}}``:
  the fields of Go's ``LeaseAttrs`` in declaration order, compact, ``PublicIPv6`` always present
  (``null`` or a string), the last three left out when empty (``omitempty``), strings escaped as
  Go's encoder does (``<``, ``>``, ``&`` as ``\\u003c`` ...).

Reading is as tolerant as Go's decoder (case-insensitive keys, unknown keys ignored) with one
deliberate difference: a value without a valid IPv4 ``PublicIP`` is rejected (:class:`LeaseError`),
where Go silently reads ``0.0.0.0`` and a backend would then route a subnet to nowhere. Likewise a
``PublicIPv6`` that is not an IPv6 address is rejected (Go accepts an IPv4 one).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from pyflannel.config import GoJSONError, RawFloat, go_json_loads, iter_fields, json_kind


class LeaseError(ValueError):
    """A lease value (or key) that cannot be used; ``str()`` is one line."""


# -- Go-compatible JSON output -----------------------------------------------------------------

_HEX = "0123456789abcdef"
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _go_string(s: str) -> str:
    """A JSON string exactly as Go's ``encoding/json`` writes it (HTML-safe escaping on)."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif o < 0x20 or ch in "<>&":
            out.append("\\u00" + _HEX[o >> 4] + _HEX[o & 0xF])
        elif ch in "\u2028\u2029":
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append("\\ufffd")  # a lone surrogate is invalid UTF-8 to Go
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _go_float(f: float) -> str:
    """Go's float64 encoding: shortest digits, ``e`` form only below 1e-6 or from 1e21 on."""
    if not math.isfinite(f):
        raise LeaseError(f"json: unsupported value: {f!r}")
    a = abs(f)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        text = repr(f)
        mant, _, exp = text.partition("e")
        sign, digits = exp[0], exp[1:].lstrip("0") or "0"
        if sign == "+" and len(digits) < 2:
            digits = digits.rjust(2, "0")
        return f"{mant}e{sign}{digits}"
    return format(Decimal(repr(f)).normalize(), "f")


def go_json_dumps(value: Any) -> str:
    """Compact JSON in Go's format. Dicts keep their order (Go keeps a RawMessage's order)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, RawFloat):
        return value.raw  # a number read from JSON is re-emitted as written (RawMessage)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, dict):
        return "{" + ",".join(_go_string(str(k)) + ":" + go_json_dumps(v) for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(go_json_dumps(v) for v in value) + "]"
    raise LeaseError(f"json: unsupported type: {type(value).__name__}")


def go_ipv6_string(addr: IPv6Address) -> str:
    """flannel's ``ip.IP6.String()``.

    RFC 5952 compressed form, except for the two ranges Go prints as dotted IPv4: IPv4-mapped
    addresses (``net.IP.String``) and values in [2^24, 2^32) (flannel's big.Int round trip makes a
    4-byte ``net.IP`` of them).
    """
    n = int(addr)
    if addr.ipv4_mapped is not None or (1 << 24) <= n < (1 << 32):
        return str(IPv4Address(n & 0xFFFFFFFF))
    return addr.compressed


# -- attributes --------------------------------------------------------------------------------

_ATTR_FIELDS = ("PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data")


def _one_line(text: str) -> str:
    return text.replace("\n", "\\n")


@dataclass(frozen=True, slots=True)
class LeaseAttrs:
    """flannel's ``LeaseAttrs``: who owns a subnet and how backends reach it.

    ``backend_data`` / ``backend_v6_data`` hold the decoded JSON value (a dict for vxlan, a string
    for extension), or None when absent.
    """

    public_ip: IPv4Address
    public_ipv6: IPv6Address | None = None
    backend_type: str = ""
    backend_data: Any = None
    backend_v6_data: Any = None

    def to_json(self) -> str:
        """The etcd value, byte for byte as flannel's ``json.Marshal(attrs)``."""
        parts = [
            '"PublicIP":"' + str(self.public_ip) + '"',
            '"PublicIPv6":'
            + ("null" if self.public_ipv6 is None else f'"{go_ipv6_string(self.public_ipv6)}"'),
        ]
        if self.backend_type:
            parts.append('"BackendType":' + _go_string(self.backend_type))
        if self.backend_data is not None:
            parts.append('"BackendData":' + go_json_dumps(self.backend_data))
        if self.backend_v6_data is not None:
            parts.append('"BackendV6Data":' + go_json_dumps(self.backend_v6_data))
        return "{" + ",".join(parts) + "}"

    @classmethod
    def from_json(cls, text: str | bytes) -> LeaseAttrs:
        """Decode an etcd value; :class:`LeaseError` (one line) if it is not a usable lease.

        Values written by flannel (and by us) use the exact Go field names, which the C JSON decoder
        handles 5x faster than the Go-rules decoder; anything else takes the Go-rules path.
        """
        try:
            # One decoder for all (json.loads with options builds a new one per call) and strict
            # UTF-8 without BOM detection, as Go reads it: whatever fails here takes the Go path.
            doc = _FAST_DECODER.decode(text if isinstance(text, str) else text.decode())
        except (ValueError, UnicodeDecodeError):
            doc = None
        if type(doc) is dict and doc.keys() <= _CANONICAL_FIELDS:
            ip, btype = doc.get("PublicIP"), doc.get("BackendType")
            if type(ip) is str and (btype is None or type(btype) is str) and doc.get("PublicIPv6") is None:
                fast = _fast_ipv4(ip)
                return cls(IPv4Address(fast) if fast is not None else _parse_public_ip(ip), None,
                           btype or "", doc.get("BackendData"), doc.get("BackendV6Data"))
        return cls._from_go_json(text)

    @classmethod
    def _from_go_json(cls, text: str | bytes) -> LeaseAttrs:
        try:
            doc = go_json_loads(text)
        except GoJSONError as e:
            raise LeaseError(f"invalid lease JSON: {e}") from None
        if not isinstance(doc, dict):
            raise LeaseError(
                f"json: cannot unmarshal {json_kind(doc).split()[0]} into Go value of type lease.LeaseAttrs"
            )
        public_ip: IPv4Address | None = None
        public_ipv6: IPv6Address | None = None
        backend_type = ""
        data: Any = None
        data6: Any = None
        for name, value in iter_fields(doc, _ATTR_FIELDS):
            if name == "PublicIP":
                public_ip = _parse_public_ip(value)
            elif name == "PublicIPv6":
                public_ipv6 = None if value is None else _parse_public_ipv6(value)
            elif name == "BackendType":
                if value is None:
                    continue
                if not isinstance(value, str):
                    kind = json_kind(value).split()[0]
                    raise LeaseError(
                        f"json: cannot unmarshal {kind} into Go struct field LeaseAttrs.BackendType of type string"
                    )
                backend_type = value
            elif name == "BackendData":
                data = value
            else:
                data6 = value
        if public_ip is None:
            raise LeaseError("lease has no PublicIP")
        return cls(public_ip, public_ipv6, backend_type, data, data6)


_CANONICAL_FIELDS = frozenset(("PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data"))


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Go rejects NaN/Infinity; so must the fast path


_FAST_DECODER = json.JSONDecoder(parse_float=RawFloat, parse_constant=_no_constants)


def _parse_public_ip(value: Any) -> IPv4Address:
    if not isinstance(value, str):
        raise LeaseError(f"invalid PublicIP {_one_line(go_json_dumps(value))}: not a string")
    try:
        ip = ip_address(value)
    except ValueError:
        raise LeaseError(f"invalid PublicIP {_one_line(value)!r}: invalid IP address format") from None
    if isinstance(ip, IPv6Address):
        if ip.ipv4_mapped is None:
            raise LeaseError(f"invalid PublicIP {value!r}: invalid IPv4 address format")
        return ip.ipv4_mapped
    return ip


def _parse_public_ipv6(value: Any) -> IPv6Address:
    if not isinstance(value, str):
        raise LeaseError(f"invalid PublicIPv6 {_one_line(go_json_dumps(value))}: not a string")
    try:
        ip = ip_address(value)
    except ValueError:
        raise LeaseError(f"invalid PublicIPv6 {_one_line(value)!r}: invalid IP address format") from None
    if not isinstance(ip, IPv6Address):
        raise LeaseError(f"invalid PublicIPv6 {value!r}: not an IPv6 address")
    return ip


# -- keys --------------------------------------------------------------------------------------

# flannel's regexp, unanchored at the start so that it works on full etcd keys. Go's \d is ASCII
# and its $ (without the m flag) is the very end, hence re.ASCII and \Z. The unescaped dots are
# flannel's too: "1x2y3z4" passes the regexp and is then rejected as an address.
_KEY_RE = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?\Z", re.ASCII)


def make_subnet_key(sn: IPv4Network, sn6: IPv6Network | None) -> str:
    """flannel's ``MakeSubnetKey``: ``10.5.72.0-24`` or ``10.12.13.0-24&fd00:12:13::-56``."""
    key = f"{sn.network_address}-{sn.prefixlen}"
    if sn6 is None or (int(sn6.network_address) == 0 and sn6.prefixlen == 0):
        return key
    return f"{key}&{go_ipv6_string(sn6.network_address)}-{sn6.prefixlen}"


def _fast_ipv4(text: str) -> int | None:
    """A dotted quad as an int without ``ipaddress`` string parsing (8x cheaper; 5000 keys and
    values at every listing). None means "not the simple case": the caller takes the full path."""
    octets = text.split(".")
    if len(octets) != 4:
        return None
    addr = 0
    for o in octets:
        if not o.isdigit() or len(o) > 3 or (len(o) > 1 and o[0] == "0") or not o.isascii():
            return None
        v = int(o)
        if v > 255:
            return None
        addr = addr << 8 | v
    return addr


def _fast_ipv4_subnet(ip4: str, len4: str) -> IPv4Network | None:
    """The common case of a subnet key; None sends the caller to the full path, which decides."""
    addr = _fast_ipv4(ip4)
    if addr is None or len(len4) > 2:
        return None
    prefix = int(len4)
    if prefix >= 32 or addr & ((1 << (32 - prefix)) - 1):
        return None
    return IPv4Network((addr, prefix))


def parse_subnet_key(key: str) -> tuple[IPv4Network, IPv6Network | None] | None:
    """flannel's ``ParseSubnetKey``; works on a bare key or a full etcd key.

    None when the key does not match or its numbers are invalid: flannel's limits (IPv4 prefix
    0..31, IPv6 prefix 0..127: ``ParseUint`` with 5 and 7 bits) plus one of ours, host bits set
    (``10.5.72.1-24``), which flannel would carry into kernel routes that the kernel rejects.
    """
    ip4, dash, len4 = key.partition("-")
    if dash and len4.isdigit() and len4.isascii():
        # The whole key is "a.b.c.d-n" (what the regexp matches, with nothing around it).
        fast = _fast_ipv4_subnet(ip4, len4)
        if fast is not None:
            return fast, None
    m = _KEY_RE.search(key)
    if m is None:
        return None
    ip4, len4, ip6, len6 = m.groups()
    if ip6 is None:
        fast = _fast_ipv4_subnet(ip4, len4)
        if fast is not None:
            return fast, None
    try:
        prefix4 = int(len4)
        if prefix4 >= 32:
            return None
        addr4 = ip_address(ip4)
        if not isinstance(addr4, IPv4Address):
            return None
        sn = IPv4Network((addr4, prefix4))
        sn6 = None
        if ip6 is not None:
            prefix6 = int(len6)
            if prefix6 >= 128:
                return None
            addr6 = ip_address(ip6)
            if not isinstance(addr6, IPv6Address):
                return None
            sn6 = IPv6Network((addr6, prefix6))
    except ValueError:
        return None
    return sn, sn6


# -- leases ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lease:
    """A subnet, who holds it, and until when (unix time; None = unknown or no TTL)."""

    subnet: IPv4Network
    ipv6_subnet: IPv6Network | None
    attrs: LeaseAttrs
    expiration: float | None = None
    # The etcd key's identity as plain ints: (IPv4 address, prefix, IPv6 address or -1, prefix).
    # ipaddress objects hash in Python (1 us each); the watcher and the backends key their dicts
    # by this instead, for every lease of every listing (start-up time, issue 6).
    ident: tuple[int, int, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sn, sn6 = self.subnet, self.ipv6_subnet
        ident = (int(sn.network_address), sn.prefixlen, -1 if sn6 is None else int(sn6.network_address),
                 0 if sn6 is None else sn6.prefixlen)  # fmt: skip
        object.__setattr__(self, "ident", ident)

    def key(self) -> str:
        """The subnet key (relative to ``<prefix>/subnets/``)."""
        return make_subnet_key(self.subnet, self.ipv6_subnet)
