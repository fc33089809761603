"""The masquerade and forward rules as text: what to apply, and how to tell whether it is still there.

Pure: no subprocess, no kernel. ``iptables.py`` and ``nftables.py`` feed listings in and run the
payloads this module builds.

iptables. A rule set (masq in ``nat``, forward in ``filter``) is one jump rule in a built-in chain
(POSTROUTING / FORWARD, appended, as flannel) plus our own chain (FLANNEL-POSTRTG / FLANNEL-FWD).
Rules and order are flannel's (spec 1.6), spelled exactly as ``iptables -S`` prints them, so the
listing can be compared line by line: one ``iptables -S CHAIN`` per chain answers "is anything
missing" for the whole set, instead of one ``iptables -C`` per rule. The bootstrap payload for
``iptables-restore --noflush`` declares our chain (``:CHAIN - [0:0]`` creates it, or flushes it if
it exists: our chain is wholly ours), deletes every existing copy of the jump and appends it again,
then appends the chain's rules; applied as one transaction, so packets never see a half-built set
and repeated bootstraps neither duplicate rules nor leave them out of order.

nftables. One table per family (``ip flannel-ipv4``), one base chain per rule set, each written as
one ``nft -f -`` transaction: add table, add chain, flush chain, add rules. Rule texts are spelled as
``nft list chain`` prints them, for the same line-by-line comparison.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

Net = IPv4Network | IPv6Network

MASQ_COMMENT = "flanneld masq"
FORWARD_COMMENT = "flanneld forward"
KUBE_PROXY_MARK = "0x4000/0x4000"
"""kube-proxy marks packets it will masquerade itself; flannel leaves them alone (double-NAT fix)."""
MASQ_CHAIN = "FLANNEL-POSTRTG"
FORWARD_CHAIN = "FLANNEL-FWD"

NFT_TABLE_V4 = "flannel-ipv4"
NFT_TABLE_V6 = "flannel-ipv6"
NFT_MASQ_CHAIN = "postrtg"
NFT_FORWARD_CHAIN = "forward"
NFT_MASQ_COMMENT = "chain to manage traffic masquerading by flannel"
NFT_FORWARD_COMMENT = "chain to accept flannel traffic"

_NO_QUOTE = re.compile(r"^[A-Za-z0-9_-]+$")


def multicast(net: Net) -> str:
    return "224.0.0.0/4" if isinstance(net, IPv4Network) else "ff00::/8"


def quote(word: str) -> str:
    """A comment as iptables-save / ``iptables -S`` print it (xtables_save_string): bare if it is
    only letters, digits, ``_`` and ``-``; else double-quoted with ``"``, ``'`` and ``\\`` escaped."""
    if _NO_QUOTE.match(word):
        return word
    return '"' + re.sub(r"([\"'\\])", r"\\\1", word) + '"'


# ---------------------------------------------------------------------------------------------------
# iptables


@dataclass(frozen=True)
class Rule:
    """One iptables rule: the chain it lives in and its match/target words (unquoted)."""

    chain: str
    spec: tuple[str, ...]

    def line(self, action: str = "-A") -> str:
        """``-A CHAIN words…`` as ``iptables -S`` prints it; also valid iptables-restore input."""
        words = [quote(w) if i and self.spec[i - 1] == "--comment" else w for i, w in enumerate(self.spec)]
        return " ".join([action, self.chain, *words])


@dataclass(frozen=True)
class RuleSet:
    """Rules that are applied and checked together: a jump from a built-in chain into our chain."""

    name: str
    """``masq`` or ``forward``; used in log lines."""
    ipv6: bool
    """True for ip6tables."""
    table: str
    """``nat`` or ``filter``."""
    chain: str
    """Our chain, FLANNEL-POSTRTG or FLANNEL-FWD."""
    jump: Rule
    """The rule in the built-in chain (POSTROUTING / FORWARD) that jumps to ``chain``."""
    rules: tuple[Rule, ...]
    """The rules of ``chain``, in order."""

    @property
    def parent(self) -> str:
        return self.jump.chain

    def all_rules(self) -> tuple[Rule, ...]:
        return (self.jump, *self.rules)

    def chain_lines(self) -> list[str]:
        """Exactly what ``iptables -t TABLE -S CHAIN`` prints when the set is in place."""
        return [f"-N {self.chain}", *(r.line() for r in self.rules)]

    def golden(self) -> str:
        """The text of spec 1.6: the jump line, then the chain listing."""
        return "\n".join([self.jump.line(), *self.chain_lines()])


