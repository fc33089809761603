"""Subnet allocation policy: reuse by IP, previous subnet, random among the first 100 free."""

from __future__ import annotations

import random
import time
from collections import Counter
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.config import NetworkConfig, parse_config
from pyflannel.subnet.alloc import (
    CANDIDATES,
    Decision,
    OutOfSubnets,
    choose_subnet,
    free_ipv6_subnets,
    free_subnets,
)
from pyflannel.subnet.lease import Lease, LeaseAttrs

CFG = parse_config('{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}')
SMALL = parse_config('{"Network": "10.5.0.0/24"}')  # /26: 10.5.0.64, .128, .192
DUAL = parse_config('{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56"}')
ME = IPv4Address("192.168.1.1")


def lease(sn: str, ip: str = "192.168.1.2", sn6: str | None = None) -> Lease:
    return Lease(IPv4Network(sn), None if sn6 is None else IPv6Network(sn6), LeaseAttrs(IPv4Address(ip)))


def choose(
    cfg: NetworkConfig,
    leases: list[Lease],
    previous: str | None = None,
    previous_v6: str | None = None,
    seed: int = 1,
) -> Decision:
    return choose_subnet(
        cfg,
        leases,
        ME,
        None,
        None if previous is None else IPv4Network(previous),
        None if previous_v6 is None else IPv6Network(previous_v6),
        random.Random(seed),
    )


# -- reuse by public IP -------------------------------------------------------------------------


def test_reuse_by_public_ip() -> None:
    d = choose(CFG, [lease("10.5.7.0/24"), lease("10.5.72.0/24", ip=str(ME))], previous="10.5.9.0/24")
    assert (d.kind, d.subnet, d.ipv6_subnet, d.delete_keys) == (
        "reuse",
        IPv4Network("10.5.72.0/24"),
        None,
        (),
    )
    assert d.message == "Found lease (ip: 10.5.72.0/24 ipv6: ) for current IP (192.168.1.1), reusing"


def test_reuse_dual_stack() -> None:
    d = choose(DUAL, [lease("10.5.72.0/24", ip=str(ME), sn6="fd00:0:0:5::/64")])
    assert (d.kind, d.subnet, d.ipv6_subnet) == (
        "reuse",
        IPv4Network("10.5.72.0/24"),
        IPv6Network("fd00:0:0:5::/64"),
    )
    assert (
        d.message
        == "Found lease (ip: 10.5.72.0/24 ipv6: fd00:0:0:5::/64) for current IP (192.168.1.1), reusing"
    )


@pytest.mark.parametrize(
    ("cfg", "mine"),
    [
        (CFG, lease("10.6.1.0/24", ip=str(ME))),  # outside the Network (Network changed)
        (CFG, lease("10.5.0.0/24", ip=str(ME))),  # below SubnetMin
        (CFG, lease("10.5.8.0/23", ip=str(ME))),  # wrong SubnetLen
        (CFG, lease("10.5.8.0/24", ip=str(ME), sn6="fd00:0:0:1::/64")),  # IPv6 off but lease has one
        (DUAL, lease("10.5.8.0/24", ip=str(ME))),  # IPv6 on but lease has none
        (DUAL, lease("10.5.8.0/24", ip=str(ME), sn6="fd01::/64")),  # IPv6 outside
    ],
)
def test_incompatible_lease_is_deleted_then_allocate(cfg: NetworkConfig, mine: Lease) -> None:
    d = choose(cfg, [mine, lease("10.5.1.0/24")])
    assert d.kind == "new"
    assert d.delete_keys == (mine.key(),)
    assert d.notes[0].startswith(f"Found lease (ip: {mine.subnet} ipv6: ")
    assert d.notes[0].endswith(
        "for current IP (192.168.1.1) but not compatible with current config, deleting"
    )
    assert d.subnet != IPv4Network("10.5.1.0/24")
    assert cfg.contains_subnet(d.subnet) and cfg.contains_ipv6_subnet(d.ipv6_subnet)


def test_compatible_lease_reused_even_after_incompatible_one() -> None:
    old = lease("10.6.1.0/24", ip=str(ME))
    d = choose(CFG, [old, lease("10.5.3.0/24", ip=str(ME)), lease("10.5.4.0/24", ip=str(ME))])
    assert (d.kind, d.subnet, d.delete_keys) == ("reuse", IPv4Network("10.5.3.0/24"), ("10.6.1.0-24",))
    assert any("10.5.4.0/24" in n and "leaving it to expire" in n for n in d.notes)


def test_deleted_lease_does_not_block_candidates() -> None:
    # SubnetLen changed from /17 to /24: the old /17 lease covers half the network but is deleted first
    old = lease("10.5.0.0/17", ip=str(ME))
    d = choose(CFG, [old], seed=3)
    assert d.delete_keys == ("10.5.0.0-17",)
    assert d.kind == "new" and d.subnet.prefixlen == 24


# -- previous subnet --------------------------------------------------------------------------


def test_previous_subnet_reused_when_free() -> None:
    d = choose(CFG, [lease("10.5.1.0/24")], previous="10.5.42.0/24")
    assert (d.kind, d.subnet, d.delete_keys) == ("previous", IPv4Network("10.5.42.0/24"), ())
    assert d.message == "Found previously leased subnet (10.5.42.0/24), reusing"


