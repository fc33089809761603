"""alloc backend: a lease and nothing else.

Kernel objects: none. The host gets a subnet and renews it; something else (a cloud route table,
an operator) provides the data path. Lease attributes carry only PublicIP, as flannel's.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyflannel.backend.base import Backend, BackendContext, Network, register
from pyflannel.config import NetworkConfig
from pyflannel.subnet.lease import LeaseAttrs
from pyflannel.subnet.watcher import Event


@register("alloc")
class AllocBackend(Backend):
    def __init__(self, cfg: NetworkConfig) -> None:
        self.cfg = cfg

    async def register_network(self, ctx: BackendContext) -> Network:
        net = AllocNetwork()
        net.mtu = ctx.ext.link.mtu
        net.lease = await ctx.acquire(LeaseAttrs(public_ip=ctx.ext.ext_addr))
        return net


class AllocNetwork(Network):
    async def apply(self, events: Sequence[Event], snapshot: bool) -> None:
        return None
