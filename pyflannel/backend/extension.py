"""extension backend: the data path is whatever the operator's commands build.

Kernel objects: none of its own; whatever the commands create. Four optional commands, from the
``Backend`` options (keys case-insensitive, as flannel's JSON decoding):

* ``PreStartupCommand`` runs before the lease is acquired; its output (stdout and stderr, trimmed,
  as flannel's ``CombinedOutput``) becomes the lease ``BackendData`` as a JSON *string*. A failure
  stops start-up. Without it the lease has no ``BackendData``.
* ``PostStartupCommand`` runs after the lease, with ``NETWORK``, ``SUBNET``, ``IPV6SUBNET``,
  ``PUBLIC_IP``, ``PUBLIC_IPV6``; a failure stops start-up.
* ``SubnetAddCommand`` / ``SubnetRemoveCommand`` run per remote ``extension`` lease event with
  ``SUBNET`` and ``PUBLIC_IP`` (only those two, whatever flannel's docs say) and the remote
  ``BackendData`` string plus ``\\n`` on stdin. A failure is logged, never fatal.

As flannel since v0.28.2 commands are not given to a shell: the string is split on whitespace, each
word has ``$VAR``/``${VAR}`` expanded (Go's ``os.Expand``) from the daemon's environment plus the
variables above, and the result is exec'd directly, so quotes and ``;`` in flannel's ``dist/``
examples are passed literally. Unlike flannel, every command has a timeout (its process group is
killed), so a hung command cannot wedge the daemon. Lease: ``BackendType`` ``extension``, ``PublicIP``
= the interface address (not ``--public-ip``, as flannel). MTU = interface MTU.

Snapshots (start-up, re-list after compaction or an outage): the watcher reports leases that appeared
as ADDED and leases that vanished as REMOVED (flannel's ``LeaseWatcher.Reset``); a lease that is
already known with the same attributes does not run ``SubnetAddCommand`` again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from pyflannel.backend.base import Backend, BackendContext, BackendError, Network, register
from pyflannel.config import NetworkConfig, backend_option
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.watcher import Event, EventType

log = logging.getLogger(__name__)

BACKEND_TYPE = "extension"
COMMAND_TIMEOUT = 60.0  # seconds per command; flannel has none
KILL_GRACE = 5.0  # seconds to reap a killed command before giving up on it

# Go's unicode.IsSpace, which strings.Fields and strings.TrimSpace use. Python's str.isspace()
# differs (it also counts \x1c-\x1f), so the set is spelled out.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)
_GO_FIELDS = re.compile(f"[^{re.escape(_GO_SPACE)}]+")
_GO_SPECIAL_VARS = frozenset("*#$@!?-0123456789")


# -- pure: options, command lines, environments, BackendData -----------------------------------


@dataclass(frozen=True)
class ExtensionCommands:
    pre_startup: str = ""
    post_startup: str = ""
    subnet_add: str = ""
    subnet_remove: str = ""

    @classmethod
    def from_config(cls, cfg: NetworkConfig) -> ExtensionCommands:
        b = cfg.backend
        return cls(
            pre_startup=backend_option(b, "PreStartupCommand", "", str),
            post_startup=backend_option(b, "PostStartupCommand", "", str),
            subnet_add=backend_option(b, "SubnetAddCommand", "", str),
            subnet_remove=backend_option(b, "SubnetRemoveCommand", "", str),
        )


def go_fields(s: str) -> list[str]:
    """Go's strings.Fields: the words of s, split on runs of white space."""
    return _GO_FIELDS.findall(s)


def go_trim_space(s: str) -> str:
    """Go's strings.TrimSpace."""
    return s.strip(_GO_SPACE)


def _shell_name(s: str) -> tuple[str, int]:
    # Go's os.getShellName: the variable name after "$" and how many characters it spans.
    if s[0] == "{":
        if len(s) > 2 and s[1] in _GO_SPECIAL_VARS and s[2] == "}":
            return s[1], 3
        end = s.find("}", 1)
        if end == 1:
            return "", 2  # "${}": bad syntax, eaten
        if end < 0:
            return "", 1  # "${" never closed: bad syntax, "${" eaten
        return s[1:end], end + 1
    if s[0] in _GO_SPECIAL_VARS:
        return s[0], 1
    i = 0
    while i < len(s) and (s[i] == "_" or (s[i].isascii() and s[i].isalnum())):
        i += 1
    return s[:i], i


def go_expand(s: str, mapping: Callable[[str], str]) -> str:
    """Go's os.Expand: replace $NAME and ${NAME} by mapping(NAME); a lone "$" stays."""
    out: list[str] = []
    i = j = 0
    while j < len(s):
        if s[j] == "$" and j + 1 < len(s):
            out.append(s[i:j])
            name, width = _shell_name(s[j + 1 :])
            if name:
                out.append(mapping(name))
            elif width == 0:
                out.append("$")
            j += width
            i = j + 1
        j += 1
    out.append(s[i:])
    return "".join(out)


