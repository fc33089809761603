"""What every backend provides, and the registry of backend types.

A backend turns the lease events of other hosts into kernel state. ``register_network`` creates the
backend's devices, acquires this host's lease (through ``BackendContext.acquire``, so the lease
attributes can carry device data such as the VTEP MAC) and addresses the devices. The returned
:class:`Network` then receives batches of lease events; ``snapshot=True`` marks a full listing, after
which the network reconciles the kernel against the whole set (removing stale objects it owns).
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from pyflannel.config import NetworkConfig
from pyflannel.kernel.netlink import Link, Netlink
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.listing import SharedListing
from pyflannel.subnet.watcher import Event


class BackendError(Exception):
    """The backend cannot run with this configuration or host (one-line message)."""


@dataclass(frozen=True)
class ExternalInterface:
    """The interface carrying overlay traffic and the addresses advertised in the lease."""

    link: Link
    iface_addr: IPv4Address  # the interface's own address
    ext_addr: IPv4Address  # --public-ip, else iface_addr


@dataclass
class BackendContext:
    config: NetworkConfig
    ext: ExternalInterface
    netlink: Netlink
    acquire: Callable[[LeaseAttrs], Awaitable[Lease]]
    # The start-up listing as it arrives: a backend can program peers from its first pages, and
    # recover its own previous lease data (the VTEP MAC) even when its device no longer exists.
    listing: SharedListing


class Network(abc.ABC):
    """One overlay network on this host, driven by lease events."""

    lease: Lease
    mtu: int

    @abc.abstractmethod
    async def apply(self, events: Sequence[Event], snapshot: bool) -> None:
        """Program the kernel for these events; after a snapshot, also remove stale objects."""

    async def run(self) -> None:
        """Long-running upkeep (device monitor, periodic checks). Default: nothing."""

    async def settled(self) -> None:
        """Wait until the start-up work begun in ``register_network`` is done. Default: nothing."""

    async def lease_changed(self, lease: Lease) -> None:
        """This host's lease moved to another subnet (re-acquired after loss)."""
        self.lease = lease


class Backend(abc.ABC):
    @abc.abstractmethod
    async def register_network(self, ctx: BackendContext) -> Network: ...


BackendFactory = Callable[[NetworkConfig], Backend]
_REGISTRY: dict[str, BackendFactory] = {}


def register(name: str) -> Callable[[BackendFactory], BackendFactory]:
    def deco(factory: BackendFactory) -> BackendFactory:
        _REGISTRY[name] = factory
        return factory

    return deco


# Type name -> module that registers it. Only the configured backend's module is imported: the
# others cost flanneld's start-up 15 ms for nothing (issue 6).
_MODULES = {
    "alloc": "pyflannel.backend.alloc",
    "extension": "pyflannel.backend.extension",
    "host-gw": "pyflannel.backend.hostgw",
    "udp": "pyflannel.backend.udp",
    "vxlan": "pyflannel.backend.vxlan",
}


def _load(name: str) -> None:
    module = _MODULES.get(name)
    if module is not None and name not in _REGISTRY:
        importlib.import_module(module)  # importing the module registers it


def new_backend(config: NetworkConfig) -> Backend:
    _load(config.backend_type)
    factory = _REGISTRY.get(config.backend_type)
    if factory is None:
        raise BackendError(f"unknown backend type: {config.backend_type}")
    return factory(config)


def known_backends() -> list[str]:
    for name in _MODULES:
        _load(name)
    return sorted(_REGISTRY)
