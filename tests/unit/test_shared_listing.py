"""SharedListing: pages for early readers, the whole listing at the end, failures passed on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.backend.peers import PeerNetwork
from pyflannel.subnet.etcd import Listing, RegistryError
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.listing import SharedListing


def lease(i: int) -> Lease:
    return Lease(IPv4Network(f"10.244.{i}.0/24"), None, LeaseAttrs(IPv4Address(f"192.168.1.{i}")))


async def source(gates: list[asyncio.Event], fail: bool = False) -> AsyncGenerator[Listing, None]:
    for i, gate in enumerate(gates):
        await gate.wait()
        yield Listing([lease(2 * i), lease(2 * i + 1)], 7, [(f"bad{i}", "why")])
    if fail:
        raise RegistryError("list subnets: etcd unavailable")


async def test_readers_get_each_page_as_it_arrives_and_the_whole_at_the_end() -> None:
    gates = [asyncio.Event() for _ in range(3)]
    shared = SharedListing(source(gates))
    reading = asyncio.create_task(shared.run())
    seen: list[list[str]] = [[], []]

    async def reader(n: int) -> None:
        async for page in shared.pages():
            seen[n].append(",".join(str(x.subnet) for x in page.leases))

    readers = [asyncio.create_task(reader(0)), asyncio.create_task(reader(1))]
    gates[0].set()
    await asyncio.sleep(0.01)
    assert seen == [["10.244.0.0/24,10.244.1.0/24"]] * 2  # before the rest exists
    result = asyncio.create_task(shared.result())
    await asyncio.sleep(0.01)
    assert not result.done()
    gates[1].set()
    gates[2].set()
    whole = await result
    await asyncio.gather(reading, *readers)
    assert [str(x.subnet) for x in whole.leases] == [f"10.244.{i}.0/24" for i in range(6)]
    assert whole.revision == 7 and [k for k, _ in whole.bad_keys] == ["bad0", "bad1", "bad2"]
    assert len(seen[0]) == len(seen[1]) == 3
    # A late reader gets every page at once.
    assert len([p async for p in shared.pages()]) == 3


async def test_a_failed_listing_ends_the_pages_and_raises_from_result() -> None:
    gate = asyncio.Event()
    gate.set()
    shared = SharedListing(source([gate], fail=True))
    await shared.run()
    assert len([p async for p in shared.pages()]) == 1
    with pytest.raises(RegistryError, match="etcd unavailable"):
        await shared.result()


async def test_an_unexpected_error_fails_the_listing_like_a_registry_error() -> None:
    async def broken() -> AsyncGenerator[Listing, None]:
        yield Listing([lease(1)], 7, [])
        raise AttributeError("'str' object has no attribute 'get'")

    shared = SharedListing(broken())
    await shared.run()
    with pytest.raises(RegistryError, match="list subnets: AttributeError"):
        await shared.result()


async def test_of_is_complete_at_once() -> None:
    shared = SharedListing.of([lease(1)], revision=3)
    await shared.run()
    assert (await shared.result()).revision == 3
    assert [len(p.leases) async for p in shared.pages()] == [1]


@pytest.mark.parametrize(
    ("subnet", "local", "clash"),
    [
        ("10.244.9.0/24", "10.244.9.0/24", True),  # the same network
        ("10.244.9.0/24", "10.244.9.128/25", True),  # covers a host network
        ("10.244.9.0/24", "10.244.0.0/16", True),  # inside a host network
        ("10.244.9.0/24", "10.244.10.0/24", False),
        ("10.244.9.0/24", "192.168.9.0/24", False),
    ],
)
def test_local_clash_is_overlap(subnet: str, local: str, clash: bool) -> None:
    n = IPv4Network(local)
    got = PeerNetwork.local_clash(IPv4Network(subnet), [(int(n.network_address), int(n.netmask), n)])
    assert (got == n) is clash
    assert IPv4Network(subnet).overlaps(n) is clash
