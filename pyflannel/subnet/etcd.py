"""The etcd v3 registry: the only module of pyflannel that talks to etcd.

Keys and values are flannel's (``<prefix>/config``, ``<prefix>/subnets/10.5.72.0-24`` holding the
lease JSON, attached to an etcd lease), so pyflannel and real flanneld nodes share one registry.

etcd is reached through the gRPC-gateway JSON API it serves on its client port (``/v3/kv/range``,
``/v3/watch``, ...; etcd >= 3.4), over asyncio streams with a small HTTP/1.1 client of our own: no
grpcio, no generated protobuf modules (about 18 MB less memory and 0.1 s less start-up).

Differences from flannel, each deliberate:

* Listing subnets costs a few Range requests of growing pages at one revision (flannel: one), and
  no ``LeaseTimeToLive`` per key: flannel sends one per listed key, but only our *own* lease needs
  an expiration, so we ask for that one alone (issue "performance": etcd load). The pages let the
  backend program the first peers while etcd still encodes the rest.
* Renewal puts the key on a fresh etcd lease (as flannel) and then revokes the old etcd lease, which
  flannel leaves to expire with no keys attached.
* The watch reports compaction and cancellation as :class:`Compacted`, so the caller re-lists
  instead of hot-looping (flannel #2470).
* Errors leave this module as :class:`RegistryError` (one line, no gRPC dump), with
  :class:`RegistryUnavailable` for the transient kind the caller retries with backoff.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from pyflannel.settings import EtcdSettings
from pyflannel.subnet.lease import Lease, LeaseAttrs, LeaseError, make_subnet_key, parse_subnet_key

log = logging.getLogger(__name__)

# Per-request deadline: etcd answers in milliseconds; anything slower is an outage, which the caller
# handles with backoff rather than a hang (flannel #1633).
RPC_TIMEOUT = 5.0

# Watch reconnect backoff (flannel #1830, #2171: no CPU spin while etcd is down).
_WATCH_BACKOFF_MIN = 0.2
_WATCH_BACKOFF_MAX = 5.0
# Keys per Range request when listing subnets: about 320 kB of JSON, 20 ms of etcd's time.
LIST_PAGE = 1000
# The first page is small, so that the first leases are in a caller's hands a few ms after asking.
FIRST_PAGE = 100
# Idle keep-alive connections kept per endpoint for unary requests.
_MAX_IDLE = 4
# Largest response we accept (a listing of 64k leases is ~15 MB of JSON).
_MAX_BODY = 64 * 1024 * 1024

# gRPC status codes that etcd sends through the gateway ("code" in an error body).
_UNAUTHENTICATED = 16
_TRANSIENT_CODES = {4, 8, 10, 14}  # DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, UNAVAILABLE
_TRANSIENT_TEXTS = ("no leader", "leader changed", "request timed out", "too many requests", "not capable")
_CODE_NAMES = {
    1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
    15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}


class RegistryError(Exception):
    """An etcd request failed for a reason that retrying will not fix by itself."""


class RegistryUnavailable(RegistryError):
    """etcd could not be reached or did not answer in time; retry with backoff."""


class SubnetExists(RegistryError):
    """The create-if-absent transaction found the key already taken."""


class Compacted(RegistryError):
    """The watch's start revision was compacted (or the watch was cancelled): re-list."""


@dataclass(frozen=True)
class Listing:
    """All subnet leases at one revision, plus the keys whose values could not be read."""

    leases: list[Lease]
    revision: int
    bad_keys: list[tuple[str, str]]  # (key, reason)


@dataclass(frozen=True)
class WatchEvent:
    """One change of a subnet key. ``lease`` is None for a delete or an unreadable value."""

    key: str
    deleted: bool
    lease: Lease | None
    error: str | None = None


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool


def parse_endpoints(endpoints: Sequence[str]) -> list[Endpoint]:
    """Parse flannel's comma-separated endpoint URLs (``http://127.0.0.1:2379``)."""
    out: list[Endpoint] = []
    for raw in endpoints:
        for item in raw.split(","):
            item = item.strip()
            if not item:
                continue
            url = urllib.parse.urlsplit(item if "://" in item else "http://" + item)
            if url.scheme not in ("http", "https"):
                raise RegistryError(f"invalid etcd endpoint {item!r}: scheme must be http or https")
            if not url.hostname:
                raise RegistryError(f"invalid etcd endpoint {item!r}: no host")
            try:
                port = url.port or 2379
            except ValueError:
                raise RegistryError(f"invalid etcd endpoint {item!r}: bad port") from None
            out.append(Endpoint(url.hostname, port, url.scheme == "https"))
    if not out:
        raise RegistryError("no etcd endpoints given")
    return out


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise RegistryError(f"cannot read etcd {what} {path}: {e.strerror}") from None


# -- error texts ------------------------------------------------------------------------------

_VERIFY_RE = re.compile(r"CERTIFICATE_VERIFY_FAILED\]? ?(?:certificate verify failed)?:? ?([^:()]*)")
_HANDSHAKE_RE = re.compile(r"(?:Tls|Ssl) handshake failed[^:]*: ?(?:SSL_ERROR_SSL: )?([^)]*)")
# Alerts a TLS server sends when it does not accept our client certificate (or its absence). With
# TLS 1.3 they arrive after the client finished the handshake, on the first read.
_CERT_REFUSED_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA",
    "TLSV1_ALERT_ACCESS_DENIED",
    "TLSV1_ALERT_DECRYPT_ERROR",
}
_CERT_REFUSED = (
    "etcd TLS handshake failed: etcd refused our client certificate (missing, expired or not "
    "signed by a CA etcd trusts): check --etcd-certfile and --etcd-keyfile"
)


def _verify_failed(why: str) -> str:
    why = why.strip() or "untrusted certificate"
    return (
        f"etcd TLS handshake failed: certificate verify failed ({why}): "
        "is --etcd-cafile the CA that signed etcd's certificate, and the endpoint a name in it?"
    )


def tls_problem(text: str) -> str | None:
    """Name the cause of a TLS failure described by ``text`` in one line (None: not TLS)."""
    if m := _VERIFY_RE.search(text):
        return _verify_failed(m.group(1))
    if m := _HANDSHAKE_RE.search(text):
        return f"etcd TLS handshake failed: {m.group(1).strip()}"
    if "TSI_DATA_CORRUPTED" in text or "Unwrap failed" in text or any(a in text for a in _CERT_REFUSED_ALERTS):
        return _CERT_REFUSED
    return None


def _ssl_problem(e: ssl.SSLError) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return _verify_failed(str(e.verify_message or ""))
    if e.reason in _CERT_REFUSED_ALERTS:
        return _CERT_REFUSED
    return tls_problem(str(e)) or f"etcd TLS handshake failed: {(e.reason or str(e)).lower().replace('_', ' ')}"


class _CertRefused(ConnectionError):
    """A TLS 1.3 connection closed by etcd right after the handshake, before any reply: how etcd
    turns down our client certificate when its alert is lost to the reset that follows it."""


class _ConnectTimeout(ConnectionError):
    """No TCP/TLS connection within the endpoint's share of the deadline: try the next one."""


def _one_line(e: BaseException) -> str:
    """A transport failure in one line (the TLS cause named, if it is one)."""
    if isinstance(e, _ConnectTimeout):
        return "timed out connecting to etcd"
    if isinstance(e, _CertRefused):
        return _CERT_REFUSED
    if isinstance(e, ssl.SSLError):
        return _ssl_problem(e)
    if isinstance(e, TimeoutError):
        return f"no answer within {RPC_TIMEOUT:g} s"
    if isinstance(e, asyncio.IncompleteReadError):
        return "connection closed by etcd"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ConnectionResetError):
        return "connection reset by etcd"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e)
    if (tls := tls_problem(text)) is not None:
        return tls
    return text.splitlines()[0] if text else type(e).__name__


