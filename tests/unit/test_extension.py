"""extension backend: command lines, environments and BackendData (pure, tables), then real commands.

The side-effect tests exec real programs (/bin/echo, /usr/bin/env, /bin/cat, /bin/false, sh, and a
recorder script written to the test's tmp_path that appends one JSON line per call); no root.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any, cast

import pytest

from pyflannel.backend.base import BackendContext, BackendError, ExternalInterface, known_backends
from pyflannel.backend.extension import (
    ExtensionBackend,
    ExtensionCommands,
    ExtensionNetwork,
    command_argv,
    command_env,
    decode_backend_data,
    encode_backend_data,
    go_expand,
    go_fields,
    go_trim_space,
    post_startup_vars,
    run_command,
    subnet_vars,
)
from pyflannel.config import parse_config
from pyflannel.kernel.netlink import Link, Netlink
from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.listing import SharedListing
from pyflannel.subnet.watcher import Event, EventType

# -- pure --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s", "words"),
    [
        ("", []),
        ("   \t\n", []),
        ("echo", ["echo"]),
        ("  ip  route\tadd \n x ", ["ip", "route", "add", "x"]),
        ('sh -c "echo a; echo b"', ["sh", "-c", '"echo', "a;", "echo", 'b"']),  # no quoting
        ("a\u00a0b\u3000c", ["a", "b", "c"]),  # Go's unicode.IsSpace
        ("a\x1cb", ["a\x1cb"]),  # not white space in Go (it is in Python's str.split)
    ],
)
def test_go_fields(s: str, words: list[str]) -> None:
    assert go_fields(s) == words


ENV = {"A": "alpha", "B_2": "beta", "SP": "x y", "1": "one", "*": "star"}


@pytest.mark.parametrize(
    ("s", "out"),
    [
        ("plain", "plain"),
        ("$A", "alpha"),
        ("${A}", "alpha"),
        ("<$A>", "<alpha>"),
        ("$A.$B_2", "alpha.beta"),
        ("${A}x", "alphax"),
        ("$Ax", ""),  # name runs to the last alphanumeric
        ("$UNSET", ""),
        ("${UNSET}-", "-"),
        ("$", "$"),  # a trailing dollar stays
        ("a$", "a$"),
        ("$%", "$%"),  # no name after it: the dollar stays
        ("${}x", "x"),  # bad syntax is eaten
        ("${Ax", "Ax"),  # unclosed: "${" eaten
        ("$1x", "onex"),  # special variables are one character
        ("${1}", "one"),
        ("$*", "star"),
        ("${A B}", ""),  # a braced name is anything up to "}"
        ("$$", ""),
        ("$é", "$é"),  # names are ASCII
        ("$SP", "x y"),
    ],
)
def test_go_expand(s: str, out: str) -> None:
    assert go_expand(s, lambda k: ENV.get(k, "")) == out


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        (
            'ip route add "$SUBNET" via "$PUBLIC_IP"',  # flannel's dist/extension-hostgw
            ["ip", "route", "add", '"10.5.3.0/24"', "via", '"192.168.1.2"'],
        ),
        (
            "ip route add $SUBNET via ${PUBLIC_IP}",
            ["ip", "route", "add", "10.5.3.0/24", "via", "192.168.1.2"],
        ),
        ("$TOOL $EVIL", ["/bin/tool", "a b; rm -rf /"]),  # values are single literal arguments
        ("$EMPTY x", ["", "x"]),
        ("", []),
    ],
)
def test_command_argv(command: str, argv: list[str]) -> None:
    env = {"SUBNET": "10.5.3.0/24", "PUBLIC_IP": "192.168.1.2", "TOOL": "/bin/tool", "EVIL": "a b; rm -rf /"}
    assert command_argv(command, env) == argv


def test_command_env_overrides_the_daemons_environment() -> None:
    base = {"PATH": "/bin", "SUBNET": "stale"}
    env = command_env({"SUBNET": "10.5.3.0/24"}, base)
    assert env == {"PATH": "/bin", "SUBNET": "10.5.3.0/24"}
    assert base["SUBNET"] == "stale"
    assert command_env({})["PATH"] == os.environ["PATH"]


def lease(
    subnet: str = "10.5.3.0/24",
    ip: str = "192.168.1.2",
    btype: str = "extension",
    data: Any = "remote-data",
    v6: str | None = None,
) -> Lease:
    attrs = LeaseAttrs(IPv4Address(ip), None, btype, data)
    return Lease(IPv4Network(subnet), IPv6Network(v6) if v6 else None, attrs)


@pytest.mark.parametrize(
    ("network", "own", "pub", "pub6", "want"),
    [
        (
            "10.5.0.0/16",
            lease("10.5.7.0/24"),
            "192.168.1.7",
            None,
            {
                "NETWORK": "10.5.0.0/16",
                "SUBNET": "10.5.7.0/24",
                "IPV6SUBNET": "::/0",  # flannel formats the zero ip.IP6Net
                "PUBLIC_IP": "192.168.1.7",
                "PUBLIC_IPV6": "<nil>",  # and a nil *ip.IP6
            },
        ),
        (
            "10.5.0.0/16",
            lease("10.5.7.0/24", v6="fd00:5:7::/64"),
            "192.168.1.7",
            "fd00::7",
            {
                "NETWORK": "10.5.0.0/16",
                "SUBNET": "10.5.7.0/24",
                "IPV6SUBNET": "fd00:5:7::/64",
                "PUBLIC_IP": "192.168.1.7",
                "PUBLIC_IPV6": "fd00::7",
            },
        ),
        (
            None,
            lease("10.5.7.0/24"),
            None,
            None,
            {
                "NETWORK": "0.0.0.0/0",
                "SUBNET": "10.5.7.0/24",
                "IPV6SUBNET": "::/0",
                "PUBLIC_IP": "0.0.0.0",
                "PUBLIC_IPV6": "<nil>",
            },
        ),
    ],
)
def test_post_startup_vars(
    network: str | None, own: Lease, pub: str | None, pub6: str | None, want: dict[str, str]
) -> None:
    got = post_startup_vars(
        IPv4Network(network) if network else None,
        own,
        IPv4Address(pub) if pub else None,
        IPv6Address(pub6) if pub6 else None,
    )
    assert got == want


def test_subnet_vars_are_only_subnet_and_public_ip() -> None:
    assert subnet_vars(lease(v6="fd00::/64")) == {"SUBNET": "10.5.3.0/24", "PUBLIC_IP": "192.168.1.2"}
    assert subnet_vars(lease(ip="0.0.0.0")) == {"SUBNET": "10.5.3.0/24", "PUBLIC_IP": "0.0.0.0"}


@pytest.mark.parametrize(
    ("output", "data"),
    [
        (None, None),  # no PreStartupCommand: no BackendData at all
        ("", ""),  # stored as the JSON string ""
        ("  aa:bb:cc:dd:ee:ff\n", "aa:bb:cc:dd:ee:ff"),
        ("key1\nkey2\n\n", "key1\nkey2"),
        ("\u00a0x\u3000", "x"),
        ("\x1cx", "\x1cx"),  # Go's TrimSpace keeps \x1c
    ],
)
def test_encode_backend_data(output: str | None, data: str | None) -> None:
    assert encode_backend_data(output) == data
    if data is not None:
        assert json.loads(json.dumps(data)) == data  # a JSON string value in the lease


def test_go_trim_space() -> None:
    assert go_trim_space(" \t\v\f\r\n x y \n") == "x y"


@pytest.mark.parametrize(
    ("data", "stdin"),
    [(None, ""), ("", ""), ("pubkey=", "pubkey="), ("a\nb", "a\nb")],
)
def test_decode_backend_data(data: object, stdin: str) -> None:
    assert decode_backend_data(data) == stdin


@pytest.mark.parametrize(
    ("data", "kind"),
    [({"VNI": 1}, "object"), ([1], "array"), (1, "number"), (1.5, "number"), (True, "bool")],
)
def test_decode_backend_data_rejects_non_strings_like_go(data: object, kind: str) -> None:
    with pytest.raises(ValueError, match=f"cannot unmarshal {kind} into Go value of type string"):
        decode_backend_data(data)


def test_commands_from_config_case_insensitive() -> None:
    cfg = parse_config(
        json.dumps(
            {
                "Network": "10.5.0.0/16",
                "Backend": {
                    "Type": "extension",
                    "prestartupcommand": "pre",
                    "POSTSTARTUPCOMMAND": "post",
                    "SubnetAddCommand": "add",
                },
            }
        )
    )
    assert ExtensionCommands.from_config(cfg) == ExtensionCommands("pre", "post", "add", "")


def test_registered() -> None:
    assert "extension" in known_backends()


# -- running commands --------------------------------------------------------------------------


async def test_run_command_captures_trimmed_output() -> None:
    res = await run_command(["/bin/echo", "  hello", "world  "], {})
    assert res.ok and res.returncode == 0
    assert res.output == "hello world"


async def test_run_command_gets_exactly_the_given_env() -> None:
    res = await run_command(["/usr/bin/env"], {"SUBNET": "10.5.3.0/24", "X": "y"})
    assert sorted(res.output.splitlines()) == ["SUBNET=10.5.3.0/24", "X=y"]


async def test_run_command_writes_stdin_plus_newline() -> None:
    res = await run_command(["/bin/sh", "-c", "od -c | head -1"], command_env({}), stdin="ab")
    assert res.output.split()[1:] == ["a", "b", "\\n"]


async def test_run_command_large_stdin_and_output() -> None:
    data = "x" * 300_000
    res = await run_command(["/bin/cat"], {}, stdin=data)
    assert res.ok and res.output == data


async def test_run_command_output_interleaves_stderr() -> None:
    res = await run_command(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], command_env({}))
    assert res.returncode == 3 and res.error == "exit status 3"
    assert res.output == "out\nerr"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["/bin/false"], "exit status 1"),
        (["/bin/sh", "-c", "kill -TERM $$"], "signal: terminated"),
        (
            ["no-such-command-pyflannel"],
            'exec: "no-such-command-pyflannel": executable file not found in $PATH',
        ),
        (["/nonexistent/cmd"], "fork/exec /nonexistent/cmd: no such file or directory"),
        ([], "exec: no command"),
        (["", "x"], "exec: no command"),
    ],
)
async def test_run_command_failures(argv: list[str], error: str) -> None:
    res = await run_command(argv, command_env({}))
    assert not res.ok
    assert res.error == error


async def test_run_command_not_executable(tmp_path: Path) -> None:
    f = tmp_path / "script"
    f.write_text("#!/bin/sh\necho hi\n")
    res = await run_command([str(f)], {})
    assert res.error == f"fork/exec {f}: permission denied"


async def test_run_command_timeout_kills_the_whole_group() -> None:
    t0 = time.monotonic()
    # The inner sleep holds the output pipe open: only killing the group ends the wait.
    res = await run_command(
        ["/bin/sh", "-c", "echo started; sleep 30 & sleep 30"], command_env({}), timeout=0.5
    )
    assert time.monotonic() - t0 < 5
    assert res.returncode is None
    assert res.error == "timed out after 0.5s, killed"
    assert res.output == "started"


# -- the network: events to commands -----------------------------------------------------------

RECORDER = """\
import json, os, sys
with open(sys.argv[1], "a") as f:
    keep = {k: v for k, v in os.environ.items() if k in ("SUBNET", "PUBLIC_IP", "NETWORK", "IPV6SUBNET",
                                                           "PUBLIC_IPV6")}
    f.write(json.dumps({"argv": sys.argv[2:], "env": keep, "stdin": sys.stdin.read()}) + "\\n")
