"""vxlan backend: kernel VXLAN, one device for the whole overlay.

Kernel objects. On this host: one vxlan device ``flannel.<VNI>`` (id VNI, ``local`` = public IP,
``dev`` = external interface, UDP port 8472 unless ``Port``, ``nolearning``, optional GBP), MTU =
external MTU (or ``MTU``) - 50, carrying ``<own subnet network address>/32`` so the kernel has a source
address for overlay traffic. Per remote vxlan lease, exactly flannel's three objects:

* neighbour ``<remote subnet .0> lladdr <remote VtepMAC> dev flannel.1 nud permanent`` - the inner
  L2 destination for packets routed via the remote's gateway address (no ARP over the overlay);
* FDB ``<remote VtepMAC> dev flannel.1 dst <remote PublicIP> self permanent`` - which underlay host
  owns that MAC, i.e. where the kernel sends the encapsulated frame;
* route ``<remote subnet> via <remote subnet .0> dev flannel.1 onlink`` - sends the subnet into the
  device; ``onlink`` because the gateway is not on any local prefix.

With ``DirectRouting`` a peer whose PublicIP is directly reachable (``ip route get`` gives no
gateway) gets a plain ``<subnet> via <PublicIP>`` route instead, and no neighbour or FDB entry.
Nothing is removed on exit, so restarts do not disturb traffic; at start and after every full
re-list the kernel is compared with the desired state and only differences are applied, which also
removes entries of peers that vanished while the daemon was down (flannel #2554).

Order at start. When the device has to be created it is brought up at once, before it has an
address: none of the per-peer objects depends on our own subnet, so the peers of the start-up
listing are programmed page by page while the rest arrives and our lease is acquired (issue 6). A
device we just created holds exactly what we put in, so the first snapshot needs no dumps. If the
listing then shows our own lease from before the device was lost (a reboot), the device is created
again with that lease's VtepMAC, so the peers' entries for us stay right (flannel #1036).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from pyflannel.backend.base import Backend, BackendContext, BackendError, Network, register
from pyflannel.backend.peers import KernelObject, PeerNetwork
from pyflannel.config import ConfigError, NetworkConfig, backend_option
from pyflannel.kernel.netlink import (
    Address,
    Fdb,
    Link,
    LinkMonitor,
    Neighbour,
    Netlink,
    NetlinkError,
    Route,
)
from pyflannel.subnet.etcd import RegistryError
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.listing import SharedListing

log = logging.getLogger(__name__)

DEFAULT_PORT = 8472  # Linux's vxlan default; flannel writes 0 and lets the kernel choose it
OVERHEAD = 50  # outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14)


@dataclass(frozen=True)
class VxlanOptions:
    vni: int
    port: int
    gbp: bool
    learning: bool
    direct_routing: bool
    mtu: int | None

    @classmethod
    def from_config(cls, cfg: NetworkConfig) -> VxlanOptions:
        b = cfg.backend
        vni = backend_option(b, "VNI", 1, int)
        port = backend_option(b, "Port", 0, int)
        mtu = backend_option(b, "MTU", 0, int)
        if not 0 <= vni < 1 << 24:
            raise ConfigError(f"vxlan VNI {vni} out of range (0..16777215)")
        if not 0 <= port < 1 << 16:
            raise ConfigError(f"vxlan Port {port} out of range")
        if mtu and not 68 + OVERHEAD <= mtu <= 65535:
            raise ConfigError(f"vxlan MTU {mtu} out of range")
        return cls(
            vni=vni,
            port=port or DEFAULT_PORT,
            gbp=backend_option(b, "GBP", False, bool),
            learning=backend_option(b, "Learning", False, bool),
            direct_routing=backend_option(b, "DirectRouting", False, bool),
            mtu=mtu or None,
        )

    @property
    def device_name(self) -> str:
        return f"flannel.{self.vni}"


# -- pure: leases -> kernel objects ------------------------------------------------------------


_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")


def vtep_mac(lease: Lease) -> str | None:
    """The remote VTEP MAC from a vxlan lease, normalised, or None if absent or malformed."""
    data = lease.attrs.backend_data
    if not isinstance(data, dict):
        return None
    mac = data.get("VtepMAC")
    if mac is None:  # Go matches field names case-insensitively
        mac = next((v for k, v in data.items() if k.lower() == "vtepmac"), None)
    if not isinstance(mac, str) or _MAC_RE.fullmatch(mac) is None:
        return None
    mac = mac.lower()
    if int(mac[:2], 16) & 1:
        return None  # multicast: would flood every frame
    return mac


def peer_objects(lease: Lease, dev_index: int, direct_oif: int | None) -> list[KernelObject]:
    """The kernel objects for one remote lease, in flannel's order (neighbour, FDB, route)."""
    if direct_oif is not None:
        return [Route(dst=lease.subnet, gateway=lease.attrs.public_ip, oif=direct_oif)]
    mac = vtep_mac(lease)
    if mac is None:
        return []
    gw = lease.subnet.network_address
    return [
        Neighbour(ifindex=dev_index, dst=gw, lladdr=mac),
        Fdb(ifindex=dev_index, lladdr=mac, dst=lease.attrs.public_ip),
        Route(dst=lease.subnet, gateway=gw, oif=dev_index, onlink=True),
    ]


