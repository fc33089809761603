"""Which subnet this node takes: flannel's ``AcquireLease`` policy (steps 3-5), without I/O.

Order, as flannel:

1. **Reuse by public IP.** A lease whose ``PublicIP`` is ours and that fits the config (SubnetMin <=
   subnet <= SubnetMax, /SubnetLen; IPv6 likewise, or no IPv6 subnet when IPv6 is off) is renewed.
   Leases with our IP that do not fit are deleted first (the config changed).
2. **Previous subnet** (from subnet.env), if it fits the config and is free.
3. **Allocate**: the first 100 free subnets from SubnetMin upwards, one picked at random (so that
   nodes starting together rarely collide); IPv6 independently the same way.

Where this does better than flannel, and why:

* The previous subnet is taken only when *no* lease overlaps it. flannel checks only for a lease
  with exactly that subnet, so a lease of another size covering it went unnoticed (its v0.17 and
  older versions even re-took a subnet already given to another node, #1289).
* Every lease with our IP is examined, not just the first: a compatible one is reused even when an
  incompatible one comes first (flannel deleted the first and then allocated a fresh subnet), and
  all incompatible ones are deleted. Deleted leases do not block candidates (they are gone before
  the create).
* When IPv6 is newly enabled the previous IPv4 subnet is kept and only the IPv6 subnet is new
  (flannel dropped both and moved the node).
* Candidates are found by walking sorted, merged intervals of the leased ranges, so the cost is
  O(N log N + 100) for N leases instead of flannel's O(100 * N) overlap checks, and leases of any
  size (from an older SubnetLen, or reservations) are honoured.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Literal

from pyflannel.config import NetworkConfig
from pyflannel.subnet.lease import Lease

CANDIDATES = 100  # flannel picks among the first 100 free subnets


class OutOfSubnets(Exception):
    """No free subnet is left between SubnetMin and SubnetMax (flannel: ``out of subnets``)."""

    def __init__(self, message: str = "out of subnets") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class Decision:
    """What to do: renew (``reuse``) or create (``previous``/``new``) a lease for this subnet.

    ``delete_keys`` (relative subnet keys) must be deleted first. ``notes`` are log lines for the
    steps that were considered and rejected, to be logged before ``message``, flannel's line for
    the step taken.
    """

    kind: Literal["reuse", "previous", "new"]
    subnet: IPv4Network
    ipv6_subnet: IPv6Network | None
    delete_keys: tuple[str, ...]
    message: str
    notes: tuple[str, ...] = ()


class _Taken:
    """Leased address ranges of one family as sorted, disjoint ``[start, end)`` integer intervals."""

    def __init__(self, nets: Iterable[IPv4Network | IPv6Network]) -> None:
        # Plain integer arithmetic: this runs over every lease at start (num_addresses and friends
        # are Python-level properties, 40 ms for 5000 leases).
        spans = []
        for n in nets:
            start = int(n.network_address)
            spans.append((start, start + (1 << (n.max_prefixlen - n.prefixlen))))
        spans.sort()
        merged: list[list[int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.starts = [s for s, _ in merged]
        self.ends = [e for _, e in merged]

    def overlaps(self, start: int, size: int) -> bool:
        i = bisect.bisect_right(self.ends, start)  # first interval ending after start
        return i < len(self.starts) and self.starts[i] < start + size

    def free(self, first: int, last: int, size: int, limit: int) -> list[int]:
        """Up to ``limit`` free blocks of ``size`` from ``first`` (aligned) to ``last`` inclusive."""
        out: list[int] = []
        cur = first
        i = bisect.bisect_right(self.ends, cur)
        n = len(self.starts)
        while cur <= last and len(out) < limit:
            while i < n and self.ends[i] <= cur:
                i += 1
            if i < n and self.starts[i] < cur + size:
                # Inside a leased range: jump to the first block boundary after it.
                end = self.ends[i]
                cur = first + -(-(end - first) // size) * size
                continue
            out.append(cur)
            cur += size
        return out


def _v6(sn6: IPv6Network | None) -> str:
    return "" if sn6 is None else str(sn6)


def _free4(cfg: NetworkConfig, taken: _Taken, limit: int) -> list[IPv4Network]:
    if cfg.subnet_min is None or cfg.subnet_max is None:
        return []
    size = 1 << (32 - cfg.subnet_len)
    blocks = taken.free(int(cfg.subnet_min), int(cfg.subnet_max), size, limit)
    return [IPv4Network((b, cfg.subnet_len)) for b in blocks]


def _free6(cfg: NetworkConfig, taken: _Taken, limit: int) -> list[IPv6Network]:
    if not cfg.enable_ipv6 or cfg.ipv6_subnet_min is None or cfg.ipv6_subnet_max is None:
        return []
    size = 1 << (128 - cfg.ipv6_subnet_len)
    blocks = taken.free(int(cfg.ipv6_subnet_min), int(cfg.ipv6_subnet_max), size, limit)
    return [IPv6Network((b, cfg.ipv6_subnet_len)) for b in blocks]


def free_subnets(cfg: NetworkConfig, leases: Sequence[Lease], limit: int = CANDIDATES) -> list[IPv4Network]:
    """The first ``limit`` /SubnetLen subnets from SubnetMin to SubnetMax that no lease overlaps."""
    return _free4(cfg, _Taken(le.subnet for le in leases), limit)


def free_ipv6_subnets(
    cfg: NetworkConfig, leases: Sequence[Lease], limit: int = CANDIDATES
) -> list[IPv6Network]:
    """The IPv6 twin of :func:`free_subnets` (empty when IPv6 is disabled)."""
    return _free6(cfg, _Taken(le.ipv6_subnet for le in leases if le.ipv6_subnet is not None), limit)


def choose_subnet(
    cfg: NetworkConfig,
    leases: Sequence[Lease],
    public_ip: IPv4Address,
    public_ipv6: IPv6Address | None,
    previous: IPv4Network | None,
    previous_v6: IPv6Network | None,
    rng: random.Random,
) -> Decision:
    """Decide the subnet for this node from the current leases (see the module docstring).

    ``public_ipv6`` does not take part (flannel matches leases by IPv4 ``PublicIP`` only); it is
    accepted so callers pass the node's whole identity. Raises :class:`OutOfSubnets`.
    """
    del public_ipv6
    if cfg.network is None:
        raise ValueError("IPv4 is disabled in the network config; etcd leases need an IPv4 subnet")

    # 1. reuse by public IP
    notes: list[str] = []
    deletes: list[str] = []
    reuse: Lease | None = None
    for le in leases:
        if le.attrs.public_ip != public_ip:
            continue
        desc = f"(ip: {le.subnet} ipv6: {_v6(le.ipv6_subnet)})"
        if not (cfg.contains_subnet(le.subnet) and cfg.contains_ipv6_subnet(le.ipv6_subnet)):
            notes.append(
                f"Found lease {desc} for current IP ({public_ip}) but not compatible with current config, deleting"
            )
            deletes.append(le.key())
        elif reuse is None:
            reuse = le
        else:
            notes.append(f"Found another lease {desc} for current IP ({public_ip}); leaving it to expire")
    if reuse is not None:
        return Decision(
            "reuse",
            reuse.subnet,
            reuse.ipv6_subnet,
            tuple(deletes),
            f"Found lease (ip: {reuse.subnet} ipv6: {_v6(reuse.ipv6_subnet)}) for current IP ({public_ip}), reusing",
            tuple(notes),
        )

    gone = set(deletes)
    others = [le for le in leases if le.key() not in gone] if gone else leases
    taken4 = _Taken(le.subnet for le in others)
    taken6 = _Taken(le.ipv6_subnet for le in others if le.ipv6_subnet is not None)

    # 2. previous subnet
    sn: IPv4Network | None = None
    sn6: IPv6Network | None = None
    used_previous: IPv4Network | None = None
    if previous is not None:
        if taken4.overlaps(int(previous.network_address), previous.num_addresses):
            notes.append(f"Previously leased subnet ({previous}) is now leased to another node, ignoring")
        elif not cfg.contains_subnet(previous):
            notes.append(
                f"Found previously leased subnet ({previous}) that is not compatible with the Etcd network config,"
                " ignoring"
            )
        else:
            sn = used_previous = previous
            if (
                cfg.enable_ipv6
                and previous_v6 is not None
                and cfg.contains_ipv6_subnet(previous_v6)
                and not taken6.overlaps(int(previous_v6.network_address), previous_v6.num_addresses)
            ):
                sn6 = previous_v6

    # 3. allocate what is still missing
    picking: list[str] = []
    if sn is None:
        picking.append(f"Picking subnet in range {cfg.subnet_min} ... {cfg.subnet_max}")
        candidates = _free4(cfg, taken4, CANDIDATES)
        if not candidates:
            raise OutOfSubnets()
        sn = candidates[rng.randrange(len(candidates))]
    if cfg.enable_ipv6 and sn6 is None:
        picking.append(f"Picking ipv6 subnet in range {cfg.ipv6_subnet_min} ... {cfg.ipv6_subnet_max}")
        candidates6 = _free6(cfg, taken6, CANDIDATES)
        if not candidates6:
            raise OutOfSubnets()
        sn6 = candidates6[rng.randrange(len(candidates6))]

    if used_previous is not None:
        kind: Literal["previous", "new"] = "previous"
        message = f"Found previously leased subnet ({previous}), reusing"
        if picking:
            message += "; " + "; ".join(picking)
    else:
        kind = "new"
        message = "; ".join(picking)
    return Decision(kind, sn, sn6, tuple(deletes), message, tuple(notes))