def check_client_certificate(certfile: str, keyfile: str) -> None:
    """Refuse a client certificate that cannot work before trying it on etcd (one clear line):
    unreadable or not PEM, a key that does not match, or outside its validity period."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as e:
        raise RegistryError(
            f"etcd client certificate {certfile} / key {keyfile} unusable: {e.reason or e}"
        ) from None
    except OSError as e:
        raise RegistryError(
            f"cannot read etcd client certificate {certfile} or key {keyfile}: {e.strerror}"
        ) from None
    try:
        from cryptography import x509  # optional: the validity check needs it
    except ImportError:
        return
    try:
        with open(certfile, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return  # ssl accepted it; leave the verdict to the handshake
    now = time.time()
    if cert.not_valid_after_utc.timestamp() < now:
        raise RegistryError(
            f"etcd client certificate {certfile} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    if cert.not_valid_before_utc.timestamp() > now:
        raise RegistryError(
            f"etcd client certificate {certfile} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
        )


# -- JSON helpers -----------------------------------------------------------------------------


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def _unb64(value: Any) -> bytes:
    return base64.b64decode(value) if value else b""


def _int(value: Any) -> int:
    """An int64 field of the gateway's JSON: a string, absent when zero."""
    return int(value) if value else 0


def prefix_range_end(prefix: str) -> bytes:
    """The ``range_end`` that makes a Range or Watch cover every key starting with ``prefix``."""
    end = bytearray(prefix.encode())
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


