"""The subnet manager and the etcd registry against a real etcd server (no root needed)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.settings import EtcdSettings, SubnetSettings
from pyflannel.subnet.etcd import EtcdRegistry, SubnetExists
from pyflannel.subnet.lease import LeaseAttrs
from pyflannel.subnet.manager import SubnetManager, Update
from pyflannel.subnet.watcher import EventType

CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'


def etcd_settings(endpoint: str, prefix: str) -> EtcdSettings:
    return EtcdSettings(
        endpoints=(endpoint,), prefix=prefix, cafile="", certfile="", keyfile="", username="", password=""
    )


def subnet_settings(ttl: int = 86400) -> SubnetSettings:
    return SubnetSettings(subnet_file="/nonexistent/subnet.env", renew_margin_minutes=60, lease_ttl_seconds=ttl)


def attrs(ip: str, mac: str = "aa:bb:cc:dd:ee:01") -> LeaseAttrs:
    return LeaseAttrs(
        public_ip=IPv4Address(ip), backend_type="vxlan", backend_data={"VNI": 1, "VtepMAC": mac}
    )


@pytest.fixture
async def registry(etcd, etcd_prefix) -> AsyncIterator[EtcdRegistry]:  # type: ignore[no-untyped-def]
    etcd.etcdctl("put", etcd_prefix + "/config", CONFIG)
    reg = EtcdRegistry(etcd_settings(etcd.endpoint, etcd_prefix))
    await reg.connect()
    try:
        yield reg
    finally:
        await reg.close()


async def new_manager(reg: EtcdRegistry, previous=(None, None), ttl: int = 86400, seed: int = 1) -> SubnetManager:  # type: ignore[no-untyped-def]
    m = SubnetManager(reg, subnet_settings(ttl), previous, rng=random.Random(seed))
    await m.get_config()
    return m


async def test_acquire_writes_flannel_key_json_and_ttl(registry, etcd, etcd_prefix) -> None:  # type: ignore[no-untyped-def]
    m = await new_manager(registry)
    lease = await m.acquire(attrs("192.168.1.1"))
    assert lease.subnet.prefixlen == 24 and lease.subnet.subnet_of(IPv4Network("10.244.0.0/16"))
    assert lease.subnet != IPv4Network("10.244.0.0/24")  # SubnetMin skips the first subnet
    key = f"{etcd_prefix}/subnets/{lease.subnet.network_address}-24"
    raw = etcd.etcdctl("get", key, "--print-value-only").strip()
    assert raw == (
        '{"PublicIP":"192.168.1.1","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}}'
    )
    out = json.loads(etcd.etcdctl("get", key, "-w", "json"))
    lease_id = out["kvs"][0]["lease"]
    ttl = etcd.etcdctl("lease", "timetolive", format(lease_id, "x"))
    assert "granted with TTL(86400s)" in ttl


async def test_reuse_by_public_ip(registry) -> None:  # type: ignore[no-untyped-def]
    first = await (await new_manager(registry, seed=1)).acquire(attrs("192.168.1.1"))
    second = await (await new_manager(registry, seed=2)).acquire(attrs("192.168.1.1", mac="aa:bb:cc:dd:ee:02"))
    assert second.subnet == first.subnet
    listing = await registry.list_subnets()
    assert len(listing.leases) == 1
    assert listing.leases[0].attrs.backend_data["VtepMAC"] == "aa:bb:cc:dd:ee:02"


async def test_reuse_of_previous_subnet(registry) -> None:  # type: ignore[no-untyped-def]
    prev = IPv4Network("10.244.77.0/24")
    lease = await (await new_manager(registry, previous=(prev, None))).acquire(attrs("192.168.1.5"))
    assert lease.subnet == prev


async def test_previous_subnet_held_by_another_host_is_not_taken(registry) -> None:  # type: ignore[no-untyped-def]
    prev = IPv4Network("10.244.77.0/24")
    await (await new_manager(registry, previous=(prev, None))).acquire(attrs("192.168.1.5"))
    other = await (await new_manager(registry, previous=(prev, None))).acquire(attrs("192.168.1.6"))
    assert other.subnet != prev


async def test_collision_then_retry(registry) -> None:  # type: ignore[no-untyped-def]
    """Two managers with the same RNG seed pick the same subnet: the loser picks again."""
    a = await new_manager(registry, seed=7)
    b = await new_manager(registry, seed=7)
    la, lb = await asyncio.gather(a.acquire(attrs("192.168.1.1")), b.acquire(attrs("192.168.1.2")))
    assert la.subnet != lb.subnet
    # The create-if-absent transaction is what arbitrates:
    with pytest.raises(SubnetExists):
        await registry.create_subnet(la.subnet, None, attrs("192.168.1.3"), 60)


async def test_renew_moves_key_to_a_fresh_lease(registry, etcd, etcd_prefix) -> None:  # type: ignore[no-untyped-def]
    m = await new_manager(registry, ttl=4)
    lease = await m.acquire(attrs("192.168.1.1"))
    key = f"{etcd_prefix}/subnets/{lease.subnet.network_address}-24"
    id1 = json.loads(etcd.etcdctl("get", key, "-w", "json"))["kvs"][0]["lease"]
    task = asyncio.create_task(m.renew_forever())
    try:
        await asyncio.sleep(6)  # past the TTL: only renewal keeps the key
        out = json.loads(etcd.etcdctl("get", key, "-w", "json"))
        assert out.get("kvs"), "lease expired despite renewal"
        assert out["kvs"][0]["lease"] != id1
    finally:
        task.cancel()


async def _next(it: AsyncIterator[Update]) -> Update:
    return await asyncio.wait_for(it.__anext__(), 10)


async def test_watch_add_remove_and_own_lease_filtered(registry, etcd, etcd_prefix) -> None:  # type: ignore[no-untyped-def]
    m = await new_manager(registry)
    own = await m.acquire(attrs("192.168.1.1"))
    it = m.watch().__aiter__()
    snap = await _next(it)
    assert snap.snapshot and snap.events == [] and not snap.own_lost
    peer = await (await new_manager(registry, seed=3)).acquire(attrs("192.168.1.2", "aa:bb:cc:dd:ee:02"))
    up = await _next(it)
    assert [(e.type, e.lease.subnet) for e in up.events] == [(EventType.ADDED, peer.subnet)]
    await registry.delete_subnet(peer.subnet, None)
    up = await _next(it)
    assert [(e.type, e.lease.subnet) for e in up.events] == [(EventType.REMOVED, peer.subnet)]
    assert up.events[0].lease.attrs.public_ip == IPv4Address("192.168.1.2")  # the cached attrs
    await registry.delete_subnet(own.subnet, None)
    up = await _next(it)
    assert up.own_lost
    again = await m.reacquire()
    assert again.subnet == own.subnet
    await it.aclose()  # type: ignore[attr-defined]


async def test_malformed_and_outside_leases_are_skipped(registry, etcd, etcd_prefix) -> None:  # type: ignore[no-untyped-def]
    m = await new_manager(registry)
    await m.acquire(attrs("192.168.1.1"))
    etcd.etcdctl("put", f"{etcd_prefix}/subnets/10.244.9.0-24", "not json")
    etcd.etcdctl("put", f"{etcd_prefix}/subnets/10.99.9.0-24", '{"PublicIP":"192.168.1.9"}')
    etcd.etcdctl("put", f"{etcd_prefix}/subnets/garbage", '{"PublicIP":"192.168.1.9"}')
    etcd.etcdctl("put", f"{etcd_prefix}/subnets/10.244.10.0-24", '{"PublicIP":"192.168.1.10","BackendType":"vxlan"}')
    it = m.watch().__aiter__()
    snap = await _next(it)
    assert [e.lease.subnet for e in snap.events] == [IPv4Network("10.244.10.0/24")]
    await it.aclose()  # type: ignore[attr-defined]


async def test_watch_recovers_from_compaction(registry, etcd, etcd_prefix) -> None:  # type: ignore[no-untyped-def]
    """Changes made while the watch was not connected, then compacted away, arrive by re-listing."""
    m = await new_manager(registry)
    await m.acquire(attrs("192.168.1.1"))
    gone = IPv4Network("10.244.150.0/24")
    await registry.create_subnet(gone, None, attrs("192.168.2.50", "aa:bb:cc:dd:ee:50"), 600)
    it = m.watch().__aiter__()
    snap = await _next(it)
    assert [e.lease.subnet for e in snap.events] == [gone]
    # The generator is paused after the snapshot: its watch has not started yet.
    new = IPv4Network("10.244.151.0/24")
    await registry.create_subnet(new, None, attrs("192.168.2.51", "aa:bb:cc:dd:ee:51"), 600)
    await registry.delete_subnet(gone, None)
    rev = json.loads(etcd.etcdctl("get", etcd_prefix + "/config", "-w", "json"))["header"]["revision"]
    etcd.etcdctl("compact", str(rev))
    up = await _next(it)
    assert up.snapshot
    assert sorted((e.type.name, str(e.lease.subnet)) for e in up.events) == [
        ("ADDED", str(new)),
        ("REMOVED", str(gone)),
    ]
    await it.aclose()  # type: ignore[attr-defined]


async def test_listing_in_pages_is_one_consistent_revision(registry, etcd, etcd_prefix) -> None:  # type: ignore[no-untyped-def]
    for i in range(7):
        etcd.etcdctl("put", f"{etcd_prefix}/subnets/10.244.{i}.0-24", attrs(f"192.168.1.{i + 1}").to_json())
    etcd.etcdctl("put", f"{etcd_prefix}/subnets/garbage", "{}")
    pages = registry.subnet_pages(page_size=3)
    first = await pages.__anext__()
    # Written after the first page: the listing is at the first page's revision, so it is absent.
    etcd.etcdctl("put", f"{etcd_prefix}/subnets/10.244.9.0-24", attrs("192.168.1.99").to_json())
    rest = [p async for p in pages]
    assert [len(p.leases) + len(p.bad_keys) for p in [first, *rest]] == [3, 3, 2]  # page_size caps growth
    assert {p.revision for p in rest} == {first.revision}
    subnets = [str(lease.subnet) for p in [first, *rest] for lease in p.leases]
    assert subnets == [f"10.244.{i}.0/24" for i in range(7)]
    assert [k for p in rest for k, _ in p.bad_keys] == [f"{etcd_prefix}/subnets/garbage"]
    whole = await registry.list_subnets()
    assert len(whole.leases) == 8 and whole.revision > first.revision
    # Pages grow fourfold from the first one up to page_size.
    sizes = [len(p.leases) + len(p.bad_keys) async for p in registry.subnet_pages(page_size=100, first_page=1)]
    assert sizes == [1, 4, 4]


async def test_listing_pages_compacted_midway_raise_compacted_and_list_starts_over(registry, etcd, etcd_prefix) -> None:  # type: ignore[no-untyped-def]
    from pyflannel.subnet.etcd import Compacted

    for i in range(5):
        etcd.etcdctl("put", f"{etcd_prefix}/subnets/10.244.{i}.0-24", attrs(f"192.168.1.{i + 1}").to_json())
    pages = registry.subnet_pages(page_size=2)
    first = await pages.__anext__()
    etcd.etcdctl("put", f"{etcd_prefix}/other", "x")
    rev = json.loads(etcd.etcdctl("get", f"{etcd_prefix}/other", "-w", "json"))["header"]["revision"]
    etcd.etcdctl("compaction", str(rev))
    with pytest.raises(Compacted, match=f"revision {first.revision}"):
        async for _ in pages:
            pass
    assert len((await registry.list_subnets()).leases) == 5


async def test_listing_pages_closed_early_leave_no_request_behind(registry, etcd, etcd_prefix) -> None:  # type: ignore[no-untyped-def]
    for i in range(5):
        etcd.etcdctl("put", f"{etcd_prefix}/subnets/10.244.{i}.0-24", attrs(f"192.168.1.{i + 1}").to_json())
    pages = registry.subnet_pages(page_size=2)
    await pages.__anext__()  # the second page is in flight now
    await pages.aclose()
    await asyncio.sleep(0)
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not others
    assert len((await registry.list_subnets()).leases) == 5