print(" recorded ")
"""


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[str, Callable[[], list[dict[str, Any]]]]:
    """A script that appends {argv, env, stdin} as a JSON line to tmp_path/calls per call.

    Returns the command prefix ("<script> <log>") and a reader for the recorded calls."""
    script = tmp_path / "record"
    script.write_text(f"#!{sys.executable}\n{RECORDER}")
    script.chmod(0o755)
    calls = tmp_path / "calls"

    def read() -> list[dict[str, Any]]:
        if not calls.exists():
            return []
        return [json.loads(line) for line in calls.read_text().splitlines()]

    return f"{script} {calls}", read


def ev(kind: EventType, le: Lease) -> Event:
    return Event(kind, le)


async def test_added_and_removed_run_the_commands(
    recorder: tuple[str, Callable[[], list[dict[str, Any]]]],
) -> None:
    cmd, calls = recorder
    net = ExtensionNetwork(
        ExtensionCommands(subnet_add=f"{cmd} add $SUBNET", subnet_remove=f"{cmd} del"), 1500
    )
    await net.apply([ev(EventType.ADDED, lease(data="pk1"))], snapshot=False)
    # The REMOVED event may carry only the key (the manager's placeholder): the remembered lease counts.
    placeholder = lease(ip="0.0.0.0", btype="", data=None)
    await net.apply([ev(EventType.REMOVED, placeholder)], snapshot=False)
    assert calls() == [
        {
            "argv": ["add", "10.5.3.0/24"],
            "env": {"SUBNET": "10.5.3.0/24", "PUBLIC_IP": "192.168.1.2"},
            "stdin": "pk1\n",
        },
        {"argv": ["del"], "env": {"SUBNET": "10.5.3.0/24", "PUBLIC_IP": "192.168.1.2"}, "stdin": "pk1\n"},
    ]
    assert net.peers == {}


async def test_non_extension_and_bad_data_leases_are_skipped(
    recorder: tuple[str, Callable[[], list[dict[str, Any]]]], caplog: pytest.LogCaptureFixture
) -> None:
    cmd, calls = recorder
    net = ExtensionNetwork(ExtensionCommands(subnet_add=f"{cmd} add", subnet_remove=f"{cmd} del"), 1500)
    caplog.set_level(logging.INFO)
    await net.apply(
        [
            ev(EventType.ADDED, lease("10.5.1.0/24", btype="vxlan", data={"VNI": 1})),
            ev(EventType.ADDED, lease("10.5.2.0/24", data={"not": "a string"})),
            ev(EventType.ADDED, lease("10.5.3.0/24", data=None)),
        ],
        snapshot=False,
    )
    assert [(c["env"]["SUBNET"], c["stdin"]) for c in calls()] == [("10.5.3.0/24", "\n")]
    assert "Ignoring non-extension subnet 10.5.1.0/24: type=vxlan" in caplog.text
    assert "failed to unmarshal BackendData of 10.5.2.0/24" in caplog.text


async def test_snapshot_adds_only_new_or_changed_leases(
    recorder: tuple[str, Callable[[], list[dict[str, Any]]]],
) -> None:
    cmd, calls = recorder
    net = ExtensionNetwork(ExtensionCommands(subnet_add=f"{cmd} add", subnet_remove=f"{cmd} del"), 1500)
    a, b = lease("10.5.1.0/24"), lease("10.5.2.0/24")
    await net.apply([ev(EventType.ADDED, a), ev(EventType.ADDED, b)], snapshot=True)
    assert len(calls()) == 2
    # Re-list: a unchanged, b changed its data, c new, d (never seen) and a removal of b's old self.
    b2, c = lease("10.5.2.0/24", data="new"), lease("10.5.3.0/24")
    await net.apply([ev(EventType.ADDED, a), ev(EventType.ADDED, b2), ev(EventType.ADDED, c)], snapshot=True)
    assert [(x["argv"], x["env"]["SUBNET"], x["stdin"]) for x in calls()[2:]] == [
        (["add"], "10.5.2.0/24", "new\n"),
        (["add"], "10.5.3.0/24", "remote-data\n"),
    ]
    await net.apply([ev(EventType.REMOVED, a)], snapshot=True)
    assert calls()[-1]["argv"] == ["del"]
    assert set(net.peers) == {(b2.subnet, None), (c.subnet, None)}
    # Outside a snapshot an ADDED event always runs the command, as flannel (a renewal re-runs it).
    await net.apply([ev(EventType.ADDED, c)], snapshot=False)
    assert len(calls()) == 6


async def test_failing_and_hung_commands_do_not_stop_the_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "m"
    script = tmp_path / "add"
    script.write_text(
        '#!/bin/sh\ncase "$SUBNET" in\n 10.5.1.*) echo boom >&2; exit 4;;\n 10.5.2.*) sleep 30;;\n'
        f' *) echo "$SUBNET" >> {marker};;\nesac\n'
    )
    script.chmod(0o755)
    net = ExtensionNetwork(ExtensionCommands(subnet_add=str(script)), 1500, timeout=0.5)
    caplog.set_level(logging.INFO)
    await net.apply(
        [ev(EventType.ADDED, lease(f"10.5.{i}.0/24")) for i in (1, 2, 3)],
        snapshot=False,
    )
    assert marker.read_text() == "10.5.3.0/24\n"
    assert f"failed to run command: {script} Err: exit status 4 Output: boom" in caplog.text
    assert "timed out after 0.5s, killed" in caplog.text


async def test_no_commands_configured_is_fine() -> None:
    net = ExtensionNetwork(ExtensionCommands(), 1500)
    await net.apply([ev(EventType.ADDED, lease()), ev(EventType.REMOVED, lease())], snapshot=False)


# -- registering the network -------------------------------------------------------------------


def context(backend: dict[str, str], acquired: list[LeaseAttrs]) -> tuple[ExtensionBackend, BackendContext]:
    cfg = parse_config(json.dumps({"Network": "10.5.0.0/16", "Backend": {"Type": "extension", **backend}}))

    async def acquire(attrs: LeaseAttrs) -> Lease:
        acquired.append(attrs)
        return Lease(IPv4Network("10.5.9.0/24"), None, attrs)

    ext = ExternalInterface(
        link=Link(index=2, name="eth0", kind=None, mtu=1400, mac=None, up=True),
        iface_addr=IPv4Address("192.168.1.9"),
        ext_addr=IPv4Address("203.0.113.9"),
    )
    acq = cast(Callable[[LeaseAttrs], Awaitable[Lease]], acquire)
    ctx = BackendContext(config=cfg, ext=ext, netlink=cast(Netlink, None), acquire=acq, listing=SharedListing.of([]))
    return ExtensionBackend(cfg), ctx


async def test_register_network_runs_pre_and_post_startup(
    recorder: tuple[str, Callable[[], list[dict[str, Any]]]],
) -> None:
    cmd, calls = recorder
    acquired: list[LeaseAttrs] = []
    be, ctx = context(
        {"PreStartupCommand": "/bin/echo  my-public-key ", "PostStartupCommand": f"{cmd} post ${{SUBNET}}"},
        acquired,
    )
    net = await be.register_network(ctx)
    assert acquired == [LeaseAttrs(IPv4Address("192.168.1.9"), None, "extension", "my-public-key")]
    assert net.mtu == 1400
    assert net.lease.subnet == IPv4Network("10.5.9.0/24")
    assert calls() == [
        {
            "argv": ["post", "10.5.9.0/24"],
            "env": {
                "NETWORK": "10.5.0.0/16",
                "SUBNET": "10.5.9.0/24",
                "IPV6SUBNET": "::/0",
                "PUBLIC_IP": "192.168.1.9",  # the interface address, not --public-ip
                "PUBLIC_IPV6": "<nil>",
            },
            "stdin": "\n",
        }
    ]


async def test_register_network_without_commands_has_no_backend_data() -> None:
    acquired: list[LeaseAttrs] = []
    be, ctx = context({}, acquired)
    await be.register_network(ctx)
    assert acquired == [LeaseAttrs(IPv4Address("192.168.1.9"), None, "extension", None)]


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        (
            {"PreStartupCommand": "/bin/false"},
            "failed to run command: /bin/false Err: exit status 1 Output: ",
        ),
        (
            {"PostStartupCommand": "/bin/sh  -c  false"},
            "failed to run command: /bin/sh  -c  false Err: exit status 1",
        ),
    ],
)
async def test_register_network_startup_failure_is_fatal(backend: dict[str, str], message: str) -> None:
    acquired: list[LeaseAttrs] = []
    be, ctx = context(backend, acquired)
    with pytest.raises(BackendError) as exc:
        await be.register_network(ctx)
    assert str(exc.value).startswith(message)
    assert len(acquired) == (0 if "PreStartupCommand" in backend else 1)
