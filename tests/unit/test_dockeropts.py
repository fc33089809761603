"""mk-docker-opts against golden outputs of flannel's dist/mk-docker-opts.sh under dash.

The expected file contents are literal strings: the cases of flannel's dist/mk_docker_opts_test.go
plus the script's quirks and error cases, produced once by running the original script (dash) on the
same inputs. ``ip route`` is replaced by a fixed routing table, so no root and no network are needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyflannel import dockeropts

SAMPLE_SUBNET_ENV = """FLANNEL_NETWORK=10.1.0.0/16
FLANNEL_SUBNET=10.1.74.1/24
FLANNEL_MTU=1472
FLANNEL_IPMASQ=false
"""

NO_ROUTES = "default via 192.0.2.1 dev eth0 \n192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2 \n"

USAGE = """./mk.sh [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options based on flannel env file
OPTIONS:
\t-f\tPath to flannel env file. Defaults to /run/flannel/subnet.env
\t-d\tPath to Docker env file to write to. Defaults to /run/docker_opts.env
\t-i\tOutput each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
\t-c\tOutput combined Docker options into DOCKER_OPTS var
\t-k\tSet the combined options key to this value (default DOCKER_OPTS=)
\t-m\tDo not output --ip-masq (useful for older Docker version)

"""


def run(tmp_path: Path, flags: list[str], env_text: str | None = SAMPLE_SUBNET_ENV,
        environ: dict[str, str] | None = None, routes: str = NO_ROUTES) -> tuple[int, str | None, str]:
    """Run with ``-f <tmp>/subnet.env -d <tmp>/docker_opts.env`` first; returns status, output file
    (None when not written) and stderr."""
    env_file = tmp_path / "subnet.env"
    if env_text is not None:
        env_file.write_text(env_text)
    out_file = tmp_path / "docker_opts.env"
    errors: list[str] = []
    status = dockeropts.run("./mk.sh", ["-f", str(env_file), "-d", str(out_file), *flags],
                            {"PATH": "/usr/bin:/bin", **(environ or {})}, lambda: routes, errors.append)
    out = out_file.read_bytes().decode() if out_file.exists() else None
    return status, out, "".join(errors)


GOLDEN = [
    ([], ('DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=true"\n'
         'DOCKER_OPT_MTU="--mtu=1472"\nDOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n')),
    (["-i"], ('DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=true"\n'
             'DOCKER_OPT_MTU="--mtu=1472"\n')),
    (["-c"], 'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n'),
    (["-k", "CUSTOM_KEY"], ('DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=true"\n'
                           'DOCKER_OPT_MTU="--mtu=1472"\n'
                           'CUSTOM_KEY=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n')),
    (["-m"], ('DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_MTU="--mtu=1472"\n'
             'DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1472"\n')),
    (["-mk", "FOO"], ('DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_MTU="--mtu=1472"\n'
                     'FOO=" --bip=10.1.74.1/24 --mtu=1472"\n')),
    (["-ic"], ('DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=true"\n'
              'DOCKER_OPT_MTU="--mtu=1472"\nDOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n')),
    # getopts stops at "--" and at the first operand: later flags are ignored.
    (["--", "-i"], ('DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=true"\n'
                   'DOCKER_OPT_MTU="--mtu=1472"\nDOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n')),
    (["x", "-c"], ('DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=true"\n'
                  'DOCKER_OPT_MTU="--mtu=1472"\nDOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n')),
]


@pytest.mark.parametrize(("flags", "expected"), GOLDEN, ids=[" ".join(g[0]) or "default" for g in GOLDEN])
def test_golden_outputs(tmp_path: Path, flags: list[str], expected: str) -> None:
    assert run(tmp_path, flags) == (0, expected, "")


def test_ipmasq_true_gives_docker_no_masq(tmp_path: Path) -> None:
    env = 'export FLANNEL_SUBNET="10.1.74.1/24"\nFLANNEL_IPMASQ=true # flanneld masquerades\n'
    assert run(tmp_path, [], env) == (
        0, ('DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=false"\n'
           'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=false"\n'), "")


def test_environment_leaks_in_like_the_script(tmp_path: Path) -> None:
    """The combined key's existing value is prepended, and any DOCKER_OPT_* variable is emitted and
    word-split like the shell's unquoted $(set | grep ...) does (including the eval error)."""
    status, out, err = run(tmp_path, [], environ={"DOCKER_OPTS": "--foo", "DOCKER_OPT_ZZ": "a b"})
    assert status == 0
    assert out == ('DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=true"\n'
                   'DOCKER_OPT_MTU="--mtu=1472"\nDOCKER_OPT_ZZ="a b"\nb\'=""\n'
                   'DOCKER_OPTS="--foo  --bip=10.1.74.1/24 --ip-masq=true --mtu=1472 a b "\n')
    assert err == "./mk.sh: 1: eval: Syntax error: Unterminated quoted string\n"


def test_missing_env_file_writes_empty_options(tmp_path: Path) -> None:
    assert run(tmp_path, [], env_text=None) == (0, 'DOCKER_OPTS=""\n', "")


def test_invalid_ipmasq_exits_1_before_writing(tmp_path: Path) -> None:
    env = "FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_IPMASQ=maybe\n"
    assert run(tmp_path, [], env) == (1, None, "Invalid value of FLANNEL_IPMASQ: maybe\n")


def test_existing_via_route_exits_1_after_writing(tmp_path: Path) -> None:
    routes = NO_ROUTES + "10.1.74.0/24 via 10.9.9.2 dev lo \n10.1.74.0/25 via 10.9.9.2 dev lo \n"
    status, out, err = run(tmp_path, ["-c"], routes=routes)
    assert (status, out) == (1, 'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n')
    assert err == "Your routing table already contains the subnet: 10.1.74.0/24 via 10.9.9.2 dev lo \n"


def test_connected_route_without_via_is_fine(tmp_path: Path) -> None:
    routes = NO_ROUTES + "10.1.74.0/24 dev docker0 proto kernel scope link src 10.1.74.1 \n"
    assert run(tmp_path, ["-c"], routes=routes)[0] == 0


def test_bad_last_octet_is_a_dash_arithmetic_error(tmp_path: Path) -> None:
    status, out, err = run(tmp_path, ["-c"], "FLANNEL_SUBNET=10.1.74.1x/24\n")
    assert (status, out) == (2, 'DOCKER_OPTS=" --bip=10.1.74.1x/24"\n')
    assert err == './mk.sh: 107: arithmetic expression: expecting EOF: "1x-1"\n'


def test_octal_last_octet_follows_dash(tmp_path: Path) -> None:
    # dash reads 010 as octal 8, so the script looks for 10.1.74.7/24.
    routes = "10.1.74.7/24 via 10.9.9.2 dev lo \n"
    status, _, err = run(tmp_path, ["-c"], "FLANNEL_SUBNET=10.1.74.010/24\n", routes=routes)
    assert status == 1 and "10.1.74.7/24 via" in err


@pytest.mark.parametrize(("flags", "message"), [
    (["-h"], ""), (["-?"], ""), (["-x"], "Illegal option -x\n"), (["-:"], "Illegal option -:\n"),
])
def test_usage_exits_1(tmp_path: Path, flags: list[str], message: str) -> None:
    assert run(tmp_path, flags) == (1, None, message + USAGE)


def test_missing_option_argument(tmp_path: Path) -> None:
    errors: list[str] = []
    assert dockeropts.run("./mk.sh", ["-k"], {}, lambda: "", errors.append) == 1
    assert "".join(errors) == "No arg for -k option\n" + USAGE


def test_bare_env_file_name_is_searched_in_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dash's `.` does not look in the current directory for a name without a slash."""
    (tmp_path / "s.env").write_text(SAMPLE_SUBNET_ENV)
    monkeypatch.chdir(tmp_path)
    errors: list[str] = []
    status = dockeropts.run("./mk.sh", ["-f", "s.env", "-d", "o"], {"PATH": "/nonexistent"},
                            lambda: NO_ROUTES, errors.append)
    assert (status, "".join(errors)) == (2, "./mk.sh: 58: .: s.env: not found\n")
    assert not (tmp_path / "o").exists()


def test_unwritable_output_is_reported_but_exit_0(tmp_path: Path) -> None:
    errors: list[str] = []
    target = str(tmp_path / "missing-dir" / "o")
    status = dockeropts.run("./mk.sh", ["-f", str(tmp_path / "none"), "-d", target], {},
                            lambda: NO_ROUTES, errors.append)
    assert status == 0
    assert "".join(errors) == (f"./mk.sh: 86: cannot create {target}: Directory nonexistent\n"
                               f"./mk.sh: 102: cannot create {target}: Directory nonexistent\n")


def test_output_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        run(tmp_path, ["-c"])
    finally:
        os.umask(old)
    assert (tmp_path / "docker_opts.env").stat().st_mode & 0o777 == 0o644


def test_dash_echo_escapes() -> None:
    assert dockeropts.dash_echo(["a\\tb"]) == "a\tb\n"
    assert dockeropts.dash_echo(["-n", "x"]) == "x"
    assert dockeropts.dash_echo(["x\\cy"]) == "x"
