"""Traffic rules as text: golden iptables/nft output of spec 1.6, payloads, listing diffs."""

from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Network, IPv6Network

import pytest

from pyflannel.traffic import rules
from pyflannel.traffic.manager import TrafficManager
from pyflannel.traffic.rules import Expected, Net

NET = IPv4Network("10.5.0.0/16")
SN = IPv4Network("10.5.72.0/24")

# Spec 1.6 / flannel e2e/rules.go, NET=10.5.0.0/16 SN=10.5.72.0/24.
GOLDEN_NAT = """\
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-N FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.72.0/24 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.72.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.72.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"""

GOLDEN_FILTER = """\
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-N FLANNEL-FWD
-A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"""

JUMP = '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG'


def test_masq_golden_with_random_fully() -> None:
    assert rules.masq_rules(NET, SN, random_fully=True).golden() == GOLDEN_NAT


def test_masq_golden_without_random_fully() -> None:
    assert rules.masq_rules(NET, SN, random_fully=False).golden() == GOLDEN_NAT.replace(" --random-fully", "")


def test_forward_golden() -> None:
    assert rules.forward_rules(NET).golden() == GOLDEN_FILTER


def test_ipv6_masq_uses_ff00_multicast() -> None:
    rs = rules.masq_rules(IPv6Network("fd00:10::/56"), IPv6Network("fd00:10:0:5::/64"), True)
    assert rs.ipv6 and rs.table == "nat"
    assert rs.rules[4].line() == (
        '-A FLANNEL-POSTRTG -s fd00:10::/56 ! -d ff00::/8 -m comment --comment "flanneld masq" '
        "-j MASQUERADE --random-fully"
    )


@pytest.mark.parametrize(
    ("word", "printed"),
    [("flanneld masq", '"flanneld masq"'), ("a-b_C9", "a-b_C9"), ("a.b", '"a.b"'), ('x"y\\', '"x\\"y\\\\"')],
)
def test_comment_quoted_like_iptables_save(word: str, printed: str) -> None:
    assert rules.quote(word) == printed


def test_bootstrap_payload_fresh() -> None:
    payload = rules.bootstrap_payload(rules.masq_rules(NET, SN, True), ["-P POSTROUTING ACCEPT"])
    assert (
        payload
        == "*nat\n:FLANNEL-POSTRTG - [0:0]\n" + GOLDEN_NAT.replace("-N FLANNEL-POSTRTG\n", "") + "\nCOMMIT\n"
    )


def test_bootstrap_payload_deletes_every_existing_jump_first() -> None:
    parent = ["-P POSTROUTING ACCEPT", JUMP, "-A POSTROUTING -j KUBE-POSTROUTING", JUMP]
    lines = rules.bootstrap_payload(rules.masq_rules(NET, SN, False), parent).splitlines()
    dele = '-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG'
    assert lines[:5] == ["*nat", ":FLANNEL-POSTRTG - [0:0]", dele, dele, JUMP]
    assert lines[-1] == "COMMIT" and len(lines) == 5 + 6 + 1


def test_forward_bootstrap_payload_appends_jump() -> None:
    payload = rules.bootstrap_payload(rules.forward_rules(NET), ["-P FORWARD ACCEPT"])
    assert payload == (
        "*filter\n:FLANNEL-FWD - [0:0]\n" + GOLDEN_FILTER.replace("-N FLANNEL-FWD\n", "") + "\nCOMMIT\n"
    )


def listing(golden: str) -> tuple[list[str], list[str]]:
    lines = golden.splitlines()
    return ["-P POSTROUTING ACCEPT", lines[0]], lines[1:]


def test_no_problems_when_listing_matches() -> None:
    parent, chain = listing(GOLDEN_NAT)
    assert rules.find_problems(Expected.of(rules.masq_rules(NET, SN, True)), parent, chain) == []