def masq_rules(network: Net, subnet: Net, random_fully: bool) -> RuleSet:
    """flannel's masquerade rules for overlay ``network`` and this host's lease ``subnet``."""
    net, sn = str(network), str(subnet)
    c = ("-m", "comment", "--comment", MASQ_COMMENT)
    masq = ("-j", "MASQUERADE", "--random-fully") if random_fully else ("-j", "MASQUERADE")
    rules = (
        # kube-proxy already decided about these packets: don't masquerade them twice.
        Rule(MASQ_CHAIN, ("-m", "mark", "--mark", KUBE_PROXY_MARK, *c, "-j", "RETURN")),
        # Inside the overlay, from or to this host's containers: keep container addresses.
        Rule(MASQ_CHAIN, ("-s", sn, "-d", net, *c, "-j", "RETURN")),
        Rule(MASQ_CHAIN, ("-s", net, "-d", sn, *c, "-j", "RETURN")),
        # Outside traffic forwarded to our containers (e.g. via a node port) keeps its source.
        Rule(MASQ_CHAIN, ("!", "-s", net, "-d", sn, *c, "-j", "RETURN")),
        # Overlay to the outside world (not multicast): the host's address.
        Rule(MASQ_CHAIN, ("-s", net, "!", "-d", multicast(network), *c, *masq)),
        # The host itself (or outside) to a remote container: the host's address.
        Rule(MASQ_CHAIN, ("!", "-s", net, "-d", net, *c, *masq)),
    )
    jump = Rule("POSTROUTING", (*c, "-j", MASQ_CHAIN))
    return RuleSet("masq", isinstance(network, IPv6Network), "nat", MASQ_CHAIN, jump, rules)


def forward_rules(network: Net) -> RuleSet:
    """ACCEPT in FORWARD whatever comes from or goes to the overlay (the policy is left alone)."""
    net = str(network)
    c = ("-m", "comment", "--comment", FORWARD_COMMENT)
    rules = (
        Rule(FORWARD_CHAIN, ("-s", net, *c, "-j", "ACCEPT")),
        Rule(FORWARD_CHAIN, ("-d", net, *c, "-j", "ACCEPT")),
    )
    jump = Rule("FORWARD", (*c, "-j", FORWARD_CHAIN))
    return RuleSet("forward", isinstance(network, IPv6Network), "filter", FORWARD_CHAIN, jump, rules)


def listing_lines(text: str) -> list[str]:
    """``iptables -S`` output as a list of its non-empty lines."""
    return [ln.rstrip() for ln in text.splitlines() if ln.strip()]


def jump_target(line: str) -> str | None:
    """The chain an ``-A`` line jumps or goes to, or None."""
    try:
        words = shlex.split(line)
    except ValueError:
        return None
    for i, w in enumerate(words[:-1]):
        if w in ("-j", "--jump", "-g", "--goto"):
            return words[i + 1]
    return None


@dataclass(frozen=True)
class Expected:
    """What the listings must show for a rule set to count as in place."""

    jump: str
    """The jump line, which must appear (at least once) in the built-in chain's listing."""
    chain: tuple[str, ...]
    """The whole listing of our chain, ``-N`` line first."""

    @classmethod
    def of(cls, rs: RuleSet) -> Expected:
        return cls(rs.jump.line(), tuple(rs.chain_lines()))


def diff_lines(expected: Sequence[str], have: Sequence[str] | None, what: str) -> list[str]:
    """Why listing ``have`` of ``what`` is not exactly ``expected`` (None: ``what`` does not exist)."""
    if have is None:
        return [f"missing {what}"]
    if list(have) == list(expected):
        return []
    missing = [f"missing {ln!r}" for ln in expected if ln not in have]
    extra = [f"unexpected {ln!r}" for ln in have if ln not in expected]
    return missing + extra or [f"{what} out of order or duplicated"]


def find_problems(expected: Expected, parent: Sequence[str], chain: Sequence[str] | None) -> list[str]:
    """What is wrong with a rule set, given the listings of its built-in chain and of its chain.

    ``chain`` is None when the chain does not exist. Empty list = all in place. Our chain must
    match exactly (missing, extra or reordered rules all count); the jump only has to be present.
    """
    problems = [] if expected.jump in parent else [f"missing {expected.jump!r}"]
    return problems + diff_lines(expected.chain, chain, f"chain {expected.chain[0][3:]}")


def bootstrap_payload(rs: RuleSet, parent: Sequence[str]) -> str:
    """iptables-restore --noflush input that (re)builds the set; ``parent`` = built-in chain listing.

    Every existing copy of the jump is deleted before it is appended again, so it ends up exactly
    once, at the end (where flannel appends it). Our chain is declared, which creates or flushes it.
    """
    jump = rs.jump.line()
    lines = [f"*{rs.table}", f":{rs.chain} - [0:0]"]
    lines += [rs.jump.line("-D")] * sum(1 for ln in parent if ln == jump)
    lines += [jump, *(r.line() for r in rs.rules), "COMMIT", ""]
    return "\n".join(lines)


def delete_payload(table: str, rules: Iterable[Rule], listings: dict[str, Sequence[str]]) -> str | None:
    """iptables-restore --noflush input deleting every existing copy of ``rules`` (None: nothing to do).

    ``listings`` maps chain -> its ``-S`` lines; a chain that is not in it is taken to be absent.
    """
    out: list[str] = []
    seen: set[str] = set()
    for rule in rules:
        line = rule.line()
        if line in seen:
            continue
        seen.add(line)
        out += [rule.line("-D")] * sum(1 for ln in listings.get(rule.chain, ()) if ln == line)
    if not out:
        return None
    return "\n".join([f"*{table}", *out, "COMMIT", ""])


