"""The only code that runs iptables / iptables-restore (and, through ``run_tool``, nft).

Commands are argument lists run without a shell; payloads go to stdin. Each family has one
``IPTables`` object that probes ``iptables --version`` once: ``--wait`` for iptables (>= 1.4.20) and
iptables-restore (>= 1.6.2), and ``--random-fully`` (>= 1.6.2, go-iptables' ``HasRandomFully``). If
the version cannot be read, ``--random-fully`` is probed with a check-only ``iptables-restore --test``.

Reads are ``iptables -t TABLE -S CHAIN``: one command per chain, whatever the number of rules (a
chain that does not exist gives exit status 1). Writes are ``iptables-restore --noflush``: every
change is one atomic transaction per table, and nothing outside the lines sent is touched.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

from pyflannel.traffic import rules

log = logging.getLogger(__name__)


class TrafficError(Exception):
    """A rule command failed; str() is one line with the command and its stderr."""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def run_tool(argv: Sequence[str], stdin: str | None = None, check: bool = True) -> Result:
    """Run ``argv`` (no shell), feed ``stdin``; TrafficError if it cannot start or, with check, fails."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        raise TrafficError(f"{' '.join(argv)}: {e.strerror or e}") from e
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    assert proc.returncode is not None
    res = Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
    if check and res.returncode != 0:
        if stdin is not None:
            log.error("%s failed (exit %d), input was:\n%s", argv[0], res.returncode, stdin)
        raise TrafficError(
            f"{' '.join(argv)}: exit status {res.returncode}: {_one_line(res.stderr) or 'no error output'}"
        )
    return res


def available(tool: str) -> bool:
    return shutil.which(tool) is not None


class IPTables:
    """iptables + iptables-restore of one family (``ip6tables`` when ipv6)."""

    def __init__(self, ipv6: bool = False) -> None:
        self.cmd = "ip6tables" if ipv6 else "iptables"
        self.restore_cmd = f"{self.cmd}-restore"
        self._probed = False
        self._wait: list[str] = []
        self._restore_wait: list[str] = []
        self._random_fully = False

    def available(self) -> bool:
        return available(self.cmd) and available(self.restore_cmd)

    async def _probe(self) -> None:
        if self._probed:
            return
        res = await run_tool([self.cmd, "--version"])
        version = rules.parse_version(res.stdout + res.stderr)
        if version is not None:
            self._wait = ["--wait"] if version >= (1, 4, 20) else []
            self._restore_wait = ["--wait"] if version >= (1, 6, 2) else []
            self._random_fully = version >= (1, 6, 2)
        else:
            test = await run_tool(
                [self.restore_cmd, "--noflush", "--test"], rules.random_fully_probe_payload(), check=False
            )
            self._random_fully = test.returncode == 0
        self._probed = True
        log.debug("%s: version %s, --random-fully %s", self.cmd, version, self._random_fully)

    async def random_fully(self) -> bool:
        """Whether this iptables knows MASQUERADE --random-fully (probed once)."""
        await self._probe()
        return self._random_fully

    async def list_chain(self, table: str, chain: str) -> list[str] | None:
        """``iptables -t TABLE -S CHAIN`` lines; None if the chain does not exist."""
        await self._probe()
        res = await run_tool([self.cmd, *self._wait, "-t", table, "-S", chain], check=False)
        if res.returncode == 1:
            return None
        if res.returncode != 0:
            raise TrafficError(
                f"{self.cmd} -t {table} -S {chain}: exit status {res.returncode}: {_one_line(res.stderr)}"
            )
        return rules.listing_lines(res.stdout)

    async def list_table(self, table: str) -> list[str]:
        """``iptables -t TABLE -S`` lines."""
        await self._probe()
        res = await run_tool([self.cmd, *self._wait, "-t", table, "-S"])
        return rules.listing_lines(res.stdout)

    async def restore(self, payload: str) -> None:
        """``iptables-restore --noflush`` of ``payload`` (one transaction per table in it)."""
        await self._probe()
        log.debug("%s --noflush <<EOF\n%sEOF", self.restore_cmd, payload)
        await run_tool([self.restore_cmd, "--noflush", *self._restore_wait], payload)
