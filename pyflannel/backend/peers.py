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
from ipaddress import IPv4Address, IPv4Network

from pyflannel.backend.base import Network
from pyflannel.config import NetworkConfig
from pyflannel.kernel.netlink import Fdb, Neighbour, Netlink, Op, Route
from pyflannel.subnet.lease import Lease
from pyflannel.subnet.listing import SharedListing
from pyflannel.subnet.manager import peer_problem
from pyflannel.subnet.watcher import Event, EventType

log = logging.getLogger(__name__)

KernelObject = Route | Neighbour | Fdb
PeerKey = tuple[int, int]  # a peer's IPv4 subnet as (address, prefix length): Lease.ident[:2]


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
        # Keyed by (address, prefix length) ints: IPv4Network hashes in Python, 10x slower, and
        # these dicts see every lease of every listing (start-up time, issue 6).
        self.peers: dict[PeerKey, Lease] = {}
        # What we put into the kernel per peer subnet, and from which lease.
        self.installed: dict[PeerKey, list[KernelObject]] = {}
        self.programmed: dict[PeerKey, Lease] = {}
        # True while the kernel holds exactly ``installed`` (a device we just created, every
        # update since succeeded): the next full reconcile then needs no dumps. One-shot, so later
        # re-lists still compare against the kernel itself.
        self.exact = False
        self.lock = asyncio.Lock()  # one netlink socket: one user at a time
        self.early: asyncio.Task[None] | None = None
        self._stopping = False
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

    def accept_early(self, lease: Lease) -> bool:
        """Whether to program ``lease`` before our own lease exists (silently; the first watch
        snapshot logs what is wrong with the others). Default: nothing early."""
        return False

    def start_early(self, listing: SharedListing, own_ip: IPv4Address) -> None:
        """Program the peers of the start-up listing page by page while our lease is acquired.

        Leases with our own public IP are left out (one may be the lease we are about to reuse);
        the watch's first snapshot, which waits for this, brings the rest.
        """
        self.early = asyncio.create_task(self._program_early(listing, own_ip), name="early peers")

    async def stop_early(self) -> None:
        """Stop after the page in hand. Not a cancel: that would let go of the lock while the
        thread still uses the netlink socket."""
        if self.early is not None:
            self._stopping = True
            await self.early
            self.early = None
            self._stopping = False

    async def _program_early(self, listing: SharedListing, own_ip: IPv4Address) -> None:
        cfg = self.cfg
        async for page in listing.pages():
            if self._stopping:
                return
            events = [
                Event(EventType.ADDED, lease)
                for lease in page.leases
                if lease.attrs.public_ip != own_ip and peer_problem(cfg, lease) is None and self.accept_early(lease)
            ]
            if events:
                async with self.lock:
                    await asyncio.to_thread(self.apply_sync, events, False)

    async def settled(self) -> None:
        if self.early is not None:
            await self.early
            self.early = None

    async def apply(self, events: Sequence[Event], snapshot: bool) -> None:
        # Events are newer than the start-up listing: they must not be overtaken by it.
        await self.settled()
        async with self.lock:
            await asyncio.to_thread(self.apply_sync, events, snapshot)

    def local_networks(self) -> list[tuple[int, int, IPv4Network]]:
        """This host's own networks a peer's subnet must not overlap, as (address, mask, network).

        Left out: our own subnet, and an address spanning the whole overlay (udp's flannel0).
        """
        own = self.lease.subnet if getattr(self, "lease", None) is not None else None
        network = self.cfg.network
        out = []
        for a in self.nl.addresses():
            n = a.interface.network
            if (own is not None and a.interface.ip in own) or (network is not None and network.subnet_of(n)):
                continue
            out.append((int(n.network_address), int(n.netmask), n))
        return out

    @staticmethod
    def local_clash(subnet: IPv4Network, local: list[tuple[int, int, IPv4Network]]) -> IPv4Network | None:
        """A network on this host's own interfaces that a route for ``subnet`` would cover or hijack
        (a replace of ``10.244.9.0/24`` would even overwrite the kernel's connected route)."""
        addr, mask = int(subnet.network_address), int(subnet.netmask)
        for n_addr, n_mask, n in local:
            # Two networks overlap when the shorter prefix contains the other's network address.
            common = mask & n_mask
            if addr & common == n_addr & common:
                return n
        return None

    def apply_sync(self, events: Sequence[Event], snapshot: bool) -> None:
        changed: dict[PeerKey, IPv4Network] = {}
        local: list[tuple[int, int, IPv4Network]] = []
        if any(ev.type is EventType.ADDED for ev in events):
            local = self.local_networks()
        peers, accept = self.peers, self.accept
        for ev in events:
            sn = ev.lease.subnet
            k = ev.lease.ident[:2]
            if ev.type is EventType.ADDED and local and (clash := self.local_clash(sn, local)) is not None:
                # Bad input from etcd must never take over a network this host already has.
                if (sn, clash) not in self._clash_logged:
                    self._clash_logged.add((sn, clash))
                    log.warning("ignoring lease %s: it overlaps %s on this host", sn, clash)
                peers.pop(k, None)
            elif ev.type is EventType.ADDED and accept(ev.lease):
                peers[k] = ev.lease
            else:
                peers.pop(k, None)
            changed[k] = sn
        if snapshot:
            self.reconcile_all()
            return
        self.run_ops(self._diff(changed))

    def _diff(self, keys: Iterable[PeerKey]) -> list[Op]:
        """Updates that bring these peers from what we installed to what they need now."""
        ops: list[Op] = []
        peers, programmed, installed = self.peers, self.programmed, self.installed
        for k in keys:
            lease = peers.get(k)
            before = programmed.get(k)
            if lease is not None and before is not None and (before is lease or before == lease):
                continue  # the same lease (the start-up listing again): nothing to do
            old = installed.pop(k, [])
            programmed.pop(k, None)
            new = self.desired(lease) if lease else []
            if lease is not None and new:
                installed[k] = new
                programmed[k] = lease
            if old:
                ops.extend(reconcile_ops(new, old))
            else:
                ops.extend(("replace", o) for o in new)
        return ops

    def forget_installed(self) -> None:
        """The kernel objects are gone with their device: nothing of ours is installed."""
        self.installed.clear()
        self.programmed.clear()

    def reconcile_all(self) -> int:
        """Make the owned kernel state equal the desired state; returns the number of updates."""
        if self.exact:
            self.exact = False
            ops = self._diff(self.peers.keys() | self.installed.keys())
            self.run_ops(ops)
            return len(ops)
        self.installed = {sn: self.desired(lease) for sn, lease in self.peers.items()}
        self.programmed = dict(self.peers)
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
        if failures:
            self.exact = False
        for op, err in failures[:10]:
            log.warning("%s %s failed: %s", op[0], op[1], err)
        if len(failures) > 10:
            log.warning("... and %d more kernel updates failed", len(failures) - 10)
        log.debug("applied %d kernel updates (%d failed)", len(ops), len(failures))
