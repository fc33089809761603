"""The subnet manager: this host's lease (acquire, renew, re-acquire) and the stream of the others.

Built on :mod:`pyflannel.subnet.etcd` for I/O and on the pure :mod:`alloc` and :mod:`watcher`
modules for decisions. Where flannel exits (a create race, its own lease deleted or expired,
network exhausted) this manager logs why and tries again, so a supervisor never sees a crash loop
and the host keeps its kernel state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Network

from pyflannel.config import ConfigError, NetworkConfig, parse_config
from pyflannel.settings import SubnetSettings
from pyflannel.subnet.alloc import OutOfSubnets, choose_subnet
from pyflannel.subnet.etcd import Compacted, EtcdRegistry, Listing, RegistryError, SubnetExists, WatchEvent
from pyflannel.subnet.lease import Lease, LeaseAttrs, parse_subnet_key
from pyflannel.subnet.watcher import Event, EventType, LeaseWatcher

log = logging.getLogger(__name__)

MISSING_CONFIG = "flannel config not found in etcd store. Did you create your config using etcdv3 API?"


def peer_problem(cfg: NetworkConfig, lease: Lease) -> str | None:
    """Why a lease from etcd must not be programmed, or None if it is acceptable.

    Nothing read from etcd may make us route outside the configured Network: the subnet must be a
    SubnetLen-sized block of the Network, and the public IP must be a unicast address.
    """
    net = cfg.network
    if net is None:
        return "IPv4 is disabled in the network config"
    # Integer arithmetic: this runs for every lease of every listing (5000+), ipaddress predicates
    # cost 15 us a lease, these 1 us.
    net_int, mask = int(net.network_address), int(net.netmask)
    sn = lease.subnet
    if sn.prefixlen != cfg.subnet_len or sn.prefixlen < net.prefixlen or int(sn.network_address) & mask != net_int:
        return f"subnet {sn} is not a /{cfg.subnet_len} of the Network {net}"
    ip = lease.attrs.public_ip
    ip_int = int(ip)
    if ip_int == 0 or ip_int >> 24 == 127 or ip_int >> 28 == 0xE or ip_int == 0xFFFFFFFF:
        return f"PublicIP {ip} is not a usable unicast address"
    if ip_int & mask == net_int:
        return f"PublicIP {ip} lies inside the overlay Network {net}"
    return None


def renew_delay(lease: Lease, margin_minutes: int, ttl: int, now: float) -> float:
    """Seconds until the lease should be renewed: ``margin`` before expiry (at most half the TTL)."""
    if lease.expiration is None:
        return float("inf")
    margin = min(margin_minutes * 60.0, ttl / 2.0)
    return max(0.0, lease.expiration - margin - now)


@dataclass
class Update:
    """What the watch delivers: peer events, whether it was a full listing, and own-lease loss."""

    events: list[Event]
    snapshot: bool
    own_lost: bool = False


@dataclass
class _LogOnce:
    seen: set[tuple[str, str]] = field(default_factory=set)

    def warn(self, key: str, reason: str) -> None:
        if (key, reason) not in self.seen:
            self.seen.add((key, reason))
            log.warning("skipping lease %s: %s", key, reason)


class SubnetManager:
    def __init__(
        self,
        registry: EtcdRegistry,
        settings: SubnetSettings,
        previous: tuple[IPv4Network | None, IPv6Network | None] = (None, None),
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.previous = previous
        self.rng = rng or random.Random()
        self.config: NetworkConfig | None = None
        self.lease: Lease | None = None
        self.attrs: LeaseAttrs | None = None
        self._lease_changed = asyncio.Event()
        self._skips = _LogOnce()
        self._primed_for_acquire: Listing | None = None
        self._primed_for_watch: Listing | None = None

    # -- config -------------------------------------------------------------------------------

    async def get_config(
        self, retry_interval: float = 1.0, check: Callable[[NetworkConfig], None] | None = None
    ) -> NetworkConfig:
        """Fetch and validate the network config, retrying every second until it is right.

        ``check`` (raising :class:`ConfigError`) adds the caller's own checks, such as a known
        backend type: a config that cannot work is waited out, never a crash loop.
        """
        last = ""
        last_logged = 0.0
        while True:
            try:
                raw = await self.registry.get_config()
                if raw is None:
                    problem = MISSING_CONFIG
                else:
                    cfg = parse_config(raw)
                    if check is not None:
                        check(cfg)
                    self.config = cfg
                    return cfg
            except ConfigError as e:
                problem = f"invalid network config: {e}"
            except RegistryError as e:
                problem = str(e)
            now = time.monotonic()
            # One line per distinct problem, and a reminder every 30 s: never a flood.
            if problem != last or now - last_logged > 30:
                log.error("Couldn't fetch network config: %s", problem)
                last, last_logged = problem, now
            await asyncio.sleep(retry_interval)

    # -- own lease ----------------------------------------------------------------------------

    async def acquire(self, attrs: LeaseAttrs) -> Lease:
        """Acquire a lease: reuse by public IP, then the previous subnet, then a random free one."""
        cfg = self.config
        assert cfg is not None, "get_config first"
        self.attrs = attrs
        backoff = 1.0
        while True:
            try:
                lease = await self._acquire_once(cfg, attrs)
                self._set_lease(lease)
                return lease
            except SubnetExists as e:
                log.info("%s: another node took it at the same moment; choosing again", e)
                await asyncio.sleep(self.rng.uniform(0, 0.2))
                continue
            except OutOfSubnets:
                problem = f"out of subnets: every /{cfg.subnet_len} of {cfg.network} is leased"
            except RegistryError as e:
                problem = f"failed to acquire lease: {e}"
            log.error("%s (retrying in %.0f s)", problem, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    def prime(self, listing: Listing) -> None:
        """Hand over the daemon's start-up listing: the first acquire attempt and the first watch
        snapshot use it instead of listing again (two fewer full listings at start; issue 6)."""
        self._primed_for_acquire = listing
        self._primed_for_watch = listing

    async def _acquire_once(self, cfg: NetworkConfig, attrs: LeaseAttrs) -> Lease:
        listing = self._primed_for_acquire or await self.registry.list_subnets()
        self._primed_for_acquire = None
        for key, reason in listing.bad_keys:
            self._skips.warn(key, reason)
        prev, prev6 = self.previous
        decision = choose_subnet(cfg, listing.leases, attrs.public_ip, attrs.public_ipv6, prev, prev6, self.rng)
        for note in decision.notes:
            log.info("%s", note)
        for key in decision.delete_keys:
            await self.registry.delete_key(self.registry.subnets_prefix + key)
        ttl = self.settings.lease_ttl_seconds
        if decision.kind == "reuse":
            lease = await self.registry.update_subnet(decision.subnet, decision.ipv6_subnet, attrs, ttl)
            log.info("%s", decision.message)
        else:
            lease = await self.registry.create_subnet(decision.subnet, decision.ipv6_subnet, attrs, ttl)
            if decision.message:
                log.info("%s", decision.message)
            log.info(
                "Allocated lease (ip: %s ipv6: %s) to current node (%s)",
                lease.subnet,
                lease.ipv6_subnet or "",
                attrs.public_ip,
            )
        return lease

    def _set_lease(self, lease: Lease) -> None:
        self.lease = lease
        self.previous = (lease.subnet, lease.ipv6_subnet)
        self._lease_changed.set()

    async def reacquire(self) -> Lease:
        """Our key vanished (deleted by someone, or expired): take the same subnet back if free."""
        assert self.lease is not None and self.attrs is not None
        old = self.lease
        ttl = self.settings.lease_ttl_seconds
        backoff = 1.0
        while True:
            try:
                lease = await self.registry.create_subnet(old.subnet, old.ipv6_subnet, self.attrs, ttl)
                log.warning("re-acquired lease %s after it was deleted or expired", old.subnet)
                self._set_lease(lease)
                return lease
            except SubnetExists:
                log.warning("subnet %s was taken by another node after our lease was lost", old.subnet)
                lease = await self.acquire(self.attrs)
                log.warning("moved to subnet %s", lease.subnet)
                return lease
            except RegistryError as e:
                log.error("re-acquiring lease %s: %s (retrying in %.0f s)", old.subnet, e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def renew_forever(self) -> None:
        """Renew ``--subnet-lease-renew-margin`` minutes before expiry; retry on failure."""
        margin = self.settings.renew_margin_minutes
        ttl = self.settings.lease_ttl_seconds
        # Retry well inside the time left at renewal (the margin): a 60 s cap, as flannel's 1 min,
        # would let a short-TTL lease expire after an etcd outage.
        max_backoff = max(1.0, min(60.0, min(margin * 60.0, ttl / 2.0) / 4))
        while True:
            lease, attrs = self.lease, self.attrs
            assert lease is not None and attrs is not None
            delay = renew_delay(lease, margin, ttl, time.time())
            self._lease_changed.clear()
            try:
                await asyncio.wait_for(self._lease_changed.wait(), timeout=min(delay, 86400.0 * 365))
                continue  # a new lease: recompute
            except TimeoutError:
                pass
            backoff = 1.0
            failures, last_logged = 0, 0.0
            while True:
                try:
                    new = await self.registry.update_subnet(lease.subnet, lease.ipv6_subnet, attrs, ttl)
                    self.lease = new
                    after = f" after {failures} failed attempts" if failures else ""
                    log.info("renewed lease %s for %d s%s", new.subnet, ttl, after)
                    break
                except RegistryError as e:
                    # The first failure and a reminder a minute: an outage is not a log flood.
                    failures += 1
                    now = time.monotonic()
                    level = logging.WARNING if failures == 1 or now - last_logged >= 60 else logging.DEBUG
                    if level == logging.WARNING:
                        last_logged = now
                    log.log(level, "Error renewing lease (trying again in %.0f s): %s", backoff, e)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, max_backoff)

    # -- everyone else ------------------------------------------------------------------------

    def _own_key(self, subnet: IPv4Network) -> bool:
        return self.lease is not None and subnet == self.lease.subnet

    def _valid(self, cfg: NetworkConfig, key: str, lease: Lease) -> bool:
        problem = peer_problem(cfg, lease)
        if problem is not None:
            self._skips.warn(key, problem)
            return False
        return True

    def _mine(self, lease: Lease) -> bool:
        return self.attrs is None or lease.attrs.public_ip == self.attrs.public_ip

    def _moved(self, own_at_listing: IPv4Network | None) -> bool:
        return self.lease is not None and self.lease.subnet != own_at_listing

    def _changes(self, cfg: NetworkConfig, watcher: LeaseWatcher, changes: list[WatchEvent]) -> Update | None:
        """One watch response -> an Update for the backend (None if nothing changed for it)."""
        events: list[Event] = []
        own_lost = False
        for ch in changes:
            lease = ch.lease
            # A decoded lease carries its key's subnets already; parse the key only without one.
            parsed = (lease.subnet, lease.ipv6_subnet) if lease else parse_subnet_key(ch.key[len(self.registry.subnets_prefix):])
            if parsed is None:
                self._skips.warn(ch.key, "key does not name a subnet")
                continue
            if self._own_key(parsed[0]):
                # Deleted, or overwritten by another host's lease (two hosts, one subnet): ours is
                # lost either way; re-acquiring then moves us if the other host keeps it.
                taken = ch.lease is not None and not self._mine(ch.lease)
                if taken:
                    log.warning("our lease %s was overwritten by another host's", ch.key)
                own_lost = own_lost or ch.deleted or taken
                continue
            if ch.lease is not None and self._valid(cfg, ch.key, ch.lease):
                events.append(Event(EventType.ADDED, ch.lease))
                continue
            if ch.error:
                self._skips.warn(ch.key, ch.error)
            # Deleted, unreadable or invalid now: whatever we programmed for it goes.
            placeholder = Lease(parsed[0], parsed[1], LeaseAttrs(public_ip=IPv4Address(0)))
            events.append(Event(EventType.REMOVED, placeholder))
        out = watcher.update(events)
        if out or own_lost:
            return Update(out, snapshot=False, own_lost=own_lost)
        return None

    async def watch(self) -> AsyncIterator[Update]:
        """List, then watch from revision + 1; re-list on compaction or after an outage."""
        cfg = self.config
        assert cfg is not None
        watcher = LeaseWatcher(None)
        backoff = 0.5
        while True:
            try:
                primed, self._primed_for_watch = self._primed_for_watch, None
                listing = primed or await self.registry.list_subnets()
                for key, reason in listing.bad_keys:
                    self._skips.warn(key, reason)
                # A primed listing predates our own create/put, which the watch then delivers.
                own_present = primed is not None
                peers = []
                own = self.lease.ident[:2] if self.lease is not None else None
                for lease in listing.leases:
                    if lease.ident[:2] == own:
                        own_present = own_present or self._mine(lease)
                    elif primed is not None and self._mine(lease):
                        continue  # our own old lease, deleted by the acquire that followed the listing
                    elif (problem := peer_problem(cfg, lease)) is None:
                        peers.append(lease)
                    else:
                        self._skips.warn(self.registry.key_for(lease.subnet, lease.ipv6_subnet), problem)
                own_at_listing = self.lease.subnet if self.lease else None
                yield Update(watcher.reset(peers), snapshot=True, own_lost=not own_present)
                backoff = 0.5
                if self._moved(own_at_listing):
                    continue
                stream = self.registry.watch_subnets(listing.revision + 1)
                async with contextlib.aclosing(stream):
                    async for _rev, changes in stream:
                        update = self._changes(cfg, watcher, changes)
                        if update is not None:
                            yield update
                            if self._moved(own_at_listing):
                                break  # re-list: our old subnet may be a peer's now
            except Compacted as e:
                log.warning("%s; re-listing subnets", e)
            except RegistryError as e:
                log.warning("watching subnets: %s (retrying in %.1f s)", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
