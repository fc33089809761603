"""``--ip-blackhole-route``: a blackhole route for this host's own subnet.

Kernel object: ``blackhole <own subnet> metric 4294967295`` in the main table. Traffic for an address
of our subnet that nothing on this host answers for is dropped here, instead of following the
default route out of the host (and, from a peer, bouncing until its TTL runs out).

flannel (v0.27.1+) adds ``blackhole <subnet>`` at metric 0, meant for setups without a bridge
(Canal: a /32 route per pod). With the bridge plugin that breaks the host: the bridge's connected
route for the same subnet, added when the first pod starts (after flanneld), lands behind the
blackhole, and the kernel uses the first of two equal routes, so local pods become unreachable. At
the lowest preference the blackhole only takes what no other route covers: the same effect without
a bridge, no harm with one.

Checked every ``--iptables-resync`` seconds with one create request (EEXIST: it is there), no route
dumps. When our lease moves, the old subnet's route goes. Left in place on exit, like every kernel
object of ours. Errors are logged once per distinct error, not every period as flannel does.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from ipaddress import IPv4Network

from pyflannel.backend.base import Network
from pyflannel.kernel.netlink import Netlink, NetlinkError, Route

log = logging.getLogger(__name__)

METRIC = 0xFFFFFFFF  # the lowest preference there is


def blackhole_route(subnet: IPv4Network) -> Route:
    return Route(dst=subnet, gateway=None, oif=None, metric=METRIC, blackhole=True)


class BlackholeRoute:
    def __init__(self, nl: Netlink) -> None:
        self.nl = nl
        self.current: IPv4Network | None = None

    def ensure(self, subnet: IPv4Network) -> bool:
        """Make the route for ``subnet`` exist (and no other of ours); True if it had to be added."""
        if self.current is not None and self.current != subnet:
            old = blackhole_route(self.current)
            for _op, e in self.nl.apply([("delete", old)]):
                log.warning("removing %s: %s", old, e)
            self.current = None
        try:
            self.nl.add_route(blackhole_route(subnet))
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
            self.current = subnet
            return False
        self.current = subnet
        return True

    async def run_forever(self, network: Network, interval: float) -> None:
        last_error = ""
        added_once = False
        while True:
            subnet = network.lease.subnet
            try:
                if await asyncio.to_thread(self.ensure, subnet):
                    log.info("%s blackhole route for %s", "re-added" if added_once else "added", subnet)
                    added_once = True
                last_error = ""
            except NetlinkError as e:
                if str(e) != last_error:
                    log.error("Failed to setup blackhole route, %s", e)
                    last_error = str(e)
            await asyncio.sleep(interval)