def test_missing_rule_detected_from_listing() -> None:
    parent, chain = listing(GOLDEN_NAT)
    gone = chain.pop(3)
    problems = rules.find_problems(Expected.of(rules.masq_rules(NET, SN, True)), parent, chain)
    assert problems == [f"missing {gone!r}"]


def test_missing_jump_and_chain_detected() -> None:
    exp = Expected.of(rules.masq_rules(NET, SN, True))
    assert rules.find_problems(exp, ["-P POSTROUTING ACCEPT"], None) == [
        f"missing {JUMP!r}",
        "missing chain FLANNEL-POSTRTG",
    ]


def test_reordered_extra_and_random_fully_change_detected() -> None:
    exp = Expected.of(rules.masq_rules(NET, SN, True))
    parent, chain = listing(GOLDEN_NAT)
    swapped = [chain[0], chain[2], chain[1], *chain[3:]]
    assert rules.find_problems(exp, parent, swapped) == ["chain FLANNEL-POSTRTG out of order or duplicated"]
    assert rules.find_problems(exp, parent, [*chain, "-A FLANNEL-POSTRTG -j ACCEPT"]) == [
        "unexpected '-A FLANNEL-POSTRTG -j ACCEPT'"
    ]
    plain = [ln.replace(" --random-fully", "") for ln in chain]
    assert len(rules.find_problems(exp, parent, plain)) == 4


def test_listing_lines_from_iptables_output() -> None:
    out = "-P POSTROUTING ACCEPT\n" + JUMP + "\n\n"
    assert rules.listing_lines(out) == ["-P POSTROUTING ACCEPT", JUMP]


def test_recycle_deletes_old_rules_in_either_spelling() -> None:
    old_net, old_sn = IPv4Network("10.6.0.0/16"), IPv4Network("10.6.5.0/24")
    present = rules.masq_rules(old_net, old_sn, False).chain_lines()
    old = [r for rf in (True, False) for r in rules.masq_rules(old_net, old_sn, rf).rules]
    payload = rules.delete_payload("nat", old, {"FLANNEL-POSTRTG": present})
    assert payload is not None
    lines = payload.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    assert lines[1:-1] == ["-D" + ln[2:] for ln in present[1:]]
    assert rules.delete_payload("nat", old, {}) is None


def test_remove_chain_payload_removes_jumps_then_chain() -> None:
    table = [
        "-P FORWARD ACCEPT",
        "-N FLANNEL-FWD",
        "-N OTHER",
        '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
        "-A OTHER -g FLANNEL-FWD",
        '-A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
    ]
    assert rules.remove_chain_payload("filter", "FLANNEL-FWD", table) == (
        "*filter\n"
        '-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD\n'
        "-D OTHER -g FLANNEL-FWD\n"
        "-F FLANNEL-FWD\n-X FLANNEL-FWD\nCOMMIT\n"
    )
    assert rules.remove_chain_payload("filter", "FLANNEL-FWD", ["-P FORWARD ACCEPT"]) is None


def test_parse_version() -> None:
    assert rules.parse_version("iptables v1.8.9 (nf_tables)\n") == (1, 8, 9)
    assert rules.parse_version("iptables v1.4.21") == (1, 4, 21)
    assert rules.parse_version("garbage") is None


NFT_POSTRTG = """\
table ip flannel-ipv4 {
\tchain postrtg {
\t\tcomment "chain to manage traffic masquerading by flannel"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x00004000 == 0x00004000 return
\t\tip saddr 10.5.72.0/24 ip daddr 10.5.0.0/16 return
\t\tip saddr 10.5.0.0/16 ip daddr 10.5.72.0/24 return
\t\tip saddr != 10.5.0.0/16 ip daddr 10.5.72.0/24 return
\t\tip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random
\t}
}
"""


