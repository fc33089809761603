"""Bad input from etcd, table-driven, against a real etcd (no root): the network config and lease
keys and values. Each bad input gives one clear log line and nothing else: the config is waited
out (never a crash loop), a bad lease is never handed to a backend, the good ones still are.

The kernel side (no route outside the Network or over the host's own networks) is checked end to
end in tests/e2e/test_bad_input.py with the same lease table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.daemon import check_usable
from pyflannel.settings import EtcdSettings, SubnetSettings
from pyflannel.subnet.etcd import EtcdRegistry
from pyflannel.subnet.lease import LeaseAttrs
from pyflannel.subnet.manager import SubnetManager, Update
from pyflannel.subnet.watcher import EventType

GOOD_CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'
MAC = '"BackendData":{"VNI":1,"VtepMAC":"0e:fa:00:00:00:01"}'

# (config value, a fragment of the one log line it must produce)
BAD_CONFIGS = [
    ("{", "unexpected end of JSON input"),
    ("[]", "cannot unmarshal array"),
    ('"x"', "cannot unmarshal string"),
    ("null", "please define a correct Network"),
    ("{}", "please define a correct Network"),
    ("\xff\xfe", "invalid character"),
    ('{"Network":123}', "invalid CIDR address: 123"),
    ('{"Network":"banana"}', "invalid CIDR address: banana"),
    ('{"Network":"10.0.0.0/33"}', "invalid CIDR address"),
    ('{"Network":"fd00::/64"}', "invalid IPv4 CIDR"),
    ('{"Network":"10.244.0.0/16","SubnetLen":33}', "SubnetLen must be less than /31"),
    ('{"Network":"10.244.0.0/16","SubnetLen":31}', "SubnetLen must be less than /31"),
    ('{"Network":"10.244.0.0/16","SubnetLen":8}', "at least four subnets"),
    ('{"Network":"10.244.0.0/16","SubnetLen":-1}', "SubnetLen of type uint"),
    ('{"Network":"10.244.0.0/16","SubnetLen":"24"}', "SubnetLen of type uint"),
    ('{"Network":"10.244.0.0/16","SubnetMin":"10.99.0.0"}', "SubnetMin is not in the range"),
    ('{"Network":"10.244.0.0/16","Backend":[]}', "error decoding Backend"),
    ('{"Network":"10.244.0.0/16","Backend":{"Type":5}}', "error decoding Backend"),
    ('{"Network":"10.244.0.0/16","Backend":{"Type":"bogus"}}', "unknown backend type: bogus"),
    ('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":-1}}', "VNI -1 out of range"),
    ('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":"one"}}', "cannot unmarshal string"),
    ('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":70000}}', "Port 70000 out of range"),
    ('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":10}}', "MTU 10 out of range"),
    ('{"Network":"10.244.0.0/16","EnableIPv4":false}', "IPv6-only networks are not supported"),
]

# (key under <prefix>/subnets/, value, a fragment of the one warning it must produce)
BAD_LEASES = [
    ("10.244.101.0-24", "not json", "invalid lease JSON"),
    ("10.244.102.0-24", "[]", "cannot unmarshal"),
    ("10.244.103.0-24", "null", "cannot unmarshal null"),
    ("10.244.104.0-24", "{}", "PublicIP"),
    ("10.244.105.0-24", '{"BackendType":"vxlan",' + MAC + "}", "PublicIP"),
    ("10.244.106.0-24", '{"PublicIP":5,"BackendType":"vxlan",' + MAC + "}", "invalid PublicIP 5"),
    ("10.244.107.0-24", '{"PublicIP":"banana","BackendType":"vxlan",' + MAC + "}", "banana"),
    ("10.244.108.0-24", '{"PublicIP":"999.1.1.1","BackendType":"vxlan",' + MAC + "}", "999.1.1.1"),
    ("10.244.109.0-24", '{"PublicIP":"0.0.0.0","BackendType":"vxlan",' + MAC + "}", "not a usable unicast"),
    ("10.244.110.0-24", '{"PublicIP":"127.0.0.1","BackendType":"vxlan",' + MAC + "}", "not a usable unicast"),
    ("10.244.111.0-24", '{"PublicIP":"224.0.0.1","BackendType":"vxlan",' + MAC + "}", "not a usable unicast"),
    ("10.244.112.0-24", '{"PublicIP":"255.255.255.255","BackendType":"vxlan",' + MAC + "}", "not a usable"),
    ("10.244.113.0-24", '{"PublicIP":"10.244.7.7","BackendType":"vxlan",' + MAC + "}", "inside the overlay"),
    ("10.99.0.0-24", '{"PublicIP":"192.168.77.91","BackendType":"vxlan",' + MAC + "}", "not a /24 of the Network"),
    ("0.0.0.0-0", '{"PublicIP":"192.168.77.92","BackendType":"vxlan",' + MAC + "}", "not a /24 of the Network"),
    ("10.244.0.0-16", '{"PublicIP":"192.168.77.93","BackendType":"vxlan",' + MAC + "}", "not a /24 of the Network"),
    ("10.244.114.0-25", '{"PublicIP":"192.168.77.94","BackendType":"vxlan",' + MAC + "}", "not a /24 of the Network"),
    ("192.168.77.0-24", '{"PublicIP":"192.168.77.95","BackendType":"vxlan",' + MAC + "}", "not a /24 of the Network"),
    ("10.244.115.1-24", '{"PublicIP":"192.168.77.96","BackendType":"vxlan",' + MAC + "}", "does not name a subnet"),
    ("banana", '{"PublicIP":"192.168.77.97","BackendType":"vxlan",' + MAC + "}", "does not name a subnet"),
    ("10.244.300.0-24", '{"PublicIP":"192.168.77.98","BackendType":"vxlan",' + MAC + "}", "does not name a subnet"),
    ("10.244.116.0-99", '{"PublicIP":"192.168.77.99","BackendType":"vxlan",' + MAC + "}", "does not name a subnet"),
    ("10.244.117.0-24&zz::-64", '{"PublicIP":"192.168.77.90","BackendType":"vxlan",' + MAC + "}", "does not name"),
]

GOOD_LEASE = ("10.244.120.0-24", '{"PublicIP":"192.168.77.50","BackendType":"vxlan",' + MAC + "}")


def settings(endpoint: str, prefix: str) -> EtcdSettings:
    return EtcdSettings(
        endpoints=(endpoint,), prefix=prefix, cafile="", certfile="", keyfile="", username="", password=""
    )


@pytest.fixture
async def registry(etcd, etcd_prefix) -> AsyncIterator[EtcdRegistry]:  # type: ignore[no-untyped-def]
    reg = EtcdRegistry(settings(etcd.endpoint, etcd_prefix))
    await reg.connect()
    try:
        yield reg
    finally:
        await reg.close()


def manager(reg: EtcdRegistry) -> SubnetManager:
    return SubnetManager(
        reg,
        SubnetSettings(subnet_file="/nonexistent/subnet.env", renew_margin_minutes=60, lease_ttl_seconds=600),
        rng=random.Random(7),
    )


def test_tables_hold_at_least_thirty_inputs() -> None:
    assert len(BAD_CONFIGS) + len(BAD_LEASES) >= 30


@pytest.mark.parametrize(("value", "fragment"), BAD_CONFIGS, ids=[c for c, _ in BAD_CONFIGS])
async def test_bad_config_is_waited_out_with_one_clear_line(
    registry, etcd, etcd_prefix, caplog, value: str, fragment: str  # type: ignore[no-untyped-def]
) -> None:
    etcd.etcdctl("put", etcd_prefix + "/config", value)
    m = manager(registry)
    caplog.set_level(logging.ERROR, logger="pyflannel.subnet.manager")
    task = asyncio.create_task(m.get_config(retry_interval=0.05, check=check_usable))
    await asyncio.sleep(0.2)  # several retries
    assert not task.done()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines  # one line per distinct problem, not one per retry
    assert lines[0].startswith("Couldn't fetch network config: invalid network config: ") and fragment in lines[0]
    etcd.etcdctl("put", etcd_prefix + "/config", GOOD_CONFIG)
    cfg = await asyncio.wait_for(task, 5)
    assert cfg.network == IPv4Network("10.244.0.0/16")


async def test_bad_leases_are_skipped_with_one_warning_each_and_good_ones_still_flow(
    registry, etcd, etcd_prefix, caplog  # type: ignore[no-untyped-def]
) -> None:
    etcd.etcdctl("put", etcd_prefix + "/config", GOOD_CONFIG)
    subnets = etcd_prefix + "/subnets/"
    # Half of the bad leases exist before the listing, the other half arrive through the watch.
    half = len(BAD_LEASES) // 2
    for key, value, _ in BAD_LEASES[:half]:
        etcd.etcdctl("put", subnets + key, value)
    m = manager(registry)
    await m.get_config()
    own = await m.acquire(
        LeaseAttrs(public_ip=IPv4Address("192.168.77.1"), backend_type="vxlan",
                   backend_data={"VNI": 1, "VtepMAC": "0e:fa:00:00:00:02"})
    )
    caplog.set_level(logging.WARNING, logger="pyflannel.subnet")
    updates: list[Update] = []

    async def consume() -> None:
        async for u in m.watch():
            updates.append(u)

    task = asyncio.create_task(consume())
    try:
        await asyncio.sleep(0.3)
        for key, value, _ in BAD_LEASES[half:]:
            etcd.etcdctl("put", subnets + key, value)
        for key, value, _ in BAD_LEASES:  # again: still one warning per key and reason
            etcd.etcdctl("put", subnets + key, value)
        etcd.etcdctl("put", subnets + GOOD_LEASE[0], GOOD_LEASE[1])
        for _ in range(100):
            if any(e.lease.subnet == IPv4Network("10.244.120.0/24") for u in updates for e in u.events):
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    added = {e.lease.subnet for u in updates for e in u.events if e.type is EventType.ADDED}
    assert added == {IPv4Network("10.244.120.0/24")}, added
    assert own.subnet not in added
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for key, _, fragment in BAD_LEASES:
        mine = [w for w in warnings if f"subnets/{key}:" in w]
        assert len(mine) == 1, (key, mine, warnings)
        assert fragment in mine[0], (key, mine[0])


async def test_network_exhausted_says_out_of_subnets_and_recovers(registry, etcd, etcd_prefix, caplog) -> None:  # type: ignore[no-untyped-def]
    # A /22 of /24s: SubnetMin .1.0 .. SubnetMax .3.0, three subnets, all taken.
    etcd.etcdctl("put", etcd_prefix + "/config", '{"Network":"10.250.0.0/22","Backend":{"Type":"vxlan"}}')
    subnets = etcd_prefix + "/subnets/"
    for i in (1, 2, 3):
        etcd.etcdctl("put", subnets + f"10.250.{i}.0-24", f'{{"PublicIP":"192.168.77.{60 + i}"}}')
    m = manager(registry)
    await m.get_config()
    caplog.set_level(logging.ERROR, logger="pyflannel.subnet.manager")
    task = asyncio.create_task(m.acquire(LeaseAttrs(public_ip=IPv4Address("192.168.77.1"))))
    await asyncio.sleep(0.5)
    assert not task.done()
    lines = [r.getMessage() for r in caplog.records]
    assert lines and "out of subnets: every /24 of 10.250.0.0/22 is leased" in lines[0], lines
    etcd.etcdctl("del", subnets + "10.250.2.0-24")
    lease = await asyncio.wait_for(task, 10)
    assert lease.subnet == IPv4Network("10.250.2.0/24")
