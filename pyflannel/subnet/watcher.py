"""LeaseWatcher: turns listings and watch events into the ADDED/REMOVED batches backends program.

This is flannel's ``pkg/lease`` ``LeaseWatcher`` with the same contract (own subnet filtered out;
a removal carries the *cached* lease so that backends know the old PublicIP / VtepMAC to clean up),
made cheaper and more robust:

* Leases are cached in a dict keyed by ``(subnet, ipv6_subnet)``, the identity of an etcd key, so
  a snapshot of N leases costs O(N) rather than flannel's O(N^2) list scans.
* Only real changes are reported. A lease whose attributes are unchanged (every renewal, and every
  lease of a re-list after a watch reconnect) produces nothing: flannel re-emits each renewal of
  each node as an ADDED on every other node, i.e. N x (N-1) needless re-programmings a day. The
  cache still takes the new lease, so its ``expiration`` is current.
* A snapshot reports vanished leases (REMOVED) *before* new or changed ones (ADDED): if a subnet
  moved to a different key (its IPv6 part changed), the route added for the new key must not be
  deleted by the removal of the old one.
* When a removed lease shares its IPv4 or IPv6 subnet with another cached lease (two keys for one
  subnet), that other lease is re-announced as ADDED right after the removal.
* A removal of a subnet that is not cached produces nothing (flannel logs an error and emits the
  removal anyway, with attributes the backend never programmed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Network

from pyflannel.subnet.lease import Lease


class EventType(Enum):
    ADDED = 0
    REMOVED = 1


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    lease: Lease


_Key = tuple[int, int, int, int]  # Lease.ident: the (subnet, ipv6_subnet) pair as ints
_SubnetId = tuple[int, int, int]  # (family, address, prefix length)


def _key(lease: Lease) -> _Key:
    return lease.ident


def _subnets(k: _Key) -> tuple[_SubnetId, ...]:
    return ((4, k[0], k[1]),) if k[2] < 0 else ((4, k[0], k[1]), (6, k[2], k[3]))


class LeaseWatcher:
    """The set of other nodes' leases as last reported, and the diffs against it."""

    def __init__(self, own_subnet: IPv4Network | None) -> None:
        self.own_subnet = own_subnet
        self._own_id = None if own_subnet is None else (int(own_subnet.network_address), own_subnet.prefixlen)
        self._leases: dict[_Key, Lease] = {}
        # Keys by subnet, to find two keys naming one subnet in O(1) (see _survivors).
        self._by_subnet: dict[_SubnetId, set[_Key]] = {}

    def _own(self, lease: Lease) -> bool:
        k = lease.ident
        return self._own_id is not None and (k[0], k[1]) == self._own_id

    def _index(self, k: _Key) -> None:
        for sn in _subnets(k):
            self._by_subnet.setdefault(sn, set()).add(k)

    def _unindex(self, k: _Key) -> None:
        for sn in _subnets(k):
            keys = self._by_subnet.get(sn)
            if keys is not None:
                keys.discard(k)
                if not keys:
                    del self._by_subnet[sn]

    def _survivors(self, removed: Iterable[Lease], skip: set[_Key]) -> list[Event]:
        """ADDED again for cached leases that share a subnet with a removed one.

        Two keys can name the same IPv4 subnet (``10.5.1.0-24`` and ``10.5.1.0-24&fd00::-64``, e.g.
        while a node switches to dual stack). Removing one makes a backend delete the route that the
        other still needs, so the other is re-announced after the removal.
        """
        out: list[Event] = []
        seen: set[_Key] = set(skip)
        for le in removed:
            for sn in _subnets(_key(le)):
                for k in sorted(self._by_subnet.get(sn, ())):
                    if k not in seen:
                        seen.add(k)
                        out.append(Event(EventType.ADDED, self._leases[k]))
        return out

    def reset(self, leases: Iterable[Lease]) -> list[Event]:
        """A full listing: REMOVED for cached leases that are gone, then ADDED for new or changed ones."""
        fresh: dict[_Key, Lease] = {}
        for lease in leases:
            if not self._own(lease):
                fresh[_key(lease)] = lease
        removed = [old for k, old in self._leases.items() if k not in fresh]
        added = {
            k: new for k, new in fresh.items() if k not in self._leases or self._leases[k].attrs != new.attrs
        }
        self._leases = fresh
        self._by_subnet = {}
        for k in fresh:
            self._index(k)
        out = [Event(EventType.REMOVED, old) for old in removed]
        out += self._survivors(removed, skip=set(added))
        out += [Event(EventType.ADDED, new) for new in added.values()]
        return out

    def update(self, events: Iterable[Event]) -> list[Event]:
        """Watch events, in order: ADDED when new or changed, REMOVED with the cached lease."""
        out: list[Event] = []
        for ev in events:
            lease = ev.lease
            if self._own(lease):
                continue
            k = _key(lease)
            if ev.type is EventType.ADDED:
                old = self._leases.get(k)
                self._leases[k] = lease
                if old is None:
                    self._index(k)
                if old is None or old.attrs != lease.attrs:
                    out.append(ev)
            else:
                cached = self._leases.pop(k, None)
                if cached is not None:
                    self._unindex(k)
                    out.append(Event(EventType.REMOVED, cached))
                    out += self._survivors([cached], skip=set())
        return out

    def leases(self) -> list[Lease]:
        """The cached leases of the other nodes."""
        return list(self._leases.values())
