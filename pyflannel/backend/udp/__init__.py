"""udp backend: a user-space UDP tunnel through a TUN device, wire-compatible with flannel's C proxy.

Kernel objects, all on this host and none per remote host: the TUN device ``flannel0``
(``flannel%d``, IFF_TUN, no packet info) with MTU = external MTU - 28 (outer IPv4 + UDP), carrying
``<own subnet network address>/32`` (a source address for host-to-overlay traffic without creating
broadcast or subnet routes), and one route ``<Network> dev flannel0`` that sends the whole overlay
into the TUN (the more specific route of the own subnet, e.g. the container bridge, keeps local
traffic local). A UDP socket bound to ``<interface address>:<Port>`` (8285 unless ``Port``).

Per remote host there is no kernel state: the per-host state is the proxy's routing table,
remote subnet -> ``PublicIP:Port``, built from every lease event whatever its backend type (udp
leases carry only ``PublicIP``, no ``BackendType``) and swapped whole, so the data-path threads never
see a half-updated table. A packet read from the TUN goes to the table's entry for its destination
as one UDP datagram holding exactly the IPv4 packet; a datagram received is written into the TUN.
TTL is decremented both ways and ICMP net-unreachable answers unknown destinations, as flannel's
proxy does (:mod:`.proxy`). The pump (:mod:`.datapath`) runs in threads of its own, off the event
loop, and uses TUN and UDP offloads locally while the wire carries plain packets (see there).
The TUN goes away with the process, like flannel's; restarting the daemon re-creates it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from pyflannel.backend.base import Backend, BackendContext, BackendError, Network, register
from pyflannel.backend.udp.datapath import Datapath, Options
from pyflannel.backend.udp.proxy import Addr, RouteTable
from pyflannel.backend.udp.tun import TunError, open_tun
from pyflannel.config import ConfigError, NetworkConfig, backend_option
from pyflannel.kernel.netlink import Address, Netlink, NetlinkError, Route
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.watcher import Event, EventType

log = logging.getLogger(__name__)

DEFAULT_PORT = 8285
OVERHEAD = 28  # outer IPv4 header (20) + UDP header (8)
TUN_NAME = "flannel%d"
HEALTH_INTERVAL = 1.0


@register("udp")
class UdpBackend(Backend):
    def __init__(self, cfg: NetworkConfig) -> None:
        self.cfg = cfg
        self.port = backend_option(cfg.backend, "Port", DEFAULT_PORT, int)
        if not 0 < self.port < 1 << 16:
            raise ConfigError(f"udp Port {self.port} out of range")

    async def register_network(self, ctx: BackendContext) -> Network:
        # flannel's order: lease first (attrs: PublicIP only), then TUN and socket
        lease = await ctx.acquire(LeaseAttrs(public_ip=ctx.ext.ext_addr))
        net = UdpNetwork(ctx.netlink, ctx.config, lease, ctx.ext.link.mtu - OVERHEAD, self.port, ctx.ext.iface_addr)
        await asyncio.to_thread(net.setup)
        return net


class UdpNetwork(Network):
    def __init__(
        self, nl: Netlink, cfg: NetworkConfig, lease: Lease, mtu: int, port: int, iface_addr: IPv4Address,
        options: Options | None = None,
    ) -> None:
        self.nl = nl
        self.cfg = cfg
        self.lease = lease
        self.mtu = mtu
        self.port = port
        self.iface_addr = iface_addr
        self.options = options or Options()
        self.peers: dict[IPv4Network, Addr] = {}
        self.tun_fd = -1
        self.tun_name = ""
        self.tun_index = 0
        self.sock: socket.socket | None = None
        self.datapath: Datapath | None = None

    # set-up -------------------------------------------------------------------------------

    def setup(self) -> None:
        opts = self.options
        try:
            try:
                self.tun_fd, self.tun_name = open_tun(TUN_NAME, offload=opts.offload)
            except TunError as e:
                if not opts.offload:
                    raise
                log.warning("TUN offloads unavailable (%s); using a plain TUN", e)
                opts = self.options = Options(offload=False, udp_gso=opts.udp_gso, udp_gro=opts.udp_gro,
                                              coalesce=False, verify=opts.verify, threads=opts.threads)
                self.tun_fd, self.tun_name = open_tun(TUN_NAME, offload=False)
        except OSError as e:
            raise BackendError(f"failed to open TUN device: {e}") from None
        try:
            self._configure_tun()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((str(self.iface_addr), self.port))
            except OSError as e:
                sock.close()
                raise BackendError(f"failed to start listening on UDP socket: {e}") from None
            self.sock = sock
        except BaseException:
            self.close()
            raise
        self.datapath = Datapath(self.tun_fd, sock, self.tun_ip, self.mtu, opts)
        log.info("udp backend: %s (MTU %d) <-> %s:%d", self.tun_name, self.mtu, self.iface_addr, self.port)

    @property
    def tun_ip(self) -> IPv4Address:
        return self.lease.subnet.network_address

    def _configure_tun(self) -> None:
        nl, name = self.nl, self.tun_name
        link = nl.link(name)
        if link is None:
            raise BackendError(f"failed to lookup interface {name}")
        self.tun_index = link.index
        try:
            self._address_tun()
            nl.set_link(link.index, mtu=self.mtu)
            nl.set_link(link.index, up=True)
        except NetlinkError as e:
            raise BackendError(f"failed to configure {name}: {e}") from None
        network = self.cfg.network
        if network is None:
            raise BackendError("udp backend needs an IPv4 Network")
        # explicit, since a route for the network may already exist (flannel: installed by Docker)
        failures = nl.apply([("replace", Route(dst=network, gateway=None, oif=link.index))])
        if failures:
            raise BackendError(f"failed to add route ({network} -> {name}): {failures[0][1]}")

    def _address_tun(self) -> None:
        want = Address(self.tun_index, IPv4Interface(f"{self.tun_ip}/32"))
        for a in self.nl.addresses(self.tun_index):
            if a != want:
                self.nl.delete_address(a)
        self.nl.add_address(want)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.tun_fd >= 0:
            os.close(self.tun_fd)
            self.tun_fd = -1

    # lease events -------------------------------------------------------------------------

    async def apply(self, events: Sequence[Event], snapshot: bool) -> None:
        own = self.lease.subnet
        for ev in events:
            sn = ev.lease.subnet
            if ev.type is EventType.ADDED:
                if sn == own:
                    continue
                log.info("Subnet added: %s", sn)
                self.peers[sn] = (str(ev.lease.attrs.public_ip), self.port)
            else:
                log.info("Subnet removed: %s", sn)
                self.peers.pop(sn, None)
        self._publish()

    def _publish(self) -> None:
        if self.datapath is not None:
            # one reference assignment: the data-path threads see the old table or the new one
            self.datapath.routes = RouteTable(dict(self.peers))

    async def lease_changed(self, lease: Lease) -> None:
        self.lease = lease
        self.peers.pop(lease.subnet, None)
        if self.datapath is not None:
            self.datapath.tun_ip = lease.subnet.network_address.packed
        await asyncio.to_thread(self._address_tun)
        self._publish()

    # data path ----------------------------------------------------------------------------

    async def run(self) -> None:
        dp = self.datapath
        if dp is None:
            raise BackendError("udp network was not set up")
        dp.start()
        log.info("udp data path running (%s)", dp.opts)
        try:
            while True:
                await asyncio.sleep(HEALTH_INTERVAL)
                if not dp.alive():
                    raise BackendError(f"udp data path stopped: {dp.error!r}")
        finally:
            await asyncio.shield(asyncio.to_thread(dp.stop))
            self.close()
            log.info("udp data path stopped: %s", dp.counters)