@pytest.mark.parametrize(
    "holder",
    [
        lease("10.5.42.0/24", ip="192.168.1.9"),  # exactly this subnet: another node has it
        lease("10.5.40.0/22", ip="192.168.1.9"),  # a bigger lease covers it (flannel misses this)
        lease("10.5.42.128/25", ip="192.168.1.9"),  # a smaller lease inside it
    ],
)
def test_previous_subnet_taken_by_another_is_ignored(holder: Lease) -> None:
    d = choose(CFG, [holder], previous="10.5.42.0/24")
    assert d.kind == "new"
    assert not d.subnet.overlaps(holder.subnet)
    assert d.notes == ("Previously leased subnet (10.5.42.0/24) is now leased to another node, ignoring",)


@pytest.mark.parametrize("previous", ["10.6.42.0/24", "10.5.0.0/24", "10.5.42.0/25"])
def test_incompatible_previous_subnet_is_ignored(previous: str) -> None:
    d = choose(CFG, [], previous=previous)
    assert d.kind == "new"
    assert d.notes == (
        f"Found previously leased subnet ({previous}) that is not compatible with the Etcd network config, ignoring",
    )


def test_reuse_by_ip_beats_previous() -> None:
    d = choose(CFG, [lease("10.5.72.0/24", ip=str(ME))], previous="10.5.42.0/24")
    assert (d.kind, d.subnet) == ("reuse", IPv4Network("10.5.72.0/24"))


def test_previous_dual_stack() -> None:
    d = choose(DUAL, [], previous="10.5.42.0/24", previous_v6="fd00:0:0:9::/64")
    assert (d.kind, d.subnet, d.ipv6_subnet) == (
        "previous",
        IPv4Network("10.5.42.0/24"),
        IPv6Network("fd00:0:0:9::/64"),
    )


def test_previous_ipv4_kept_when_ipv6_is_newly_enabled() -> None:
    d = choose(DUAL, [lease("10.5.1.0/24", sn6="fd00:0:0:1::/64")], previous="10.5.42.0/24")
    assert (d.kind, d.subnet) == ("previous", IPv4Network("10.5.42.0/24"))
    assert d.ipv6_subnet is not None and DUAL.contains_ipv6_subnet(d.ipv6_subnet)
    assert d.ipv6_subnet != IPv6Network("fd00:0:0:1::/64")
    assert d.message.startswith("Found previously leased subnet (10.5.42.0/24), reusing; Picking ipv6 subnet")


def test_previous_ipv6_taken_gets_a_new_one() -> None:
    d = choose(
        DUAL,
        [lease("10.5.1.0/24", sn6="fd00:0:0:9::/64")],
        previous="10.5.42.0/24",
        previous_v6="fd00:0:0:9::/64",
    )
    assert d.kind == "previous" and d.ipv6_subnet != IPv6Network("fd00:0:0:9::/64")


def test_previous_v6_ignored_when_ipv6_disabled() -> None:
    d = choose(CFG, [], previous="10.5.42.0/24", previous_v6="fd00:0:0:9::/64")
    assert (d.kind, d.ipv6_subnet) == ("previous", None)


# -- allocation ------------------------------------------------------------------------------


def test_new_subnet_random_among_first_100_free() -> None:
    taken = [lease(f"10.5.{i}.0/24") for i in range(1, 50, 2)]  # every other one of the first 49
    free = free_subnets(CFG, taken)
    assert len(free) == CANDIDATES
    assert free[0] == IPv4Network("10.5.2.0/24") and free[1] == IPv4Network("10.5.4.0/24")
    picks = Counter(choose(CFG, taken, seed=s).subnet for s in range(1000))
    assert set(picks) <= set(free)
    assert len(picks) > 80  # spread over the candidates, not always the first
    d = choose(CFG, taken)
    assert d.kind == "new" and d.message == "Picking subnet in range 10.5.1.0 ... 10.5.255.0"


def test_seeded_choice_is_deterministic() -> None:
    assert choose(CFG, [], seed=42).subnet == choose(CFG, [], seed=42).subnet


def test_small_network_and_exhaustion() -> None:
    assert free_subnets(SMALL, []) == [IPv4Network(f"10.5.0.{n}/26") for n in (64, 128, 192)]
    d = choose(SMALL, [lease("10.5.0.64/26"), lease("10.5.0.192/26")])
    assert d.subnet == IPv4Network("10.5.0.128/26")
    with pytest.raises(OutOfSubnets) as ei:
        choose(SMALL, [lease(f"10.5.0.{n}/26") for n in (64, 128, 192)])
    assert str(ei.value) == "out of subnets"


def test_first_subnet_and_leases_outside_are_irrelevant() -> None:
    leases = [lease("10.5.0.0/24"), lease("10.9.0.0/16"), lease("10.4.0.0/24")]
    assert free_subnets(CFG, leases, limit=2) == [IPv4Network("10.5.1.0/24"), IPv4Network("10.5.2.0/24")]


