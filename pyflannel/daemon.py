"""flanneld's start-up order and supervision.

Start-up follows flannel's ``main.go``: previous subnet from subnet.env, health server, network
config (retried every second), external interface, backend, lease, subnet.env, readiness,
``READY=1``; then the long-running tasks run in one :class:`asyncio.TaskGroup` - lease renewal,
the lease watch feeding the backend, and the backend's own upkeep. One task failing cancels the
others and the process exits non-zero with one log line. SIGTERM/SIGINT stop cleanly and leave
every kernel object in place, so a restart does not disturb traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from ipaddress import IPv4Network
from typing import TYPE_CHECKING

from pyflannel.backend.base import BackendContext, BackendError, Network, new_backend
from pyflannel.config import ConfigError, NetworkConfig
from pyflannel.healthz import HealthServer
from pyflannel.iface import InterfaceError, select
from pyflannel.kernel.netlink import Netlink, NetlinkError
from pyflannel.settings import Settings
from pyflannel.subnet.etcd import EtcdRegistry, RegistryError
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.listing import SharedListing
from pyflannel.subnet.manager import SubnetManager, Update
from pyflannel.subnetenv import (
    SubnetEnv,
    first_address,
    read_previous_subnets,
    read_subnet_env,
    write_subnet_env,
)

if TYPE_CHECKING:
    from pyflannel.traffic.manager import TrafficManager

log = logging.getLogger(__name__)


class FatalError(Exception):
    """Start-up cannot continue (one-line message; exit status 1)."""


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state, if NOTIFY_SOCKET is set."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(message.encode())
    except OSError as e:
        log.warning("sd_notify to %s failed: %s", path, e)


def check_usable(cfg: NetworkConfig) -> None:
    """What the daemon needs beyond a valid config; a ConfigError is waited out like a bad config.

    flannel exits on these (IPv6-only, unknown backend); a supervisor then restarts it in a loop.
    """
    if cfg.network is None:
        raise ConfigError("IPv6-only networks are not supported with etcd (flannel cannot either)")
    try:
        new_backend(cfg)
    except BackendError as e:
        raise ConfigError(f"Error fetching backend: {e}") from None


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = EtcdRegistry(settings.etcd)
        self.health: HealthServer | None = None
        self.network: Network | None = None
        self.manager: SubnetManager | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None
        stopping = asyncio.Event()

        def on_signal(signame: str) -> None:
            if not stopping.is_set():
                log.info("Received %s, exiting cleanly...", signame)
                stopping.set()
                main.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig.name)
        try:
            await self._run()
        except asyncio.CancelledError:
            if not stopping.is_set():
                raise
        except BaseExceptionGroup as group:
            # A supervised task (or the start-up code inside the TaskGroup) failed: surface the
            # first real error so the caller logs one meaningful line, not "1 sub-exception".
            raise _first_leaf(group) from None
        finally:
            if self.health is not None:
                await self.health.stop()
            await self.registry.close()
        log.info("Exiting cleanly...")

    async def _run(self) -> None:
        s = self.settings
        try:
            await self.registry.connect()
        except RegistryError as e:
            raise FatalError(str(e)) from None
        try:
            self.previous_env: dict[str, str] = read_subnet_env(s.subnet.subnet_file)
        except OSError:
            self.previous_env = {}
        self.manager = manager = SubnetManager(
            self.registry, s.subnet, read_previous_subnets(s.subnet.subnet_file)
        )
        if s.health.healthz_port > 0:
            self.health = HealthServer(s.health.healthz_ip, s.health.healthz_port)
            try:
                await self.health.start()
            except OSError as e:
                raise FatalError(
                    f"cannot listen on {s.health.healthz_ip}:{s.health.healthz_port}: {e.strerror}"
                ) from None
        if s.kube.kube_subnet_mgr:
            raise FatalError("--kube-subnet-mgr is not supported by pyflannel (etcd only)")

        cfg = await manager.get_config(check=check_usable)
        try:
            backend = new_backend(cfg)
        except (BackendError, ConfigError) as e:
            raise FatalError(f"Error fetching backend: {e}") from None

        nl = Netlink()
        try:
            ext = select(s.interface, nl)
        except InterfaceError as e:
            raise FatalError(str(e)) from None
        listing = SharedListing(self.registry.subnet_pages())
        reading = asyncio.create_task(listing.run(), name="listing")

        async def acquire(attrs: LeaseAttrs) -> Lease:
            try:
                manager.prime(await listing.result())  # one listing for all at start (issue 6)
            except RegistryError as e:
                log.debug("initial listing failed (%s); the acquire loop retries", e)
            return await manager.acquire(attrs)

        ctx = BackendContext(config=cfg, ext=ext, netlink=nl, acquire=acquire, listing=listing)
        try:
            self.network = network = await backend.register_network(ctx)
        except (BackendError, NetlinkError, ConfigError) as e:
            raise FatalError(f"Error registering network: {e}") from None
        finally:
            reading.cancel()  # done by now unless registering failed
            with contextlib.suppress(asyncio.CancelledError):
                await reading

        log.info("Running backend %s on %s (lease %s)", cfg.backend_type, ext.link.name, network.lease.subnet)
        async with asyncio.TaskGroup() as tg:
            # Peers are programmed (in a thread) while the rules are set up: start-up time (issue 6).
            if s.traffic.ip_blackhole_route:
                from pyflannel.blackhole import BlackholeRoute

                keeper = BlackholeRoute(Netlink())  # a socket of its own: it runs beside the backend
                tg.create_task(keeper.run_forever(network, float(s.traffic.iptables_resync)), name="blackhole")
            batches = _Batches(network)
            tg.create_task(self._watch(network, batches), name="watch")
            tg.create_task(batches.apply_forever(), name="apply")
            tg.create_task(manager.renew_forever(), name="renew")
            tg.create_task(network.run(), name="backend")
            traffic = await self._setup_traffic(cfg.enable_nftables, network)
            if traffic is not None:
                tg.create_task(traffic.resync_forever(float(s.traffic.iptables_resync)), name="traffic")
            self._write_subnet_env(network)
            if self.health is not None:
                self.health.ready = True
            sd_notify("READY=1")

    def _previous_rules_key(self) -> tuple[IPv4Network, IPv4Network] | None:
        env = self.previous_env
        try:
            return (
                IPv4Network(env["FLANNEL_NETWORK"]),
                IPv4Network(env["FLANNEL_SUBNET"], strict=False),
            )
        except (KeyError, ValueError):
            return None

    async def _setup_traffic(self, nftables: bool, network: Network) -> TrafficManager | None:
        """Masquerade and forward rules (spec 1.6); the other mode's rules are removed first."""
        t = self.settings.traffic
        cfg = self.manager.config if self.manager else None
        assert cfg is not None and cfg.network is not None
        # Imported here: not needed before the peers are on their way (start-up time, issue 6).
        from pyflannel.traffic.iptables import TrafficError
        from pyflannel.traffic.manager import new_traffic_manager

        tm = new_traffic_manager(nftables, t.ip_masq_fully_random_disable)
        await tm.cleanup_other_mode()
        if not (t.ip_masq or t.iptables_forward_rules):
            return None
        try:
            if t.ip_masq:
                await tm.setup_masq(cfg.network, network.lease.subnet, self._previous_rules_key())
            if t.iptables_forward_rules:
                await tm.setup_forward(cfg.network)
        except TrafficError as e:
            raise FatalError(f"failed to set up traffic rules: {e}") from None
        return tm

    def _write_subnet_env(self, network: Network) -> None:
        s, cfg = self.settings, self.manager.config if self.manager else None
        assert cfg is not None
        lease = network.lease
        env = SubnetEnv(
            network=cfg.network,
            subnet=first_address(lease.subnet),
            ipv6_network=cfg.ipv6_network if cfg.enable_ipv6 else None,
            ipv6_subnet=None,
            mtu=network.mtu,
            ipmasq=s.traffic.ip_masq,
        )
        try:
            write_subnet_env(s.subnet.subnet_file, env)
        except OSError as e:
            log.warning("failed to write subnet file %s: %s", s.subnet.subnet_file, e)

    async def _watch(self, network: Network, batches: _Batches) -> None:
        manager = self.manager
        assert manager is not None
        # The peers of the start-up listing first: the first snapshot then has nothing left to add,
        # and building it meanwhile would only compete with them for the interpreter.
        await network.settled()
        async for update in manager.watch():
            if update.own_lost:
                await batches.idle()  # what came before is in the kernel before we move
                old = network.lease.subnet
                lease = await manager.reacquire()
                if lease.subnet != old:
                    await network.lease_changed(lease)
                    self._write_subnet_env(network)
                else:
                    network.lease = lease
            if update.events or update.snapshot:
                batches.add(update)


class _Batches:
    """Watch updates on their way to the backend, so that reading and programming overlap.

    While the backend programs one batch (in a thread), the watch task goes on reading and
    decoding; whatever arrived meanwhile is then applied as one batch, in order (issue 6: 5000
    leases written in 0.2 s). A snapshot anywhere in a batch makes the whole batch one: applying
    the events and then reconciling everything gives the same end state.
    """

    def __init__(self, network: Network) -> None:
        self.network = network
        self._updates: list[Update] = []
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, update: Update) -> None:
        self._updates.append(update)
        self._idle.clear()
        self._arrived.set()

    async def idle(self) -> None:
        await self._idle.wait()

    async def apply_forever(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._updates:
                updates, self._updates = self._updates, []
                events = [ev for u in updates for ev in u.events]
                await self.network.apply(events, any(u.snapshot for u in updates))
            self._idle.set()


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
