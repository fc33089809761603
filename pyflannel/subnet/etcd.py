"""The etcd v3 registry: the only module of pyflannel that talks to etcd.

Keys and values are flannel's (``<prefix>/config``, ``<prefix>/subnets/10.5.72.0-24`` holding the
lease JSON, attached to an etcd lease), so pyflannel and real flanneld nodes share one registry.

Differences from flannel, each deliberate:

* Listing subnets costs one Range request. flannel also sends one ``LeaseTimeToLive`` per key; only
  our *own* lease needs an expiration, so we ask for that one alone (issue "performance": etcd load).
* Renewal puts the key on a fresh etcd lease (as flannel) and then revokes the old etcd lease, which
  flannel leaves to expire with no keys attached.
* The watch reports compaction and cancellation as :class:`Compacted`, so the caller re-lists
  instead of hot-looping (flannel #2470).
* Errors leave this module as :class:`RegistryError` (one line, no gRPC dump), with
  :class:`RegistryUnavailable` for the transient kind the caller retries with backoff.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

# gRPC's C core prints its own lines on stderr for every failed TLS handshake (three per
# reconnect attempt); our errors already say why in one line, so keep it quiet unless asked.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc
import grpc.aio
from etcd3aio.auth import AuthService
from etcd3aio.errors import (
    EtcdConnectionError,
    EtcdError,
    EtcdTransientError,
    EtcdUnauthenticatedError,
)
from etcd3aio.kv import KVService, prefix_range_end
from etcd3aio.lease import LeaseService
from etcd3aio.watch import WatchService

from pyflannel.settings import EtcdSettings
from pyflannel.subnet.lease import Lease, LeaseAttrs, LeaseError, make_subnet_key, parse_subnet_key

log = logging.getLogger(__name__)

# Per-RPC deadline: etcd answers in milliseconds; anything slower is an outage, which the caller
# handles with backoff rather than a hang (flannel #1633).
RPC_TIMEOUT = 5.0


class _OncePerOutage(logging.Filter):
    """etcd3aio's watch logs every reconnect attempt (12 lines a minute while etcd is down); let
    only the first of an outage through. ``watch_subnets`` re-arms it when responses flow again."""

    def __init__(self) -> None:
        super().__init__()
        self.outage_since: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.outage_since is not None:
            return False
        self.outage_since = time.monotonic()
        record.msg = "etcd watch connection lost (%s); reconnecting with backoff up to 5 s"
        record.args = (record.args[0],) if isinstance(record.args, tuple) and record.args else ("?",)
        return True

    def recovered(self) -> float | None:
        """Seconds the outage lasted, if there was one (and re-arm)."""
        if self.outage_since is None:
            return None
        lasted, self.outage_since = time.monotonic() - self.outage_since, None
        return lasted


_watch_outage = _OncePerOutage()
logging.getLogger("etcd3aio.watch").addFilter(_watch_outage)


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


def _resolve(host: str) -> str:
    # gRPC's round-robin "ipv4:" target takes literals only.
    try:
        ip_address(host)
        return host
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET)
    except OSError as e:
        raise RegistryUnavailable(f"cannot resolve etcd host {host}: {e}") from None
    return str(infos[0][4][0])


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise RegistryError(f"cannot read etcd {what} {path}: {e.strerror}") from None


def _one_line(e: BaseException) -> str:
    text = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.aio.AioRpcError) else str(e)
    if (tls := tls_problem(text)) is not None:
        return tls
    return text.splitlines()[0] if text else type(e).__name__


_VERIFY_RE = re.compile(r"CERTIFICATE_VERIFY_FAILED: ?([^:)]*)")
_HANDSHAKE_RE = re.compile(r"(?:Tls|Ssl) handshake failed[^:]*: ?(?:SSL_ERROR_SSL: )?([^)]*)")


def tls_problem(text: str) -> str | None:
    """gRPC reports TLS failures as UNAVAILABLE with a long chain; name the cause in one line."""
    if m := _VERIFY_RE.search(text):
        why = m.group(1).strip() or "untrusted certificate"
        return (
            f"etcd TLS handshake failed: certificate verify failed ({why}): "
            "is --etcd-cafile the CA that signed etcd's certificate, and the endpoint a name in it?"
        )
    if m := _HANDSHAKE_RE.search(text):
        return f"etcd TLS handshake failed: {m.group(1).strip()}"
    if "TSI_DATA_CORRUPTED" in text or "Unwrap failed" in text:
        # TLS 1.3: the server checks our certificate after the client finished the handshake.
        return (
            "etcd TLS handshake failed: etcd refused our client certificate (missing, expired or not "
            "signed by a CA etcd trusts): check --etcd-certfile and --etcd-keyfile"
        )
    return None


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
        raise RegistryError(f"cannot read etcd client certificate {certfile} or key {keyfile}: {e.strerror}") from None
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
        raise RegistryError(f"etcd client certificate {certfile} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    if cert.not_valid_before_utc.timestamp() > now:
        raise RegistryError(
            f"etcd client certificate {certfile} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
        )


class EtcdRegistry:
    """flannel's subnet registry over etcd v3 (``pkg/subnet/etcd/registry.go`` in flannel)."""

    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        self.prefix = settings.prefix.rstrip("/")
        self.subnets_prefix = self.prefix + "/subnets/"
        self._channel: grpc.aio.Channel | None = None
        self._kv: KVService | None = None
        self._lease: LeaseService | None = None
        self._watch: WatchService | None = None
        self._auth: AuthService | None = None
        self.requests = 0  # count of etcd requests sent, for bench/ (etcd load figure)

    # -- connection ---------------------------------------------------------------------------

    def _make_channel(self) -> grpc.aio.Channel:
        s = self.settings
        endpoints = parse_endpoints(s.endpoints)
        use_tls = any(e.tls for e in endpoints) or bool(s.cafile) or bool(s.certfile and s.keyfile)
        if bool(s.certfile) != bool(s.keyfile):
            log.warning("--etcd-certfile and --etcd-keyfile must be given together; no client certificate used")
        if not use_tls:
            log.warning("no certificate provided: connecting to etcd with http. This is insecure")
        options: list[tuple[str, Any]] = [
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # Bounded reconnect backoff: no CPU spin while etcd is down (flannel #1830, #2171).
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 5_000),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        if len(endpoints) == 1:
            target = f"{endpoints[0].host}:{endpoints[0].port}"
        else:
            target = "ipv4:" + ",".join(f"{_resolve(e.host)}:{e.port}" for e in endpoints)
            options.append(("grpc.lb_policy_name", "round_robin"))
        if not use_tls:
            return grpc.aio.insecure_channel(target, options=options)
        ca = _read(s.cafile, "CA file") if s.cafile else None
        cert = key = None
        if s.certfile and s.keyfile:
            cert = _read(s.certfile, "certificate file")
            key = _read(s.keyfile, "key file")
            check_client_certificate(s.certfile, s.keyfile)
        if len(endpoints) > 1:
            # One name for all members: the first endpoint's host must be in every certificate.
            options.append(("grpc.ssl_target_name_override", endpoints[0].host))
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        return grpc.aio.secure_channel(target, creds, options=options)

    async def connect(self) -> None:
        self._channel = self._make_channel()
        # Retries are ours (with backoff in the daemon); a single attempt per call keeps errors prompt.
        self._kv = KVService(self._channel, max_attempts=1)
        self._lease = LeaseService(self._channel, max_attempts=1)
        self._watch = WatchService(
            self._channel, max_attempts=1, reconnect_backoff_seconds=0.2, max_reconnect_backoff_seconds=5.0
        )
        self._auth = AuthService(self._channel, max_attempts=1)
        if self.settings.username:
            await self._authenticate()

    async def _authenticate(self) -> None:
        assert self._auth is not None
        try:
            resp = await self._auth.authenticate(
                self.settings.username, self.settings.password, timeout=RPC_TIMEOUT
            )
        except EtcdUnauthenticatedError:
            raise RegistryError(
                f"etcd authentication failed for user {self.settings.username!r}"
            ) from None
        except (TimeoutError, EtcdError, grpc.aio.AioRpcError) as e:
            why = _one_line(e)
            if "authentication failed" in why:  # etcd says INVALID_ARGUMENT for a bad password
                raise RegistryError(
                    f"etcd authentication failed for user {self.settings.username!r}: invalid user name or password"
                ) from None
            raise RegistryUnavailable(f"etcd authentication: {why}") from None
        for svc in (self._kv, self._lease, self._watch, self._auth):
            assert svc is not None
            svc.set_token(resp.token)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one RPC with a deadline, mapping every failure to a one-line RegistryError."""
        self.requests += 1
        for attempt in (1, 2):
            try:
                return await fn(*args, timeout=RPC_TIMEOUT, **kwargs)
            except EtcdUnauthenticatedError:
                # Simple-token auth expires (5 min by default): log in again once.
                if attempt == 1 and self.settings.username:
                    await self._authenticate()
                    continue
                raise RegistryError(f"{what}: etcd refused the credentials") from None
            except (TimeoutError, EtcdConnectionError, EtcdTransientError) as e:
                raise RegistryUnavailable(f"{what}: etcd unavailable ({_one_line(e)})") from None
            except grpc.aio.AioRpcError as e:
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise RegistryUnavailable(f"{what}: etcd unavailable ({_one_line(e)})") from None
                raise RegistryError(f"{what}: {_one_line(e)}") from None
            except EtcdError as e:
                raise RegistryError(f"{what}: {_one_line(e)}") from None
        raise AssertionError("unreachable")

    @property
    def kv(self) -> KVService:
        if self._kv is None:
            raise RegistryError("registry is not connected")
        return self._kv

    @property
    def leases_api(self) -> LeaseService:
        if self._lease is None:
            raise RegistryError("registry is not connected")
        return self._lease

    # -- config -------------------------------------------------------------------------------

    async def get_config(self) -> bytes | None:
        """The network config value, or None when the key does not exist."""
        resp = await self._call("get network config", self.kv.get, self.prefix + "/config")
        if not resp.kvs:
            return None
        return bytes(resp.kvs[0].value)

    # -- leases -------------------------------------------------------------------------------

    def key_for(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None) -> str:
        return self.subnets_prefix + make_subnet_key(subnet, ipv6_subnet)

    def _decode(self, key: str, value: bytes, lease_id: int) -> Lease:
        parsed = parse_subnet_key(key[len(self.subnets_prefix):])
        if parsed is None:
            raise LeaseError("key does not name a subnet")
        attrs = LeaseAttrs.from_json(value)
        return Lease(subnet=parsed[0], ipv6_subnet=parsed[1], attrs=attrs)

    async def list_subnets(self) -> Listing:
        """Every lease under ``<prefix>/subnets/`` in one Range request."""
        resp = await self._call(
            "list subnets", self.kv.get, self.subnets_prefix, prefix_range_end(self.subnets_prefix)
        )
        leases: list[Lease] = []
        bad: list[tuple[str, str]] = []
        for kv in resp.kvs:
            key = kv.key.decode("utf-8", "replace")
            try:
                leases.append(self._decode(key, kv.value, kv.lease))
            except (LeaseError, ValueError) as e:
                bad.append((key, str(e)))
        return Listing(leases, int(resp.header.revision), bad)

    async def get_subnet(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None) -> Lease | None:
        key = self.key_for(subnet, ipv6_subnet)
        resp = await self._call("get subnet", self.kv.get, key)
        if not resp.kvs:
            return None
        kv = resp.kvs[0]
        lease = self._decode(key, kv.value, kv.lease)
        return await self._with_expiration(lease, int(kv.lease))

    async def _with_expiration(self, lease: Lease, lease_id: int) -> Lease:
        if lease_id == 0:
            return lease  # a reservation: no etcd lease, never expires
        ttl = await self._call("lease time-to-live", self.leases_api.time_to_live, lease_id)
        expiration = time.time() + int(ttl.TTL) if int(ttl.TTL) >= 0 else None
        return Lease(lease.subnet, lease.ipv6_subnet, lease.attrs, expiration)

    async def create_subnet(
        self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None, attrs: LeaseAttrs, ttl: int
    ) -> Lease:
        """Create the lease only if the key is absent (flannel's ``createSubnet``)."""
        key = self.key_for(subnet, ipv6_subnet)
        grant = await self._call("grant lease", self.leases_api.grant, ttl)
        kv = self.kv
        try:
            resp = await self._call(
                "create subnet",
                kv.txn,
                [kv.txn_compare_version(key, 0)],
                [kv.txn_op_put(key, attrs.to_json(), lease=grant.ID)],
            )
        except RegistryError:
            await self._revoke_quietly(grant.ID)
            raise
        if not resp.succeeded:
            await self._revoke_quietly(grant.ID)
            raise SubnetExists(f"subnet {make_subnet_key(subnet, ipv6_subnet)} already exists")
        return Lease(subnet, ipv6_subnet, attrs, time.time() + int(grant.TTL))

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
        grant = await self._call("grant lease", self.leases_api.grant, ttl)
        try:
            put = await self._call("update subnet", self.kv.put, key, attrs.to_json(), lease=grant.ID, prev_kv=True)
        except RegistryError:
            await self._revoke_quietly(grant.ID)
            raise
        previous = int(put.prev_kv.lease) if put.HasField("prev_kv") else 0
        if previous and previous != grant.ID:
            # The old etcd lease has no key left; flannel lets it linger for a day.
            await self._revoke_quietly(previous)
        return Lease(subnet, ipv6_subnet, attrs, time.time() + int(grant.TTL))

    async def delete_subnet(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None) -> None:
        await self._call("delete subnet", self.kv.delete, self.key_for(subnet, ipv6_subnet))

    async def delete_key(self, key: str) -> None:
        await self._call("delete subnet", self.kv.delete, key)

    async def _revoke_quietly(self, lease_id: int) -> None:
        try:
            await self._call("revoke lease", self.leases_api.revoke, lease_id)
        except RegistryError as e:
            log.debug("revoking etcd lease %x: %s", lease_id, e)

    # -- watch --------------------------------------------------------------------------------

    async def watch_subnets(self, start_revision: int) -> AsyncGenerator[tuple[int, list[WatchEvent]], None]:
        """Yield ``(revision, events)`` for every watch response from ``start_revision`` on.

        A dropped stream is resumed by etcd3aio from the last seen revision; a compacted start
        revision or a cancelled watch raises :class:`Compacted` (the caller re-lists).
        """
        if self._watch is None:
            raise RegistryError("registry is not connected")
        self.requests += 1
        stream = self._watch.watch(
            self.subnets_prefix,
            prefix_range_end(self.subnets_prefix),
            start_revision=start_revision,
            progress_notify=True,
        )
        try:
            async for resp in stream:
                if (lasted := _watch_outage.recovered()) is not None:
                    log.info("etcd watch resumed after %.1f s", lasted)
                if resp.compact_revision:
                    raise Compacted(f"watch revision {start_revision} compacted (now {resp.compact_revision})")
                if resp.canceled:
                    raise Compacted(f"watch cancelled by etcd: {resp.cancel_reason or 'no reason given'}")
                events: list[WatchEvent] = []
                for ev in resp.events:
                    key = ev.kv.key.decode("utf-8", "replace")
                    if ev.type == 1:  # DELETE
                        events.append(WatchEvent(key, True, None))
                        continue
                    try:
                        events.append(WatchEvent(key, False, self._decode(key, ev.kv.value, ev.kv.lease)))
                    except (LeaseError, ValueError) as e:
                        events.append(WatchEvent(key, False, None, str(e)))
                yield int(resp.header.revision), events
        except grpc.aio.AioRpcError as e:
            raise RegistryUnavailable(f"watch subnets: {_one_line(e)}") from None
        except EtcdUnauthenticatedError:
            if self.settings.username:
                await self._authenticate()
            raise RegistryUnavailable("watch subnets: etcd refused the credentials") from None
        except EtcdError as e:
            raise RegistryUnavailable(f"watch subnets: {_one_line(e)}") from None
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