def remove_chain_payload(table: str, chain: str, table_listing: Sequence[str]) -> str | None:
    """iptables-restore --noflush input removing ``chain`` and every rule that jumps to it.

    ``table_listing`` is ``iptables -t TABLE -S``. None if the chain is absent and nothing jumps to it.
    """
    out = ["-D" + ln[2:] for ln in table_listing if ln.startswith("-A ") and jump_target(ln) == chain]
    if f"-N {chain}" in table_listing:
        out += [f"-F {chain}", f"-X {chain}"]
    if not out:
        return None
    return "\n".join([f"*{table}", *out, "COMMIT", ""])


def random_fully_probe_payload() -> str:
    """iptables-restore --test input that only parses if MASQUERADE --random-fully is supported."""
    return "*nat\n:FLANNEL-PROBE - [0:0]\n-A FLANNEL-PROBE -j MASQUERADE --random-fully\nCOMMIT\n"


_VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``iptables v1.8.9 (nf_tables)`` -> (1, 8, 9)."""
    m = _VERSION.search(text)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


# ---------------------------------------------------------------------------------------------------
# nftables


@dataclass(frozen=True)
class NftChain:
    """One base chain of flannel's nft table, with its rules as ``nft list chain`` prints them."""

    family: str
    """``ip`` or ``ip6``."""
    table: str
    name: str
    kind: str
    """``type … hook … priority …;`` without the policy."""
    comment: str
    rules: tuple[str, ...]

    def payload(self) -> str:
        """One ``nft -f -`` transaction: add table, add chain, flush chain, add rules."""
        head = f"{self.family} {self.table}"
        lines = [
            f'add table {head} {{ comment "rules for {self.table}"; }}',
            f'add chain {head} {self.name} {{ {self.kind} policy accept; comment "{self.comment}"; }}',
            f"flush chain {head} {self.name}",
            *(f"add rule {head} {self.name} {r}" for r in self.rules),
        ]
        return "\n".join(lines) + "\n"


def nft_table(network: Net) -> tuple[str, str]:
    return ("ip", NFT_TABLE_V4) if isinstance(network, IPv4Network) else ("ip6", NFT_TABLE_V6)


def nft_masq_chain(network: Net, subnet: Net, random_fully: bool) -> NftChain:
    """The postrtg chain, with iptables semantics (see nftables.py for the two places flannel differs)."""
    family, table = nft_table(network)
    net, sn = str(network), str(subnet)
    masq = "masquerade fully-random" if random_fully else "masquerade"
    rules = (
        "meta mark & 0x00004000 == 0x00004000 return",
        f"{family} saddr {sn} {family} daddr {net} return",
        f"{family} saddr {net} {family} daddr {sn} return",
        f"{family} saddr != {net} {family} daddr {sn} return",
        f"{family} saddr {net} {family} daddr != {multicast(network)} {masq}",
        f"{family} saddr != {net} {family} daddr {net} {masq}",
    )
    kind = "type nat hook postrouting priority srcnat;"
    return NftChain(family, table, NFT_MASQ_CHAIN, kind, NFT_MASQ_COMMENT, rules)


def nft_forward_chain(network: Net) -> NftChain:
    family, table = nft_table(network)
    rules = (f"{family} saddr {network} accept", f"{family} daddr {network} accept")
    kind = "type filter hook forward priority filter;"
    return NftChain(family, table, NFT_FORWARD_CHAIN, kind, NFT_FORWARD_COMMENT, rules)


def nft_chain_rules(listing: str) -> list[str]:
    """The rule lines of ``nft list chain FAMILY TABLE CHAIN`` output (no comment/type/braces)."""
    out = []
    for raw in listing.splitlines():
        ln = raw.strip()
        if not ln or ln.endswith("{") or ln == "}" or ln.startswith(("comment ", "type ")):
            continue
        out.append(ln)
    return out


def nft_tables(listing: str) -> set[tuple[str, str]]:
    """``nft list tables`` output -> {(family, name)}."""
    out = set()
    for ln in listing.splitlines():
        words = ln.split()
        if len(words) == 3 and words[0] == "table":
            out.add((words[1], words[2]))
    return out


def nft_delete_tables_payload(present: set[tuple[str, str]]) -> str | None:
    """Delete flannel's nft tables among ``present`` in one transaction (None: none there)."""
    ours = [t for t in (("ip", NFT_TABLE_V4), ("ip6", NFT_TABLE_V6)) if t in present]
    if not ours:
        return None
    return "".join(f"delete table {fam} {name}\n" for fam, name in ours)


def nft_random_fully_probe_payload() -> str:
    """For ``nft -c -f -`` (check only, nothing is committed): is ``masquerade fully-random`` known?"""
    return (
        "add table ip flannel-probe\n"
        "add chain ip flannel-probe masqueradeTest { type nat hook postrouting priority srcnat; }\n"
        "add rule ip flannel-probe masqueradeTest ip saddr != 127.0.0.1 masquerade fully-random\n"
    )