class _EtcdReplyError(Exception):
    """etcd (through the gateway) answered with an error status."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def transient(self) -> bool:
        return (
            self.code in _TRANSIENT_CODES
            or self.status in (502, 503, 504)
            or any(t in self.message for t in _TRANSIENT_TEXTS)
        )

    def one_line(self) -> str:
        name = _CODE_NAMES.get(self.code, f"HTTP {self.status}")
        return f"{name}: {self.message.splitlines()[0] if self.message else 'no details'}"


def _reply_error(status: int, body: bytes) -> _EtcdReplyError:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):  # a stream's error object
            return _EtcdReplyError(status, _int(err.get("grpc_code")), str(err.get("message") or ""))
        message = doc.get("message") or err or ""
        return _EtcdReplyError(status, _int(doc.get("code")), str(message))
    text = body.decode("utf-8", "replace").strip()
    return _EtcdReplyError(status, 0, text[:200] or f"HTTP status {status}")


# -- HTTP/1.1 over asyncio streams ------------------------------------------------------------


class _Conn:
    """One HTTP/1.1 connection to one endpoint (one request at a time)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        ssl_object = writer.get_extra_info("ssl_object")
        # Until a first reply arrives, a reset of a TLS 1.3 connection means "certificate refused".
        self.unproven_tls13 = ssl_object is not None and ssl_object.version() == "TLSv1.3"

    def refusal(self, e: BaseException) -> BaseException:
        """``e``, or the TLS alert behind it, or :class:`_CertRefused` if it is how etcd turns down
        our certificate."""
        if isinstance(e, (ConnectionResetError, BrokenPipeError)):
            # The alert often ends the connection while our request is still being sent: the
            # write side then says only "Connection lost", the reader holds the reason.
            cause = self.reader.exception()
            if isinstance(cause, ssl.SSLError):
                return cause
        if self.unproven_tls13 and isinstance(e, (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError)):
            return _CertRefused("client certificate refused")
        return e

    def close(self) -> None:
        self.writer.close()  # never raises; a half-gone transport is fine

    async def send(self, host: str, path: str, body: bytes, token: str | None) -> None:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json\r\nContent-Length: {len(body)}\r\n"
        )
        if token:
            head += f"Authorization: {token}\r\n"
        self.writer.write(head.encode("latin-1") + b"\r\n" + body)
        await self.writer.drain()

    async def read_head(self) -> tuple[int, dict[str, str]]:
        line = await self.reader.readline()
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ConnectionError(f"not an HTTP response from etcd: {line[:60]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if not line:
                raise asyncio.IncompleteReadError(b"", None)
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        self.unproven_tls13 = False
        if status == 100:
            return await self.read_head()
        return status, headers

    async def read_chunk(self) -> bytes | None:
        """The next chunk of a chunked body; None after the last one (trailers consumed)."""
        line = await self.reader.readline()
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while (line := await self.reader.readline()) not in (b"\r\n", b"\n"):
                if not line:
                    raise asyncio.IncompleteReadError(b"", None)
            return None
        if size > _MAX_BODY:
            raise ConnectionError("chunk too large")
        data = await self.reader.readexactly(size)
        await self.reader.readexactly(2)
        return data

    async def read_body(self, headers: dict[str, str]) -> tuple[bytes, bool]:
        """The whole body, and whether the connection can be reused."""
        keep = headers.get("connection", "").lower() != "close"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            total = 0
            while (chunk := await self.read_chunk()) is not None:
                parts.append(chunk)
                total += len(chunk)
                if total > _MAX_BODY:
                    raise ConnectionError("response too large")
            return b"".join(parts), keep
        if "content-length" in headers:
            n = int(headers["content-length"])
            if n > _MAX_BODY:
                raise ConnectionError("response too large")
            return await self.reader.readexactly(n), keep
        return await self.reader.read(_MAX_BODY), False


class EtcdRegistry:
    """flannel's subnet registry over etcd v3 (``pkg/subnet/etcd/registry.go`` in flannel)."""

    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        self.prefix = settings.prefix.rstrip("/")
        self.subnets_prefix = self.prefix + "/subnets/"
        self._endpoints: list[Endpoint] = []
        self._current = 0  # index of the endpoint that answered last
        self._ssl: ssl.SSLContext | None = None
        self._idle: dict[Endpoint, list[_Conn]] = {}
        self._token: str | None = None
        self._connected = False
        self.requests = 0  # count of etcd requests sent, for bench/ (etcd load figure)

    # -- connection ---------------------------------------------------------------------------

    def _make_ssl(self) -> ssl.SSLContext | None:
        s = self.settings
        endpoints = self._endpoints
        use_tls = any(e.tls for e in endpoints) or bool(s.cafile) or bool(s.certfile and s.keyfile)
        if bool(s.certfile) != bool(s.keyfile):
            log.warning("--etcd-certfile and --etcd-keyfile must be given together; no client certificate used")
        if not use_tls:
            log.warning("no certificate provided: connecting to etcd with http. This is insecure")
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if s.cafile:
            ca = _read(s.cafile, "CA file")
            try:
                ctx.load_verify_locations(cadata=ca.decode("ascii", "replace"))
            except (ssl.SSLError, ValueError) as e:
                raise RegistryError(f"etcd CA file {s.cafile} unusable: {getattr(e, 'reason', None) or e}") from None
        else:
            ctx.load_default_certs()
        if s.certfile and s.keyfile:
            _read(s.certfile, "certificate file")
            _read(s.keyfile, "key file")
            check_client_certificate(s.certfile, s.keyfile)
            ctx.load_cert_chain(s.certfile, s.keyfile)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    async def connect(self) -> None:
        self._endpoints = parse_endpoints(self.settings.endpoints)
        self._ssl = self._make_ssl()
        self._connected = True
        if self.settings.username:
            await self._authenticate()

    async def close(self) -> None:
        self._connected = False
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()

    async def _open(self, ep: Endpoint, deadline: float, keepalive: bool = False) -> _Conn:
        # Each endpoint gets a share of the deadline, so that one black hole leaves time for the next.
        share = max(1.0, RPC_TIMEOUT / len(self._endpoints))
        timeout = min(deadline - time.monotonic(), share)
        if timeout <= 0:
            raise TimeoutError
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    ep.host, ep.port, ssl=self._ssl, server_hostname=ep.host if self._ssl else None,
                    limit=1 << 20,
                ),
                timeout,
            )
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise
            raise _ConnectTimeout("timed out connecting to etcd") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if keepalive:  # a watch stream is idle for minutes: notice a dead peer in ~20 s
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)
            except OSError:
                pass
        return _Conn(reader, writer)

    def _order(self) -> list[Endpoint]:
        n = len(self._endpoints)
        return [self._endpoints[(self._current + i) % n] for i in range(n)]

    async def _post_once(self, ep: Endpoint, path: str, body: bytes, deadline: float) -> tuple[int, bytes]:
        """One request on one endpoint: an idle connection if there is one, else a new one."""
        idle = self._idle.setdefault(ep, [])
        while True:
            conn = idle.pop() if idle else None
            fresh = conn is None
            if conn is None:
                conn = await self._open(ep, deadline)
            got_reply = False
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await conn.send(f"{ep.host}:{ep.port}", path, body, self._token)
                    status, headers = await conn.read_head()
                    got_reply = True
                    data, keep = await conn.read_body(headers)
            except (OSError, asyncio.IncompleteReadError, EOFError) as e:
                conn.close()
                # A kept-alive connection etcd closed meanwhile: one more try on a new one.
                if not fresh and not got_reply and not isinstance(e, ssl.SSLError):
                    continue
                refusal = conn.refusal(e)
                if refusal is e:
                    raise
                raise refusal from None
            except BaseException:
                conn.close()
                raise
            if keep and len(idle) < _MAX_IDLE and self._connected:
                idle.append(conn)
            else:
                conn.close()
            return status, data

    async def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` to the first endpoint that answers; the decoded reply (or an error)."""
        if not self._connected:
            raise RegistryError("registry is not connected")
        body = json.dumps(payload, separators=(",", ":")).encode()
        deadline = time.monotonic() + RPC_TIMEOUT
        last: BaseException | None = None
        for ep in self._order():
            try:
                status, data = await self._post_once(ep, path, body, deadline)
            except TimeoutError as e:
                last = e
                break  # the deadline is for the whole request, not per endpoint
            except (OSError, asyncio.IncompleteReadError, EOFError) as e:
                last = e
                continue
            self._current = self._endpoints.index(ep)
            if status != 200:
                raise _reply_error(status, data)
            try:
                doc = json.loads(data) if data else {}
            except ValueError:
                raise _EtcdReplyError(status, 0, "etcd sent a reply that is not JSON") from None
            if not isinstance(doc, dict):
                raise _EtcdReplyError(status, 0, "etcd sent a reply that is not a JSON object")
            return doc
        assert last is not None
        raise last

    async def _authenticate(self) -> None:
        user = self.settings.username
        self._token = None
        try:
            resp = await self._post("/v3/auth/authenticate", {"name": user, "password": self.settings.password})
        except _EtcdReplyError as e:
            if e.code == _UNAUTHENTICATED:
                raise RegistryError(f"etcd authentication failed for user {user!r}") from None
            if "authentication failed" in e.message:  # etcd says INVALID_ARGUMENT for a bad password
                raise RegistryError(
                    f"etcd authentication failed for user {user!r}: invalid user name or password"
                ) from None
            raise RegistryUnavailable(f"etcd authentication: {e.one_line()}") from None
        except (OSError, asyncio.IncompleteReadError, EOFError) as e:
            raise RegistryUnavailable(f"etcd authentication: {_one_line(e)}") from None
        self._token = str(resp.get("token") or "") or None

    async def _call(self, what: str, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one request with a deadline, mapping every failure to a one-line RegistryError."""
        self.requests += 1
        for attempt in (1, 2):
            try:
                return await self._post(path, payload)
            except _EtcdReplyError as e:
                if e.code == _UNAUTHENTICATED or (e.status == 401 and not e.code):
                    # Simple-token auth expires (5 min by default): log in again once.
                    if attempt == 1 and self.settings.username:
                        await self._authenticate()
                        continue
                    raise RegistryError(f"{what}: etcd refused the credentials") from None
                if e.transient():
                    raise RegistryUnavailable(f"{what}: etcd unavailable ({e.one_line()})") from None
                raise RegistryError(f"{what}: {e.one_line()}") from None
            except (OSError, asyncio.IncompleteReadError, EOFError) as e:
                raise RegistryUnavailable(f"{what}: etcd unavailable ({_one_line(e)})") from None
        raise AssertionError("unreachable")

    async def _range(self, what: str, key: str, range_end: bytes | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"key": _b64(key)}
        if range_end is not None:
            payload["range_end"] = _b64(range_end)
        return await self._call(what, "/v3/kv/range", payload)

    async def _lease_call(self, what: str, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        """``/v3/lease/<name>``, or ``/v3/kv/lease/<name>`` on an etcd that only knows that one."""
        try:
            return await self._call(what, f"/v3/lease/{name}", payload)
        except RegistryError as e:
            if "HTTP 404" not in str(e) and "NOT_FOUND: Not Found" not in str(e):
                raise
        return await self._call(what, f"/v3/kv/lease/{name}", payload)

    # -- config -------------------------------------------------------------------------------

    async def get_config(self) -> bytes | None:
        """The network config value, or None when the key does not exist."""
        resp = await self._range("get network config", self.prefix + "/config")
        kvs = resp.get("kvs") or []
        if not kvs:
            return None
        return _unb64(kvs[0].get("value"))

    # -- leases -------------------------------------------------------------------------------

    def key_for(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None) -> str:
        return self.subnets_prefix + make_subnet_key(subnet, ipv6_subnet)

    def _decode(self, key: str, value: bytes, lease_id: int) -> Lease:
        parsed = parse_subnet_key(key[len(self.subnets_prefix):])
        if parsed is None:
            raise LeaseError("key does not name a subnet")
        attrs = LeaseAttrs.from_json(value)
        return Lease(subnet=parsed[0], ipv6_subnet=parsed[1], attrs=attrs)

    def _decode_page(self, kvs: list[dict[str, Any]], revision: int) -> Listing:
        leases: list[Lease] = []
        bad: list[tuple[str, str]] = []
        for kv in kvs:
            key = _unb64(kv.get("key")).decode("utf-8", "replace")
            try:
                leases.append(self._decode(key, _unb64(kv.get("value")), _int(kv.get("lease"))))
            except (LeaseError, ValueError) as e:
                bad.append((key, str(e)))
        return Listing(leases, revision, bad)

    async def subnet_pages(
        self, page_size: int = LIST_PAGE, first_page: int = FIRST_PAGE
    ) -> AsyncGenerator[Listing, None]:
        """Every lease under ``<prefix>/subnets/`` in Range requests of ``first_page`` keys, then four
        times as many up to ``page_size``, all at the revision of the first page. The next page is
        requested before this one is decoded, so etcd encodes while we decode, and a caller can act
        on the first leases a few ms after asking (start-up time, issue 6).
        :class:`Compacted` if that revision is compacted before the last page."""
        subnets, end = self.subnets_prefix, _b64(prefix_range_end(self.subnets_prefix))
        limit = min(first_page, page_size)
        payload: dict[str, Any] = {"key": _b64(subnets), "range_end": end, "limit": str(limit)}
        resp = await self._call("list subnets", "/v3/kv/range", payload)
        revision = _int((resp.get("header") or {}).get("revision"))
        while True:
            kvs = resp.get("kvs") or []
            following: asyncio.Task[dict[str, Any]] | None = None
            if resp.get("more") and kvs:
                after = _unb64(kvs[-1].get("key")) + b"\0"
                limit = min(limit * 4, page_size)  # growing pages: the caller is never idle for long
                payload = {"key": _b64(after), "range_end": end, "limit": str(limit), "revision": str(revision)}
                following = asyncio.create_task(self._call("list subnets", "/v3/kv/range", payload))
            try:
                yield self._decode_page(kvs, revision)
                if following is None:
                    return
                resp = await following
            except RegistryError as e:
                if "compacted" in str(e):
                    raise Compacted(f"listing subnets at revision {revision}: {e}") from None
                raise
            finally:
                if following is not None and not following.done():
                    following.cancel()
                    with contextlib.suppress(asyncio.CancelledError, RegistryError):
                        await following

    async def list_subnets(self) -> Listing:
        """Every lease under ``<prefix>/subnets/`` at one revision (paged; a compaction between
        pages starts over)."""
        for attempt in range(3):
            leases: list[Lease] = []
            bad: list[tuple[str, str]] = []
            revision = 0
            try:
                async with contextlib.aclosing(self.subnet_pages()) as pages:
                    async for page in pages:
                        leases.extend(page.leases)
                        bad.extend(page.bad_keys)
                        revision = page.revision
            except Compacted:
                if attempt == 2:
                    raise
                continue
            return Listing(leases, revision, bad)
        raise AssertionError("unreachable")

    async def get_subnet(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None) -> Lease | None:
        key = self.key_for(subnet, ipv6_subnet)
        resp = await self._range("get subnet", key)
        kvs = resp.get("kvs") or []
        if not kvs:
            return None
        kv = kvs[0]
        lease = self._decode(key, _unb64(kv.get("value")), _int(kv.get("lease")))
        return await self._with_expiration(lease, _int(kv.get("lease")))

    async def _with_expiration(self, lease: Lease, lease_id: int) -> Lease:
        if lease_id == 0:
            return lease  # a reservation: no etcd lease, never expires
        ttl = await self._lease_call("lease time-to-live", "timetolive", {"ID": str(lease_id)})
        remaining = _int(ttl.get("TTL"))
        expiration = time.time() + remaining if remaining >= 0 else None
        return Lease(lease.subnet, lease.ipv6_subnet, lease.attrs, expiration)

    async def _grant(self, ttl: int) -> tuple[int, int]:
        resp = await self._call("grant lease", "/v3/lease/grant", {"TTL": str(ttl)})
        lease_id = _int(resp.get("ID"))
        if not lease_id:
            raise RegistryError(f"grant lease: {resp.get('error') or 'etcd granted no lease'}")
        return lease_id, _int(resp.get("TTL"))

    async def create_subnet(
        self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None, attrs: LeaseAttrs, ttl: int
    ) -> Lease:
        """Create the lease only if the key is absent (flannel's ``createSubnet``)."""
        key = self.key_for(subnet, ipv6_subnet)
        lease_id, granted = await self._grant(ttl)
        txn = {
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": "VERSION", "version": "0"}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(attrs.to_json()), "lease": str(lease_id)}}],
        }
        try:
            resp = await self._call("create subnet", "/v3/kv/txn", txn)
        except RegistryError:
            await self._revoke_quietly(lease_id)
            raise
        if not resp.get("succeeded"):
            await self._revoke_quietly(lease_id)
            raise SubnetExists(f"subnet {make_subnet_key(subnet, ipv6_subnet)} already exists")
        return Lease(subnet, ipv6_subnet, attrs, time.time() + granted)

    async def update_subnet(
        self,
        subnet: IPv4Network,
        ipv6_subnet: IPv6Network | None,
        attrs: LeaseAttrs,
        ttl: int,
        old_lease_id: int | None = None,
    ) -> Lease:
        """Put the lease on a fresh etcd lease (renewal, or reuse of a lease found by public IP)."""
        key = self.key_for(subnet, ipv6_subnet)
        lease_id, granted = await self._grant(ttl)
        put = {"key": _b64(key), "value": _b64(attrs.to_json()), "lease": str(lease_id), "prev_kv": True}
        try:
            resp = await self._call("update subnet", "/v3/kv/put", put)
        except RegistryError:
            await self._revoke_quietly(lease_id)
            raise
        prev = resp.get("prev_kv")
        previous = _int(prev.get("lease")) if isinstance(prev, dict) else 0
        if previous and previous != lease_id:
            # The old etcd lease has no key left; flannel lets it linger for a day.
            await self._revoke_quietly(previous)
        return Lease(subnet, ipv6_subnet, attrs, time.time() + granted)

    async def delete_subnet(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None) -> None:
        await self.delete_key(self.key_for(subnet, ipv6_subnet))

    async def delete_key(self, key: str) -> None:
        await self._call("delete subnet", "/v3/kv/deleterange", {"key": _b64(key)})

    async def _revoke_quietly(self, lease_id: int) -> None:
        try:
            await self._lease_call("revoke lease", "revoke", {"ID": str(lease_id)})
        except RegistryError as e:
            log.debug("revoking etcd lease %x: %s", lease_id, e)

    # -- watch --------------------------------------------------------------------------------

    async def _open_watch(self, start_revision: int) -> _Conn:
        """A watch stream from ``start_revision`` on the first endpoint that takes it."""
        create = {
            "create_request": {
                "key": _b64(self.subnets_prefix),
                "range_end": _b64(prefix_range_end(self.subnets_prefix)),
                "start_revision": str(start_revision),
                "progress_notify": True,
            }
        }
        body = json.dumps(create, separators=(",", ":")).encode()
        deadline = time.monotonic() + RPC_TIMEOUT
        last: BaseException | None = None
        for ep in self._order():
            conn: _Conn | None = None
            try:
                conn = await self._open(ep, deadline, keepalive=True)
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await conn.send(f"{ep.host}:{ep.port}", "/v3/watch", body, self._token)
                    status, headers = await conn.read_head()
                    if status != 200:
                        data, _ = await conn.read_body(headers)
                        conn.close()
                        raise _reply_error(status, data)
            except TimeoutError as e:
                if conn is not None:
                    conn.close()
                last = e
                break
            except (OSError, asyncio.IncompleteReadError, EOFError) as e:
                if conn is not None:
                    conn.close()
                last = conn.refusal(e) if conn is not None else e
                continue
            self._current = self._endpoints.index(ep)
            if "chunked" not in headers.get("transfer-encoding", "").lower():
                conn.close()
                raise _EtcdReplyError(status, 0, "etcd did not stream the watch (no chunked reply)")
            return conn
        assert last is not None
        raise last

    @staticmethod
    async def _messages(conn: _Conn) -> AsyncGenerator[dict[str, Any], None]:
        """The JSON objects of a watch stream (the gateway writes them one after another)."""
        decoder = json.JSONDecoder()
        buf = ""
        while True:
            chunk = await conn.read_chunk()
            if chunk is None:
                raise asyncio.IncompleteReadError(b"", None)  # etcd ended the stream
            buf += chunk.decode("utf-8")
            while True:
                buf = buf.lstrip()
                if not buf:
                    break
                try:
                    doc, end = decoder.raw_decode(buf)
                except ValueError:
                    if len(buf) > _MAX_BODY:
                        raise ConnectionError("watch message too large") from None
                    break  # incomplete: wait for more
                buf = buf[end:]
                if isinstance(doc, dict):
                    yield doc

    async def watch_subnets(self, start_revision: int) -> AsyncGenerator[tuple[int, list[WatchEvent]], None]:
        """Yield ``(revision, events)`` for every watch response from ``start_revision`` on.

        A dropped stream is resumed from the last seen revision + 1 (backoff 0.2 s to 5 s; one
        line when it is lost, one when it resumes); a compacted start revision or a cancelled watch
        raises :class:`Compacted` (the caller re-lists).
        """
        if not self._connected:
            raise RegistryError("registry is not connected")
        self.requests += 1
        next_rev = start_revision
        backoff = _WATCH_BACKOFF_MIN
        outage_since: float | None = None
        reauthed = False
        conn: _Conn | None = None
        try:
            while True:
                try:
                    conn = await self._open_watch(next_rev)
                    async for msg in self._messages(conn):
                        if "error" in msg:
                            raise _reply_error(200, json.dumps(msg).encode())
                        resp = msg.get("result")
                        if not isinstance(resp, dict):
                            continue
                        if outage_since is not None:
                            log.info("etcd watch resumed after %.1f s", time.monotonic() - outage_since)
                            outage_since = None
                        backoff = _WATCH_BACKOFF_MIN
                        reauthed = False
                        if _int(resp.get("compact_revision")):
                            raise Compacted(
                                f"watch revision {start_revision} compacted (now {_int(resp['compact_revision'])})"
                            )
                        if resp.get("canceled"):
                            reason = resp.get("cancel_reason") or "no reason given"
                            raise Compacted(f"watch cancelled by etcd: {reason}")
                        revision = _int((resp.get("header") or {}).get("revision"))
                        raw_events = resp.get("events") or []
                        if not raw_events and not resp.get("created") and revision:
                            next_rev = max(next_rev, revision + 1)  # progress notification
                        events: list[WatchEvent] = []
                        for ev in raw_events:
                            kv = ev.get("kv") or {}
                            key = _unb64(kv.get("key")).decode("utf-8", "replace")
                            next_rev = max(next_rev, _int(kv.get("mod_revision")) + 1)
                            if ev.get("type") in ("DELETE", 1):
                                events.append(WatchEvent(key, True, None))
                                continue
                            try:
                                lease = self._decode(key, _unb64(kv.get("value")), _int(kv.get("lease")))
                                events.append(WatchEvent(key, False, lease))
                            except (LeaseError, ValueError) as e:
                                events.append(WatchEvent(key, False, None, str(e)))
                        yield revision, events
                except _EtcdReplyError as e:
                    if e.code == _UNAUTHENTICATED or (e.status == 401 and not e.code):
                        if self.settings.username and not reauthed:
                            reauthed = True
                            await self._authenticate()
                            continue
                        raise RegistryUnavailable("watch subnets: etcd refused the credentials") from None
                    if not e.transient():
                        raise RegistryUnavailable(f"watch subnets: {e.one_line()}") from None
                    why = e.one_line()
                except (OSError, asyncio.IncompleteReadError, EOFError, UnicodeDecodeError) as e:
                    why = _one_line(e)
                if conn is not None:
                    conn.close()
                    conn = None
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning("etcd watch connection lost (%s); reconnecting with backoff up to 5 s", why)
                else:
                    log.debug("etcd watch reconnect failed: %s", why)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _WATCH_BACKOFF_MAX)
        finally:
            if conn is not None:
                conn.close()