def test_nft_masq_payload() -> None:
    assert rules.nft_masq_chain(NET, SN, True).payload() == (
        'add table ip flannel-ipv4 { comment "rules for flannel-ipv4"; }\n'
        "add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority srcnat; policy accept; "
        'comment "chain to manage traffic masquerading by flannel"; }\n'
        "flush chain ip flannel-ipv4 postrtg\n"
        "add rule ip flannel-ipv4 postrtg meta mark & 0x00004000 == 0x00004000 return\n"
        "add rule ip flannel-ipv4 postrtg ip saddr 10.5.72.0/24 ip daddr 10.5.0.0/16 return\n"
        "add rule ip flannel-ipv4 postrtg ip saddr 10.5.0.0/16 ip daddr 10.5.72.0/24 return\n"
        "add rule ip flannel-ipv4 postrtg ip saddr != 10.5.0.0/16 ip daddr 10.5.72.0/24 return\n"
        "add rule ip flannel-ipv4 postrtg ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n"
        "add rule ip flannel-ipv4 postrtg ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random\n"
    )


def test_nft_masq_without_fully_random_and_forward_payload() -> None:
    assert (
        rules.nft_masq_chain(NET, SN, False).rules[-1]
        == "ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade"
    )
    fwd = rules.nft_forward_chain(NET).payload().splitlines()
    assert fwd[1] == (
        "add chain ip flannel-ipv4 forward { type filter hook forward priority filter; policy accept; "
        'comment "chain to accept flannel traffic"; }'
    )
    assert fwd[3:] == [
        "add rule ip flannel-ipv4 forward ip saddr 10.5.0.0/16 accept",
        "add rule ip flannel-ipv4 forward ip daddr 10.5.0.0/16 accept",
    ]


def test_nft_ipv6_table() -> None:
    chain = rules.nft_masq_chain(IPv6Network("fd00:10::/56"), IPv6Network("fd00:10:0:5::/64"), True)
    assert (chain.family, chain.table) == ("ip6", "flannel-ipv6")
    assert chain.rules[4] == "ip6 saddr fd00:10::/56 ip6 daddr != ff00::/8 masquerade fully-random"


def test_nft_listing_parsed_back_to_rules() -> None:
    chain = rules.nft_masq_chain(NET, SN, True)
    assert tuple(rules.nft_chain_rules(NFT_POSTRTG)) == chain.rules
    broken = NFT_POSTRTG.replace("\t\tip saddr 10.5.0.0/16 ip daddr 10.5.72.0/24 return\n", "")
    assert rules.diff_lines(chain.rules, rules.nft_chain_rules(broken), "chain postrtg") == [
        "missing 'ip saddr 10.5.0.0/16 ip daddr 10.5.72.0/24 return'"
    ]


def test_nft_tables_and_cleanup_payload() -> None:
    present = rules.nft_tables("table ip nat\ntable ip flannel-ipv4\ntable inet other\n")
    assert present == {("ip", "nat"), ("ip", "flannel-ipv4"), ("inet", "other")}
    assert rules.nft_delete_tables_payload(present) == "delete table ip flannel-ipv4\n"
    assert rules.nft_delete_tables_payload({("ip", "nat")}) is None


class FakeManager(TrafficManager):
    mode = "fake"

    def __init__(self) -> None:
        super().__init__(False)
        self.rounds = [["nat masq: missing chain FLANNEL-POSTRTG"], []]

    async def cleanup_other_mode(self) -> None:
        pass

    async def setup_masq(self, network: Net, subnet: Net, previous: tuple[Net, Net] | None) -> None:
        pass

    async def setup_forward(self, network: Net) -> None:
        pass

    async def resync_once(self) -> list[str]:
        return self.rounds.pop(0) if self.rounds else []


async def test_resync_forever_logs_one_line_per_repair(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyflannel.traffic.manager")
    m = FakeManager()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(m.resync_forever(0.01), 0.1)
    assert [r.getMessage() for r in caplog.records] == [
        "Some fake rules were missing; re-created them: nat masq: missing chain FLANNEL-POSTRTG"
    ]
