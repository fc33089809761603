"""Synthetic vxlan leases, written to etcd in bulk (for bench/ and large-cluster tests).

Lease ``i`` (``i`` = 0, 1, 2, ...) of a synthetic set is, in flannel's key and JSON format::

    <prefix>/subnets/10.<1 + i // 256 % 255>.<i % 256>.0-24
    {"PublicIP":"172.<16 + (i + 1) >> 16>.<...>.<...>","PublicIPv6":null,"BackendType":"vxlan",
     "BackendData":{"VNI":1,"VtepMAC":"0e:fa:<i as 4 bytes>"}}

so every lease has a distinct /24 of ``10.0.0.0/8`` (10.0.x.0 stays free for the daemon under test,
which picks among the first free subnets), a distinct unicast PublicIP outside the overlay, and a
distinct unicast, locally administered VtepMAC. At most 65280 leases per set.

Writing: one etcd lease (long TTL) shared by all keys, then one ``Put`` per key with ``concurrency``
requests in flight on one gRPC channel; 5000 keys take about a second. From the command line (run it
where etcd is reachable, e.g. ``ip netns exec <lab>-etcd``); it prints one JSON line with the
``time.monotonic()`` of the first request and of the last acknowledgement, comparable across
processes on the same machine::

    python -m pyflannel.lab.leases --endpoint http://127.0.0.1:2379 --prefix /coreos.com/network \\
        --n 5000 [--first 0] [--concurrency 64] [--ttl 86400] [--per-request 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from pyflannel.subnet.lease import LeaseAttrs, make_subnet_key

MAX_LEASES = 255 * 256
VNI = 1


@dataclass(frozen=True)
class SyntheticLease:
    subnet: IPv4Network
    public_ip: IPv4Address
    mac: str

    @property
    def gateway(self) -> IPv4Address:
        """The remote subnet's network address: the neighbour and the route's onlink gateway."""
        return self.subnet.network_address

    def key(self, prefix: str) -> str:
        return prefix.rstrip("/") + "/subnets/" + make_subnet_key(self.subnet, None)

    def value(self) -> str:
        """flannel's JSON, byte for byte (:meth:`LeaseAttrs.to_json`)."""
        return LeaseAttrs(
            public_ip=self.public_ip,
            backend_type="vxlan",
            backend_data={"VNI": VNI, "VtepMAC": self.mac},
        ).to_json()


def synthetic_lease(i: int) -> SyntheticLease:
    if not 0 <= i < MAX_LEASES:
        raise ValueError(f"synthetic lease index {i} out of range (0..{MAX_LEASES - 1})")
    subnet = IPv4Network(f"10.{1 + i // 256}.{i % 256}.0/24")
    public_ip = IPv4Address(int(IPv4Address("172.16.0.0")) + i + 1)
    mac = f"0e:fa:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
    return SyntheticLease(subnet, public_ip, mac)


def synthetic_leases(n: int, first: int = 0) -> list[SyntheticLease]:
    """Leases ``first`` .. ``first + n - 1`` of the synthetic set."""
    return [synthetic_lease(i) for i in range(first, first + n)]


@dataclass(frozen=True)
class WriteResult:
    t_first: float  # time.monotonic() just before the first Put was sent
    t_last: float  # time.monotonic() when the last Put was acknowledged
    requests: int  # Put requests, or Txn requests when written with per_request > 1
    grants: int

    @property
    def seconds(self) -> float:
        return self.t_last - self.t_first


async def write_leases(
    endpoint: str,
    prefix: str,
    leases: Sequence[SyntheticLease],
    concurrency: int = 64,
    ttl: int = 86400,
    per_request: int = 1,
) -> WriteResult:
    """Put every lease under ``prefix``, all attached to one fresh etcd lease of ``ttl`` seconds.

    ``per_request`` > 1 sends the Puts in Txn requests of that many keys each (a faster burst than
    any set of nodes writing their own key could make; etcd then sends the watch events in batches).
    """
    import grpc.aio
    from etcd3aio.kv import KVService
    from etcd3aio.lease import LeaseService

    target = endpoint.split("://", 1)[-1].rstrip("/")
    items = [(lease.key(prefix).encode(), lease.value().encode()) for lease in leases]
    async with grpc.aio.insecure_channel(target) as channel:
        kv = KVService(channel, max_attempts=3)
        grant = await LeaseService(channel, max_attempts=3).grant(ttl, timeout=10)
        lease_id = int(grant.ID)
        step = max(1, per_request)
        it = iter([items[i : i + step] for i in range(0, len(items), step)])

        async def worker() -> None:
            for group in it:
                if len(group) == 1:
                    await kv.put(group[0][0], group[0][1], lease=lease_id, timeout=30)
                else:
                    ops = [kv.txn_op_put(k, v, lease=lease_id) for k, v in group]
                    await kv.txn([], ops, timeout=30)

        t_first = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            for _ in range(max(1, min(concurrency, len(items)))):
                tg.create_task(worker())
        t_last = time.monotonic()
    requests = len(items) if step == 1 else -(-len(items) // step)
    return WriteResult(t_first, t_last, requests, 1)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write synthetic vxlan leases to etcd (flannel's keys and JSON).")
    ap.add_argument("--endpoint", default="http://127.0.0.1:2379")
    ap.add_argument("--prefix", default="/coreos.com/network")
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--ttl", type=int, default=86400)
    ap.add_argument("--per-request", type=int, default=1, help="keys per request (> 1: Txn requests)")
    args = ap.parse_args(argv)
    leases = synthetic_leases(args.n, args.first)
    res = asyncio.run(
        write_leases(args.endpoint, args.prefix, leases, args.concurrency, args.ttl, args.per_request)
    )
    print(json.dumps({"t_first": res.t_first, "t_last": res.t_last, "requests": res.requests, "grants": res.grants}))


if __name__ == "__main__":
    main()
