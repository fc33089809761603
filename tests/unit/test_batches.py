"""daemon._Batches: watch updates reach the backend in order, merged while it is busy."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network

from pyflannel.backend.base import Network
from pyflannel.daemon import _Batches
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.manager import Update
from pyflannel.subnet.watcher import Event, EventType


class SlowNetwork(Network):
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], bool]] = []
        self.gate = asyncio.Event()

    async def apply(self, events: Sequence[Event], snapshot: bool) -> None:
        self.calls.append(([f"{e.type.name} {e.lease.subnet}" for e in events], snapshot))
        await self.gate.wait()  # the kernel is busy


def update(i: int, snapshot: bool = False, kind: EventType = EventType.ADDED) -> Update:
    lease = Lease(IPv4Network(f"10.244.{i}.0/24"), None, LeaseAttrs(IPv4Address(f"192.168.1.{i}")))
    return Update([Event(kind, lease)], snapshot=snapshot)


async def test_updates_arriving_while_the_backend_is_busy_are_applied_as_one_batch_in_order() -> None:
    net = SlowNetwork()
    batches = _Batches(net)
    task = asyncio.create_task(batches.apply_forever())
    try:
        batches.add(update(1))
        await asyncio.sleep(0.01)
        assert net.calls == [(["ADDED 10.244.1.0/24"], False)]
        # While the first batch is in the kernel: three more, one of them a snapshot.
        batches.add(update(2))
        batches.add(update(3, snapshot=True))
        batches.add(update(2, kind=EventType.REMOVED))
        idle = asyncio.create_task(batches.idle())
        await asyncio.sleep(0.01)
        assert not idle.done()
        net.gate.set()
        await asyncio.wait_for(idle, 1)
        assert net.calls[1:] == [(["ADDED 10.244.2.0/24", "ADDED 10.244.3.0/24", "REMOVED 10.244.2.0/24"], True)]
        await asyncio.wait_for(batches.idle(), 1)  # idle again: returns at once
    finally:
        task.cancel()
