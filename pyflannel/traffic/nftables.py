"""The only code that runs nft: flannel's ``ip flannel-ipv4`` / ``ip6 flannel-ipv6`` tables.

Every write is one ``nft -f -`` transaction (add table, add chain, flush chain, add rules), so a
chain is never seen half-built. ``fully-random`` support is probed once with a check-only
transaction (``nft -c -f -``) that would add a masquerade rule to a scratch table.

Decision: the nft rules have iptables semantics, not flannel's literal nft rules. flannel's nft
manager differs from its iptables manager in two places (spec 1.6, gotcha 6):

- 4th rule: flannel writes ``ip saddr != SN ip daddr NET return``. That returns (no masquerade) for
  everything from outside our subnet to anywhere in the overlay, which makes the 6th rule
  (``ip saddr != NET ip daddr NET masquerade``, the host reaching a remote container) dead, so a
  remote container sees the host's own, non-overlay address and replies may not find their way
  back. The iptables rule is ``! -s NET -d SN``: outside traffic to *our* containers keeps its
  source. We write ``ip saddr != NET ip daddr SN return``.
- mark: flannel writes ``meta mark 0x00004000`` (the whole mark must equal 0x4000); kube-proxy's
  iptables rule and flannel's iptables rule test one bit (``--mark 0x4000/0x4000``), so a packet
  that kube-proxy marked and some other component marked with a bit of its own as well would be
  masqueraded a second time. We write ``meta mark & 0x00004000 == 0x00004000 return``.

Nothing compares nft text across hosts: peers only see packets, so the correct rules cost no
compatibility; only a byte-for-byte diff against flannel's own e2e listing would notice (those two
lines). Also unlike flannel, the nft chains are re-checked every ``--iptables-resync`` seconds
(flannel installs them once and never looks again), and only the table of the family in use is
created (flannel creates both at start, the other one empty).
"""

from __future__ import annotations

import logging

from pyflannel.traffic import rules
from pyflannel.traffic.iptables import TrafficError, available, run_tool

log = logging.getLogger(__name__)


class NFTables:
    def __init__(self) -> None:
        self.cmd = "nft"
        self._random_fully: bool | None = None

    def available(self) -> bool:
        return available(self.cmd)

    async def random_fully(self) -> bool:
        """Whether ``masquerade fully-random`` is accepted (check-only transaction, probed once)."""
        if self._random_fully is None:
            res = await run_tool(
                [self.cmd, "-c", "-f", "-"], rules.nft_random_fully_probe_payload(), check=False
            )
            self._random_fully = res.returncode == 0
            if not self._random_fully:
                log.warning("nftables: masquerade fully-random unsupported: %s", " ".join(res.stderr.split()))
        return self._random_fully

    async def apply(self, payload: str) -> None:
        """Run ``payload`` as one transaction."""
        log.debug("nft -f - <<EOF\n%sEOF", payload)
        await run_tool([self.cmd, "-f", "-"], payload)

    async def list_chain_rules(self, family: str, table: str, chain: str) -> list[str] | None:
        """Rule lines of the chain as nft prints them; None if the table or chain does not exist."""
        res = await run_tool([self.cmd, "list", "chain", family, table, chain], check=False)
        if res.returncode != 0:
            if "No such file or directory" in res.stderr:
                return None
            raise TrafficError(
                f"nft list chain {family} {table} {chain}: exit status {res.returncode}: "
                + " ".join(res.stderr.split())
            )
        return rules.nft_chain_rules(res.stdout)

    async def list_tables(self) -> set[tuple[str, str]]:
        res = await run_tool([self.cmd, "list", "tables"])
        return rules.nft_tables(res.stdout)