def random_mac(rng: random.Random | None = None) -> str:
    r = rng or random.SystemRandom()
    b = [r.randrange(256) for _ in range(6)]
    b[0] = (b[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{x:02x}" for x in b)


def device_compatible(link: Link, opts: VxlanOptions, local: IPv4Address, ext_index: int) -> bool:
    v = link.vxlan
    return (
        link.kind == "vxlan"
        and v is not None
        and v.vni == opts.vni
        and v.local == local
        and v.link == ext_index
        and v.port == opts.port
        and v.gbp == opts.gbp
        and v.learning == opts.learning
    )


# -- side effects ------------------------------------------------------------------------------


@register("vxlan")
class VxlanBackend(Backend):
    def __init__(self, cfg: NetworkConfig) -> None:
        self.opts = VxlanOptions.from_config(cfg)

    async def register_network(self, ctx: BackendContext) -> Network:
        opts = self.opts
        ext = ctx.ext
        mtu = (opts.mtu or ext.link.mtu) - OVERHEAD
        net = VxlanNetwork(ctx.netlink, opts, ctx.config, ext.link, ext.ext_addr, mtu)
        created = await net.ensure_device(None)
        if created:
            # An empty device of our own: peers go in while the listing arrives and our lease is
            # acquired, and the first snapshot then needs no dumps (start-up time, issue 6).
            net.start_early(ctx.listing, ext.ext_addr)
        try:
            known = (await ctx.listing.result()).leases
        except RegistryError:
            known = []  # the acquire loop lists again
        previous_mac = None
        for lease in known:
            if lease.attrs.public_ip == ext.ext_addr and lease.attrs.backend_type == "vxlan":
                previous_mac = vtep_mac(lease)
        if created and previous_mac and previous_mac != net.mac:
            # Our lease from before the device was lost (a reboot): keep its MAC, so that the
            # peers' neighbour and FDB entries stay right (flannel picks a new one, #1036).
            log.info("recreating %s with the MAC of our lease (%s)", opts.device_name, previous_mac)
            await net.stop_early()
            async with net.lock:
                await asyncio.to_thread(net.recreate_device, previous_mac)
            net.start_early(SharedListing.of(known), ext.ext_addr)
        attrs = LeaseAttrs(
            public_ip=ext.ext_addr,
            backend_type="vxlan",
            backend_data={"VNI": opts.vni, "VtepMAC": net.mac},
        )
        net.lease = await ctx.acquire(attrs)
        await net.address_device()
        return net


class VxlanNetwork(PeerNetwork):
    def __init__(
        self,
        nl: Netlink,
        opts: VxlanOptions,
        cfg: NetworkConfig,
        ext_link: Link,
        local: IPv4Address,
        mtu: int,
    ) -> None:
        super().__init__(nl, cfg, mtu)
        self.opts = opts
        self.ext_link = ext_link
        self.local = local
        self.mac = ""
        self.dev_index = 0

    # device -------------------------------------------------------------------------------

    async def ensure_device(self, preferred_mac: str | None) -> bool:
        """Reuse a compatible device or create one (then True: it is empty, and up)."""
        return await asyncio.to_thread(self._ensure_device, preferred_mac)

    def recreate_device(self, mac: str) -> None:
        """Delete the device and create it again with ``mac`` (and so without any peer)."""
        self.nl.delete_link(self.dev_index)
        self._ensure_device(mac)

    def _ensure_device(self, preferred_mac: str | None) -> bool:
        opts, nl = self.opts, self.nl
        link = nl.link(opts.device_name)
        if link is not None and not device_compatible(link, opts, self.local, self.ext_link.index):
            log.warning("%s exists but is incompatible with the config; recreating it", opts.device_name)
            if link.mac and preferred_mac is None:
                preferred_mac = link.mac
            nl.delete_link(link.index)
            link = None
        reused = link is not None
        if link is None:
            mac = preferred_mac or random_mac()
            try:
                link = nl.create_vxlan(
                    opts.device_name,
                    vni=opts.vni,
                    local=self.local,
                    link=self.ext_link.index,
                    port=opts.port,
                    learning=opts.learning,
                    gbp=opts.gbp,
                    mtu=self.mtu,
                    mac=mac,
                )
            except NetlinkError as e:
                raise BackendError(f"failed to create {opts.device_name}: {e}") from None
            log.info("created %s (VNI %d, local %s, MAC %s)", opts.device_name, opts.vni, self.local, mac)
        else:
            log.info("reusing existing %s (MAC %s)", opts.device_name, link.mac)
        if link.mtu != self.mtu:
            # flannel leaves a reused device's MTU alone; an MTU option change then never applies.
            nl.set_link(link.index, mtu=self.mtu)
        self._sysctl(f"/proc/sys/net/ipv6/conf/{opts.device_name}/accept_ra", "0")
        self.dev_index = link.index
        current = nl.link_by_index(link.index)
        self.mac = (current.mac if current else None) or link.mac or ""
        if preferred_mac and self.mac != preferred_mac and not reused:
            # Something (udev MACAddressPolicy=random) changed the MAC under us (flannel #1795).
            nl.set_link(link.index, mac=preferred_mac)
            self.mac = preferred_mac
        if not reused:
            # Up before it has an address, so that peers' routes can go in while the lease is
            # acquired (an onlink route needs an up device; adding the address later flushes nothing).
            nl.set_link(link.index, up=True)
            self.forget_installed()
            # Direct routes live on the external interface and survive the device: check those.
            self.exact = not self.opts.direct_routing
        return not reused

    @staticmethod
    def _sysctl(path: str, value: str) -> None:
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError:
            pass  # IPv6 disabled: nothing to protect from router advertisements

    async def address_device(self) -> None:
        async with self.lock:  # the early peers use the netlink socket meanwhile
            await asyncio.to_thread(self._address_device)

    def _address_device(self) -> None:
        nl = self.nl
        want = Address(self.dev_index, IPv4Interface(f"{self.lease.subnet.network_address}/32"))
        network = self.cfg.network
        # Add the new address before removing the old one: when a device loses its last IPv4
        # address the kernel flushes every route and neighbour through it, i.e. all peers.
        present = nl.addresses(self.dev_index)
        if want not in present:
            nl.add_address(want)
        for a in present:
            if a != want and network is not None and a.interface.ip in network:
                nl.delete_address(a)
        nl.set_link(self.dev_index, up=True)
        link = nl.link_by_index(self.dev_index)
        if link is None or link.mac != self.mac:
            raise BackendError(
                f"{self.opts.device_name} MAC is {link.mac if link else None}, expected {self.mac}"
            )

    async def lease_changed(self, lease: Lease) -> None:
        self.lease = lease
        async with self.lock:
            await asyncio.to_thread(self._address_device)
            # Re-program every peer: an address change must never leave a peer unrouted.
            await asyncio.to_thread(self.reconcile_all)

    # peers --------------------------------------------------------------------------------

    @staticmethod
    def _rejection(lease: Lease) -> str | None:
        """Why this backend cannot program ``lease`` (the tail of the log line), or None."""
        if lease.attrs.backend_type != "vxlan":
            return f" of backend type {lease.attrs.backend_type or 'udp/alloc'!r} (this network is vxlan)"
        if vtep_mac(lease) is None:
            return ": BackendData has no valid VtepMAC"
        return None

    def accept(self, lease: Lease) -> bool:
        why = self._rejection(lease)
        if why is not None:
            log.warning("ignoring lease %s%s", lease.subnet, why)
        return why is None

    def desired(self, lease: Lease) -> list[KernelObject]:
        direct_oif = None
        if self.opts.direct_routing:
            try:
                r = self.nl.route_get(lease.attrs.public_ip)
                if r.gateway is None and r.oif is not None:
                    direct_oif = r.oif
            except NetlinkError as e:
                log.debug("route get %s: %s", lease.attrs.public_ip, e)
        return peer_objects(lease, self.dev_index, direct_oif)

    def accept_early(self, lease: Lease) -> bool:
        return self._rejection(lease) is None

    def owned_kernel_objects(self) -> list[KernelObject]:
        nl, network = self.nl, self.cfg.network
        objs: list[KernelObject] = []
        own = self.lease.subnet
        for r in nl.routes():
            if network is None or not r.dst.subnet_of(network) or r.dst == own:
                continue
            if r.oif == self.dev_index or (self.opts.direct_routing and r.gateway is not None):
                objs.append(r)
        objs.extend(nl.neighbours(self.dev_index))
        objs.extend(nl.fdb(self.dev_index))
        return objs

    # upkeep -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Recreate the device if someone deletes it, and replay every peer onto it."""
        loop = asyncio.get_running_loop()
        monitor = LinkMonitor()
        wake = asyncio.Event()
        loop.add_reader(monitor.fileno(), wake.set)
        try:
            backoff = 1.0
            while True:
                await wake.wait()
                wake.clear()
                gone = any(
                    kind == "del" and (link.index == self.dev_index or link.name == self.opts.device_name)
                    for kind, link in monitor.read()
                )
                if not gone:
                    continue
                while True:
                    log.warning("%s was deleted; recreating it and replaying %d peers",
                                self.opts.device_name, len(self.peers))
                    try:
                        async with self.lock:
                            await asyncio.to_thread(self._recreate)
                        backoff = 1.0
                        break
                    except (BackendError, NetlinkError) as e:
                        log.error("recreating %s: %s (retrying in %.0f s)", self.opts.device_name, e, backoff)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 30.0)
        finally:
            loop.remove_reader(monitor.fileno())
            monitor.close()

    def _recreate(self) -> None:
        self._ensure_device(self.mac)
        self._address_device()
        self.reconcile_all()