def command_env(extra: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a command: the daemon's own, overridden by the backend's variables."""
    env = dict(os.environ if base is None else base)
    env.update(extra)
    return env


def command_argv(command: str, env: Mapping[str, str]) -> list[str]:
    """Split a command on white space and expand variables in every word (no shell, no quoting)."""
    return [go_expand(word, lambda name: env.get(name, "")) for word in go_fields(command)]


def _go_ip(ip: IPv4Address | IPv6Address | None, nil: str) -> str:
    return nil if ip is None else str(ip)


def post_startup_vars(
    network: IPv4Network | None, lease: Lease, public_ip: IPv4Address | None, public_ipv6: IPv6Address | None
) -> dict[str, str]:
    """PostStartupCommand's variables, formatted as flannel's fmt.Sprintf("%s") of its Go values."""
    ipv6_subnet: IPv6Network | None = lease.ipv6_subnet
    return {
        "NETWORK": str(network) if network is not None else "0.0.0.0/0",
        "SUBNET": str(lease.subnet),
        "IPV6SUBNET": str(ipv6_subnet) if ipv6_subnet is not None else "::/0",
        "PUBLIC_IP": _go_ip(public_ip, "0.0.0.0"),
        "PUBLIC_IPV6": _go_ip(public_ipv6, "<nil>"),  # a nil *ip.IP6 under %s
    }


def subnet_vars(lease: Lease) -> dict[str, str]:
    """SubnetAddCommand's and SubnetRemoveCommand's variables: exactly SUBNET and PUBLIC_IP."""
    return {"SUBNET": str(lease.subnet), "PUBLIC_IP": _go_ip(lease.attrs.public_ip, "0.0.0.0")}


def encode_backend_data(output: str | None) -> str | None:
    """This host's BackendData: PreStartupCommand's trimmed output, stored as a JSON string value.

    None (no PreStartupCommand) leaves BackendData out of the lease; "" is stored as ``""``.
    """
    return None if output is None else go_trim_space(output)


def decode_backend_data(data: object) -> str:
    """A remote lease's BackendData as the string for the command's stdin.

    Absent or JSON null gives "" (Go's json.Unmarshal into a string); any other non-string is an
    error, as flannel, and the event is skipped.
    """
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    raise ValueError(f"json: cannot unmarshal {_json_kind(data)} into Go value of type string")


def _json_kind(v: object) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, dict):
        return "object"
    if isinstance(v, list):
        return "array"
    return type(v).__name__


# -- side effects: running one command ---------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int | None  # None: not started, or killed after the timeout
    output: str  # stdout and stderr interleaved, trimmed
    error: str | None  # Go's error text ("exit status 1", "signal: killed", exec errors), else None

    @property
    def ok(self) -> bool:
        return self.error is None


def _exit_error(rc: int) -> str | None:
    if rc == 0:
        return None
    if rc > 0:
        return f"exit status {rc}"
    try:
        desc = signal.strsignal(-rc) or f"signal {-rc}"
    except ValueError:
        desc = f"signal {-rc}"
    return f"signal: {desc[:1].lower()}{desc[1:]}"


def _exec_error(name: str, err: OSError) -> str:
    # The texts of Go's exec.Command: a bare name is looked up in $PATH first.
    if "/" not in name and isinstance(err, FileNotFoundError | PermissionError):
        return f'exec: "{name}": executable file not found in $PATH'
    reason = err.strerror or str(err)
    return f"fork/exec {name}: {reason[:1].lower()}{reason[1:]}"


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def run_command(
    argv: Sequence[str], env: Mapping[str, str], stdin: str = "", timeout: float = COMMAND_TIMEOUT
) -> CommandResult:
    """Exec argv (no shell) with env, write stdin + "\\n", collect stdout+stderr; never raises
    for the command's own failures. The command gets its own process group so that a timeout
    (or the daemon's cancellation) kills whatever it started too."""
    args = tuple(argv)
    if not args or not args[0]:
        return CommandResult(args, None, "", "exec: no command")
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )
    except OSError as e:
        return CommandResult(args, None, "", _exec_error(args[0], e))
    buf = bytearray()

    async def feed() -> None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(stdin.encode() + b"\n")
            await proc.stdin.drain()
            proc.stdin.close()
            await proc.stdin.wait_closed()

    async def collect() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            buf.extend(chunk)

    async def finish() -> int:
        await asyncio.gather(feed(), collect())
        return await proc.wait()

    try:
        rc = await asyncio.wait_for(finish(), timeout)
    except TimeoutError:
        _kill_group(proc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), KILL_GRACE)
        out = go_trim_space(buf.decode(errors="replace"))
        return CommandResult(args, None, out, f"timed out after {timeout:g}s, killed")
    except BaseException:
        _kill_group(proc)  # cancelled with the daemon: leave nothing running
        raise
    return CommandResult(args, rc, go_trim_space(buf.decode(errors="replace")), _exit_error(rc))


async def run_configured(command: str, extra: Mapping[str, str], stdin: str, timeout: float) -> CommandResult:
    env = command_env(extra)
    return await run_command(command_argv(command, env), env, stdin, timeout)


def _failure(command: str, res: CommandResult) -> str:
    return f"failed to run command: {command} Err: {res.error} Output: {res.output}"


# -- the backend -------------------------------------------------------------------------------


@register(BACKEND_TYPE)
class ExtensionBackend(Backend):
    def __init__(self, cfg: NetworkConfig, timeout: float = COMMAND_TIMEOUT) -> None:
        self.cfg = cfg
        self.commands = ExtensionCommands.from_config(cfg)
        self.timeout = timeout

    async def register_network(self, ctx: BackendContext) -> Network:
        cmds, ext = self.commands, ctx.ext
        data: str | None = None
        if go_fields(cmds.pre_startup):
            res = await run_configured(cmds.pre_startup, {}, "", self.timeout)
            if not res.ok:
                raise BackendError(_failure(cmds.pre_startup, res))
            log.info("Ran command: %s Output: %s", cmds.pre_startup, res.output)
            data = encode_backend_data(res.output)
        else:
            log.info("No pre startup command configured - skipping")

        attrs = LeaseAttrs(public_ip=ext.iface_addr, backend_type=BACKEND_TYPE, backend_data=data)
        net = ExtensionNetwork(cmds, ext.link.mtu, self.timeout)
        net.lease = await ctx.acquire(attrs)

        if go_fields(cmds.post_startup):
            env = post_startup_vars(ctx.config.network, net.lease, attrs.public_ip, attrs.public_ipv6)
            res = await run_configured(cmds.post_startup, env, "", self.timeout)
            if not res.ok:
                raise BackendError(_failure(cmds.post_startup, res))
            log.info("Ran command: %s Output: %s", cmds.post_startup, res.output)
        else:
            log.info("No post startup command configured - skipping")
        return net


PeerKey = tuple[IPv4Network, IPv6Network | None]


class ExtensionNetwork(Network):
    def __init__(self, commands: ExtensionCommands, mtu: int, timeout: float = COMMAND_TIMEOUT) -> None:
        self.commands = commands
        self.mtu = mtu
        self.timeout = timeout
        # Extension leases whose SubnetAddCommand has run (or would have, if none is configured).
        # A REMOVED event runs SubnetRemoveCommand with the attributes remembered here.
        self.peers: dict[PeerKey, Lease] = {}
        self._lock = asyncio.Lock()  # commands run one at a time, in event order
        self._ignored: set[tuple[str, str]] = set()

    async def apply(self, events: Sequence[Event], snapshot: bool) -> None:
        async with self._lock:
            for ev in events:
                key: PeerKey = (ev.lease.subnet, ev.lease.ipv6_subnet)
                if ev.type is EventType.ADDED:
                    known = self.peers.get(key)
                    if snapshot and known is not None and known.attrs == ev.lease.attrs:
                        continue
                    await self._added(key, ev.lease)
                else:
                    known = self.peers.pop(key, None)
                    await self._removed(known if known is not None else ev.lease)

    def _accept(self, lease: Lease) -> bool:
        btype = lease.attrs.backend_type or ""
        if btype == BACKEND_TYPE:
            return True
        if (str(lease.subnet), btype) not in self._ignored:
            self._ignored.add((str(lease.subnet), btype))
            log.warning("Ignoring non-extension subnet %s: type=%s", lease.subnet, btype)
        return False

    async def _added(self, key: PeerKey, lease: Lease) -> None:
        log.info("Subnet added: %s via %s", lease.subnet, lease.attrs.public_ip)
        if not self._accept(lease):
            return
        self.peers[key] = lease
        await self._run(self.commands.subnet_add, lease)

    async def _removed(self, lease: Lease) -> None:
        log.info("Subnet removed: %s", lease.subnet)
        if self._accept(lease):
            await self._run(self.commands.subnet_remove, lease)

    async def _run(self, command: str, lease: Lease) -> None:
        if not go_fields(command):
            return
        try:
            stdin = decode_backend_data(lease.attrs.backend_data)
        except ValueError as e:
            log.error("failed to unmarshal BackendData of %s: %s", lease.subnet, e)
            return
        res = await run_configured(command, subnet_vars(lease), stdin, self.timeout)
        if res.ok:
            log.info("Ran command: %s Output: %s", command, res.output)
        else:
            log.error("%s (subnet %s, stdin %r)", _failure(command, res), lease.subnet, stdin)
