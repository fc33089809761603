"""Masquerade and forward rules, kept in place: the daemon's interface to iptables or nftables.

flanneld installs the rules once its lease is known (``--ip-masq``, ``--iptables-forward-rules``),
after removing what the *other* mode left behind, and re-checks them every ``--iptables-resync``
seconds. Rules are never removed on exit: a restart must not interrupt container traffic.

Each rule set is compared with the kernel's listing before it is written, so a restart that finds
everything right changes nothing. When something is missing the whole set is rebuilt in one
transaction, which also restores the order (as flannel). One asyncio lock serialises setup, recycle
and repair, so a resync never interleaves with a setup.

Differences from flannel, on purpose:
- Switching to nftables removes FLANNEL-FWD from the ``filter`` table (flannel tries ``nat``, where
  it never is, and leaves it behind), together with every rule that jumps to either chain.
- Recycling deletes the previous network's rules in both spellings (with and without
  ``--random-fully``), not only the one matching today's setting.
- If this iptables/nft prints a rule differently than predicted, the listing taken right after our
  own bootstrap becomes the reference (one warning), instead of rebuilding forever every period
  (flannel issue #2145, "Some iptables rules are missing").
- nftables chains are re-checked like iptables ones (flannel never looks at them again); their
  rules have iptables semantics (see nftables.py for that decision).
- Clean-up of the other mode is best effort (a warning), as in flannel; setup errors raise
  TrafficError; resync errors are logged and retried next period.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from ipaddress import IPv6Network

from pyflannel.traffic import rules
from pyflannel.traffic.iptables import IPTables, TrafficError
from pyflannel.traffic.nftables import NFTables
from pyflannel.traffic.rules import Expected, Net, NftChain, RuleSet

log = logging.getLogger(__name__)

__all__ = ["TrafficError", "TrafficManager", "new_traffic_manager"]


class TrafficManager(abc.ABC):
    """Networks are IPv4Network for the daemon; IPv6Network works too (ip6tables, ip6 flannel-ipv6)."""

    mode = ""

    def __init__(self, fully_random_disable: bool) -> None:
        self.fully_random_disable = fully_random_disable
        self._lock = asyncio.Lock()

    @abc.abstractmethod
    async def cleanup_other_mode(self) -> None:
        """Remove what the other mode (nftables / iptables) installed; failures only warn."""

    @abc.abstractmethod
    async def setup_masq(self, network: Net, subnet: Net, previous: tuple[Net, Net] | None) -> None:
        """Install masquerade rules for ``network`` / own ``subnet``; first delete the rules of
        ``previous`` (network, subnet) from the last subnet.env when they differ."""

    @abc.abstractmethod
    async def setup_forward(self, network: Net) -> None:
        """Install the FORWARD ACCEPT rules for ``network``; the chain policy is never touched."""

    @abc.abstractmethod
    async def resync_once(self) -> list[str]:
        """Check every installed rule set, rebuild those with problems; returns what was repaired."""

    async def resync_forever(self, interval: float) -> None:
        """Every ``interval`` seconds: check and repair; one log line per repair."""
        while True:
            await asyncio.sleep(interval)
            try:
                repaired = await self.resync_once()
            except TrafficError as e:
                log.error("Failed to ensure %s rules: %s", self.mode, e)
                continue
            if repaired:
                log.info("Some %s rules were missing; re-created them: %s", self.mode, "; ".join(repaired))


def _is6(net: Net) -> bool:
    return isinstance(net, IPv6Network)


class IptablesManager(TrafficManager):
    mode = "iptables"

    def __init__(self, fully_random_disable: bool) -> None:
        super().__init__(fully_random_disable)
        self._ipt = {False: IPTables(ipv6=False), True: IPTables(ipv6=True)}
        self._sets: dict[tuple[str, bool], tuple[RuleSet, Expected]] = {}

    async def cleanup_other_mode(self) -> None:
        nft = NFTables()
        if not nft.available():
            log.debug("nft not installed: no nftables rules to clean up")
            return
        log.info("Cleaning-up nftables rules...")
        try:
            payload = rules.nft_delete_tables_payload(await nft.list_tables())
            if payload is not None:
                await nft.apply(payload)
                log.info("Deleted nftables tables: %s", payload.replace("delete table ", "").strip())
        except TrafficError as e:
            log.warning("nftables: couldn't delete flannel tables: %s", e)

    async def setup_masq(self, network: Net, subnet: Net, previous: tuple[Net, Net] | None) -> None:
        ipt = self._ipt[_is6(network)]
        random_fully = not self.fully_random_disable and await ipt.random_fully()
        async with self._lock:
            if previous is not None and previous != (network, subnet):
                log.info(
                    "Current network or subnet (%s, %s) is not equal to previous one (%s, %s), "
                    "trying to recycle old iptables rules",
                    network,
                    subnet,
                    previous[0],
                    previous[1],
                )
                await self._recycle(ipt, previous)
            log.info("Setting up masking rules for %s (subnet %s)", network, subnet)
            await self._install(ipt, rules.masq_rules(network, subnet, random_fully))

    async def setup_forward(self, network: Net) -> None:
        log.info("Setting up FORWARD ACCEPT rules for %s (the FORWARD policy is left as it is)", network)
        async with self._lock:
            await self._install(self._ipt[_is6(network)], rules.forward_rules(network))

    async def resync_once(self) -> list[str]:
        repaired = []
        async with self._lock:
            for rs, expected in list(self._sets.values()):
                ipt = self._ipt[rs.ipv6]
                parent, chain = await self._state(ipt, rs)
                problems = rules.find_problems(expected, parent, chain)
                if problems:
                    await ipt.restore(rules.bootstrap_payload(rs, parent))
                    repaired.append(f"{ipt.cmd} {rs.table} {rs.name}: {', '.join(problems)}")
        return repaired

    async def _recycle(self, ipt: IPTables, previous: tuple[Net, Net]) -> None:
        old = [r for rf in (True, False) for r in rules.masq_rules(previous[0], previous[1], rf).rules]
        chain = await ipt.list_chain("nat", rules.MASQ_CHAIN)
        payload = rules.delete_payload("nat", old, {rules.MASQ_CHAIN: chain or []})
        if payload is not None:
            await ipt.restore(payload)
            log.info("Deleted %d old masquerade rules", payload.count("\n-D "))

    async def _state(self, ipt: IPTables, rs: RuleSet) -> tuple[list[str], list[str] | None]:
        parent = await ipt.list_chain(rs.table, rs.parent)
        if parent is None:
            raise TrafficError(f"{ipt.cmd}: built-in chain {rs.parent} missing from table {rs.table}")
        return parent, await ipt.list_chain(rs.table, rs.chain)

    async def _install(self, ipt: IPTables, rs: RuleSet) -> None:
        expected = Expected.of(rs)
        parent, chain = await self._state(ipt, rs)
        if not rules.find_problems(expected, parent, chain):
            log.info("%s %s rules already in place", ipt.cmd, rs.name)
        else:
            await ipt.restore(rules.bootstrap_payload(rs, parent))
            parent, chain = await self._state(ipt, rs)
            problems = rules.find_problems(expected, parent, chain)
            if problems:
                log.warning(
                    "%s lists the %s rules differently than expected (%s); comparing against its own "
                    "listing from now on",
                    ipt.cmd,
                    rs.name,
                    ", ".join(problems),
                )
                jumps = [ln for ln in parent if rules.jump_target(ln) == rs.chain]
                expected = Expected(jumps[-1] if jumps else expected.jump, tuple(chain or ()))
            log.info("%s %s rules installed", ipt.cmd, rs.name)
        self._sets[(rs.name, rs.ipv6)] = (rs, expected)


class NftablesManager(TrafficManager):
    mode = "nftables"

    def __init__(self, fully_random_disable: bool) -> None:
        super().__init__(fully_random_disable)
        self._nft = NFTables()
        self._chains: dict[tuple[str, str], tuple[NftChain, tuple[str, ...]]] = {}

    async def cleanup_other_mode(self) -> None:
        for ipt in (IPTables(ipv6=False), IPTables(ipv6=True)):
            if not ipt.available():
                log.debug("%s not installed: no iptables rules to clean up", ipt.cmd)
                continue
            for table, chain in (("nat", rules.MASQ_CHAIN), ("filter", rules.FORWARD_CHAIN)):
                try:
                    payload = rules.remove_chain_payload(table, chain, await ipt.list_table(table))
                    if payload is not None:
                        await ipt.restore(payload)
                        log.info("Deleted %s chain %s from table %s", ipt.cmd, chain, table)
                except TrafficError as e:
                    log.warning("could not clean up %s chain %s (table %s): %s", ipt.cmd, chain, table, e)

    async def setup_masq(self, network: Net, subnet: Net, previous: tuple[Net, Net] | None) -> None:
        random_fully = not self.fully_random_disable and await self._nft.random_fully()
        if previous is not None and previous != (network, subnet):
            log.info("Previous network or subnet (%s, %s) replaced by the chain flush", *previous)
        log.info("nftables: setting up masking rules for %s (subnet %s)", network, subnet)
        async with self._lock:
            await self._install(rules.nft_masq_chain(network, subnet, random_fully))

    async def setup_forward(self, network: Net) -> None:
        log.info("nftables: setting up forward accept rules for %s", network)
        async with self._lock:
            await self._install(rules.nft_forward_chain(network))

    async def resync_once(self) -> list[str]:
        repaired = []
        async with self._lock:
            for chain, expected in list(self._chains.values()):
                have = await self._nft.list_chain_rules(chain.family, chain.table, chain.name)
                problems = rules.diff_lines(expected, have, f"chain {chain.name}")
                if problems:
                    await self._nft.apply(chain.payload())
                    repaired.append(f"{chain.family} {chain.table} {chain.name}: {', '.join(problems)}")
        return repaired

    async def _install(self, chain: NftChain) -> None:
        expected = chain.rules
        have = await self._nft.list_chain_rules(chain.family, chain.table, chain.name)
        if have is not None and tuple(have) == expected:
            log.info("nftables: chain %s %s %s already in place", chain.family, chain.table, chain.name)
        else:
            await self._nft.apply(chain.payload())
            have = await self._nft.list_chain_rules(chain.family, chain.table, chain.name)
            problems = rules.diff_lines(expected, have, f"chain {chain.name}")
            if problems and have is not None:
                log.warning(
                    "nft lists chain %s differently than expected (%s); comparing against its own "
                    "listing from now on",
                    chain.name,
                    ", ".join(problems),
                )
                expected = tuple(have)
            log.info("nftables: chain %s %s %s installed", chain.family, chain.table, chain.name)
        self._chains[(chain.family, chain.name)] = (chain, expected)


def new_traffic_manager(nftables: bool, fully_random_disable: bool) -> TrafficManager:
    """The manager for ``EnableNFTables`` from the network config."""
    if nftables:
        return NftablesManager(fully_random_disable)
    return IptablesManager(fully_random_disable)
