"""host-gw backend: plain routes, for hosts that share one L2 segment.

Kernel objects. No device. Per remote host-gw lease one route
``<remote subnet> via <remote PublicIP> dev <external interface>``: the remote host is a directly
reachable next hop, so the kernel forwards container traffic to it without encapsulation (MTU =
external MTU). A conflicting route to the same destination is replaced; an identical one is kept.
Every 10 s (as flannel) the routes are compared with the kernel and any missing one re-added; at
start-up and after every re-list, routes of peers that are gone are removed too. Leases of other
backend types are ignored with a warning. Refuses to run behind NAT (public IP not the interface's).
"""

from __future__ import annotations

import asyncio
import logging

from pyflannel.backend.base import Backend, BackendContext, BackendError, Network, register
from pyflannel.backend.peers import KernelObject, PeerNetwork
from pyflannel.config import NetworkConfig
from pyflannel.kernel.netlink import Link, Netlink, Route
from pyflannel.subnet.lease import Lease, LeaseAttrs

log = logging.getLogger(__name__)

CHECK_INTERVAL = 10.0
NAT_MESSAGE = (
    "your PublicIP differs from interface IP, meaning that probably you're on a NAT, "
    "which is not supported by host-gw backend"
)


def route_for(lease: Lease, ext_index: int) -> Route:
    return Route(dst=lease.subnet, gateway=lease.attrs.public_ip, oif=ext_index)


@register("host-gw")
class HostGwBackend(Backend):
    def __init__(self, cfg: NetworkConfig) -> None:
        self.cfg = cfg

    async def register_network(self, ctx: BackendContext) -> Network:
        if ctx.ext.ext_addr != ctx.ext.iface_addr:
            raise BackendError(NAT_MESSAGE)
        net = HostGwNetwork(ctx.netlink, ctx.config, ctx.ext.link)
        net.lease = await ctx.acquire(LeaseAttrs(public_ip=ctx.ext.ext_addr, backend_type="host-gw"))
        return net


class HostGwNetwork(PeerNetwork):
    def __init__(self, nl: Netlink, cfg: NetworkConfig, ext_link: Link) -> None:
        super().__init__(nl, cfg, ext_link.mtu)
        self.ext_link = ext_link
        self._ignored: set[tuple[str, str]] = set()

    def accept(self, lease: Lease) -> bool:
        if lease.attrs.backend_type != "host-gw":
            key = (str(lease.subnet), lease.attrs.backend_type)
            if key not in self._ignored:
                self._ignored.add(key)
                log.warning("ignoring lease %s of backend type %r (this network is host-gw)",
                            lease.subnet, lease.attrs.backend_type or "udp/alloc")
            return False
        return True

    def desired(self, lease: Lease) -> list[KernelObject]:
        return [route_for(lease, self.ext_link.index)]

    def owned_kernel_objects(self) -> list[KernelObject]:
        network, own = self.cfg.network, self.lease.subnet
        return [
            r
            for r in self.nl.routes(oif=self.ext_link.index)
            if network is not None
            and r.gateway is not None
            and r.dst.prefixlen == self.cfg.subnet_len
            and r.dst.subnet_of(network)
            and r.dst != own
        ]

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            async with self.lock:
                n = await asyncio.to_thread(self.reconcile_all)
            if n:
                log.info("route check: repaired %d routes", n)
