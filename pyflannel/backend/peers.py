"""Desired state per peer, then a diff: the reconciler shared by the kernel-routing backends.

A backend says which leases it accepts, which kernel objects one lease needs (a pure function) and
which kernel objects it owns. This class keeps the desired objects per peer subnet and applies
differences only: an event touches that peer's objects, a snapshot (start-up, re-list after
compaction or an outage) compares the whole owned kernel state with the whole desired state. So a
restart re-applies nothing that is already right, and entries of peers that vanished while the
daemon was down are removed (flannel leaves them forever, #2554).
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Network

from pyflannel.backend.base import Network
from pyflannel.config import NetworkConfig
from pyflannel.kernel.netlink import Fdb, Neighbour, Netlink, Op, Route
from pyflannel.subnet.lease import Lease
from pyflannel.subnet.watcher import Event, EventType

log = logging.getLogger(__name__)

KernelObject = Route | Neighbour | Fdb


def reconcile_ops(desired: Iterable[KernelObject], actual: Iterable[KernelObject]) -> list[Op]:
    """Deletes for owned objects not desired, then replaces for desired objects missing."""
    want = list(dict.fromkeys(desired))
    have = set(actual)
    want_set = set(want)
    # Routes go first among deletes (the reverse of creation order: route, FDB, neighbour).
    ops: list[Op] = sorted(
        (("delete", o) for o in have if o not in want_set), key=lambda op: _order(op[1]), reverse=True
    )
    ops.extend(("replace", o) for o in want if o not in have)
    return ops


def _order(o: KernelObject) -> int:
    return 0 if isinstance(o, Neighbour) else 1 if isinstance(o, Fdb) else 2


class PeerNetwork(Network):
    """A network whose data path is kernel objects per remote lease."""

    def __init__(self, nl: Netlink, cfg: NetworkConfig, mtu: int) -> None:
        self.nl = nl
        self.cfg = cfg
        self.mtu = mtu
        self.peers: dict[IPv4Network, Lease] = {}
        self.installed: dict[IPv4Network, list[KernelObject]] = {}
        self.lock = asyncio.Lock()  # one netlink socket: one user at a time
        self._clash_logged: set[tuple[IPv4Network, IPv4Network]] = set()

    @abc.abstractmethod
    def accept(self, lease: Lease) -> bool:
        """Whether this backend programs the lease (logging why not)."""

    @abc.abstractmethod
    def desired(self, lease: Lease) -> list[KernelObject]:
        """The kernel objects one accepted lease needs."""

    @abc.abstractmethod
    def owned_kernel_objects(self) -> list[KernelObject]:
        """Every kernel object currently present that this backend would have created."""

    async def apply(self, events: Sequence[Event], snapshot: bool) -> None:
        async with self.lock:
            await asyncio.to_thread(self.apply_sync, events, snapshot)

    def local_clash(self, lease: Lease, local: list[IPv4Network]) -> IPv4Network | None:
        """A network on this host's own interfaces that a route for ``lease`` would cover or hijack
        (a replace of ``10.244.9.0/24`` would even overwrite the kernel's connected route)."""
        network = self.cfg.network
        for n in local:
            if network is not None and network.subnet_of(n):
                continue  # an address spanning the whole overlay (udp's flannel0): not a host network
            if n.overlaps(lease.subnet):
                return n
        return None

    def apply_sync(self, events: Sequence[Event], snapshot: bool) -> None:
        changed: set[IPv4Network] = set()
        local: list[IPv4Network] = []
        if any(ev.type is EventType.ADDED for ev in events):
            own = self.lease.subnet if getattr(self, "lease", None) is not None else None
            local = [a.interface.network for a in self.nl.addresses() if not (own and a.interface.ip in own)]
        for ev in events:
            sn = ev.lease.subnet
            if ev.type is EventType.ADDED and (clash := self.local_clash(ev.lease, local)) is not None:
                # Bad input from etcd must never take over a network this host already has.
                if (sn, clash) not in self._clash_logged:
                    self._clash_logged.add((sn, clash))
                    log.warning("ignoring lease %s: it overlaps %s on this host", sn, clash)
                self.peers.pop(sn, None)
            elif ev.type is EventType.ADDED and self.accept(ev.lease):
                self.peers[sn] = ev.lease
            else:
                self.peers.pop(sn, None)
            changed.add(sn)
        if snapshot:
            self.reconcile_all()
            return
        ops: list[Op] = []
        for sn in changed:
            old = self.installed.pop(sn, [])
            lease = self.peers.get(sn)
            new = self.desired(lease) if lease else []
            if new:
                self.installed[sn] = new
            ops.extend(reconcile_ops(new, old))
        self.run_ops(ops)

    def reconcile_all(self) -> int:
        """Make the owned kernel state equal the desired state; returns the number of updates."""
        self.installed = {sn: self.desired(lease) for sn, lease in self.peers.items()}
        desired = [o for objs in self.installed.values() for o in objs]
        ops = reconcile_ops(desired, self.owned_kernel_objects())
        stale = sum(1 for op in ops if op[0] == "delete")
        if stale:
            log.info("removing %d stale kernel entries of peers that are gone", stale)
        self.run_ops(ops)
        return len(ops)

    def run_ops(self, ops: list[Op]) -> None:
        if not ops:
            return
        failures = self.nl.apply(ops)
        for op, err in failures[:10]:
            log.warning("%s %s failed: %s", op[0], op[1], err)
        if len(failures) > 10:
            log.warning("... and %d more kernel updates failed", len(failures) - 10)
        log.debug("applied %d kernel updates (%d failed)", len(ops), len(failures))