def test_big_lease_blocks_everything_it_covers() -> None:
    assert free_subnets(CFG, [lease("10.5.0.0/17")], limit=1) == [IPv4Network("10.5.128.0/24")]
    with pytest.raises(OutOfSubnets):
        choose(CFG, [lease("10.5.0.0/16")])


def test_subnet_min_max_respected() -> None:
    cfg = parse_config('{"Network": "10.5.0.0/16", "SubnetMin": "10.5.100.0", "SubnetMax": "10.5.102.0"}')
    assert free_subnets(cfg, [lease("10.5.101.0/24")]) == [
        IPv4Network("10.5.100.0/24"),
        IPv4Network("10.5.102.0/24"),
    ]
    with pytest.raises(OutOfSubnets):
        choose(cfg, [lease(f"10.5.{i}.0/24") for i in (100, 101, 102)])


def test_ipv6_allocated_independently() -> None:
    leases = [lease("10.5.1.0/24", sn6="fd00:0:0:1::/64"), lease("10.5.2.0/24", sn6="fd00:0:0:3::/64")]
    assert free_ipv6_subnets(DUAL, leases, limit=3) == [
        IPv6Network("fd00:0:0:2::/64"),
        IPv6Network("fd00:0:0:4::/64"),
        IPv6Network("fd00:0:0:5::/64"),
    ]
    d = choose(DUAL, leases)
    assert d.kind == "new" and d.ipv6_subnet is not None
    assert d.ipv6_subnet not in (IPv6Network("fd00:0:0:1::/64"), IPv6Network("fd00:0:0:3::/64"))
    assert "Picking ipv6 subnet in range fd00:0:0:1:: ... fd00:0:0:ff::" in d.message
    assert free_ipv6_subnets(CFG, leases) == []


def test_ipv6_exhaustion() -> None:
    cfg = parse_config(
        '{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/62"}'
    )  # 3 usable /64
    leases = [lease(f"10.5.{i}.0/24", sn6=f"fd00:0:0:{i}::/64") for i in (1, 2, 3)]
    with pytest.raises(OutOfSubnets):
        choose(cfg, leases)


def test_ipv4_disabled_is_a_caller_error() -> None:
    cfg = parse_config('{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/56"}')
    with pytest.raises(ValueError, match="IPv4 is disabled"):
        choose(cfg, [])


def test_5000_leases_fast() -> None:
    cfg = parse_config('{"Network": "10.0.0.0/8"}')  # 65535 subnets
    rng = random.Random(7)
    nums = rng.sample(range(1, 65536), 5000)
    leases = [
        lease(f"{IPv4Network(((10 << 24) + (n << 8), 24))}", ip=f"172.16.{n >> 8}.{n & 255}") for n in nums
    ]
    leases += [
        lease(f"10.0.{i}.0/24", ip=f"172.17.0.{i}") for i in range(1, 200)
    ]  # a dense block at the start
    start = time.perf_counter()
    for _ in range(10):
        d = choose(cfg, leases, previous="10.0.5.0/24")
    elapsed = (time.perf_counter() - start) / 10
    assert d.kind == "new"
    assert all(not d.subnet.overlaps(le.subnet) for le in leases)
    assert elapsed < 0.2, f"choose_subnet took {elapsed:.3f}s for 5199 leases"
    # reuse lookup at the end of the list is fast too
    me = Lease(IPv4Network("10.200.0.0/24"), None, LeaseAttrs(ME))
    assert choose(cfg, [*leases, me]).kind == "reuse"


@settings(max_examples=100, deadline=None)
@given(
    taken=st.lists(st.tuples(st.integers(0, 255), st.integers(20, 26)), max_size=40),
    previous=st.none() | st.integers(0, 255),
    seed=st.integers(0, 2**32),
)
def test_property_choice_never_overlaps(
    taken: list[tuple[int, int]], previous: int | None, seed: int
) -> None:
    leases = [lease(str(IPv4Network(((10 << 24) + (5 << 16) + (n << 8), p), strict=False))) for n, p in taken]
    prev = None if previous is None else f"10.5.{previous}.0/24"
    try:
        d = choose(CFG, leases, previous=prev, seed=seed)
    except OutOfSubnets:
        # then really nothing is free between SubnetMin and SubnetMax
        for i in range(1, 256):
            assert any(IPv4Network(f"10.5.{i}.0/24").overlaps(le.subnet) for le in leases)
        return
    assert CFG.contains_subnet(d.subnet)
    assert all(not d.subnet.overlaps(le.subnet) for le in leases)
    brute = [
        IPv4Network(f"10.5.{i}.0/24")
        for i in range(1, 256)
        if not any(IPv4Network(f"10.5.{i}.0/24").overlaps(le.subnet) for le in leases)
    ][:CANDIDATES]
    assert free_subnets(CFG, leases) == brute
    if d.kind == "new":
        assert d.subnet in brute


def test_public_ipv6_does_not_matter() -> None:
    d = choose_subnet(
        CFG, [lease("10.5.72.0/24", ip=str(ME))], ME, IPv6Address("fd00::1"), None, None, random.Random(1)
    )
    assert d.kind == "reuse"
