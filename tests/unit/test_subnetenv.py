"""subnet.env rendering, atomic writing and previous-subnet reading."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path

import pytest

from pyflannel.subnetenv import (
    SubnetEnv,
    first_address,
    first_address6,
    read_previous_subnets,
    read_subnet_env,
    render,
    write_subnet_env,
)

V4_ONLY = SubnetEnv(
    network=IPv4Network("10.5.0.0/16"),
    subnet=IPv4Interface("10.5.72.1/24"),
    ipv6_network=None,
    ipv6_subnet=None,
    mtu=1450,
    ipmasq=False,
)
V4_ONLY_TEXT = """\
FLANNEL_NETWORK=10.5.0.0/16
FLANNEL_SUBNET=10.5.72.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=false
"""

DUAL = SubnetEnv(
    network=IPv4Network("10.5.0.0/16"),
    subnet=IPv4Interface("10.5.72.1/24"),
    ipv6_network=IPv6Network("fd00:10::/56"),
    ipv6_subnet=IPv6Interface("fd00:10:0:5::1/64"),
    mtu=1430,
    ipmasq=True,
)
DUAL_TEXT = """\
FLANNEL_NETWORK=10.5.0.0/16
FLANNEL_SUBNET=10.5.72.1/24
FLANNEL_IPV6_NETWORK=fd00:10::/56
FLANNEL_IPV6_SUBNET=fd00:10:0:5::1/64
FLANNEL_MTU=1430
FLANNEL_IPMASQ=true
"""

V6_ONLY = SubnetEnv(None, None, IPv6Network("fd00:10::/56"), IPv6Interface("fd00:10:0:5::1/64"), 1450, False)
V6_ONLY_TEXT = """\
FLANNEL_IPV6_NETWORK=fd00:10::/56
FLANNEL_IPV6_SUBNET=fd00:10:0:5::1/64
FLANNEL_MTU=1450
FLANNEL_IPMASQ=false
"""


@pytest.mark.parametrize(
    ("env", "text"), [(V4_ONLY, V4_ONLY_TEXT), (DUAL, DUAL_TEXT), (V6_ONLY, V6_ONLY_TEXT)]
)
def test_render_golden(env: SubnetEnv, text: str) -> None:
    assert render(env) == text


def test_render_rejects_half_family() -> None:
    with pytest.raises(ValueError):
        render(SubnetEnv(IPv4Network("10.5.0.0/16"), None, None, None, 1450, False))
    with pytest.raises(ValueError):
        render(SubnetEnv(None, None, None, IPv6Interface("fd00::1/64"), 1450, False))


def test_first_address() -> None:
    assert str(first_address(IPv4Network("10.5.72.0/24"))) == "10.5.72.1/24"
    assert str(first_address6(IPv6Network("fd00:10:0:5::/64"))) == "fd00:10:0:5::1/64"


@pytest.fixture
def umask077() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def test_write_creates_parents_and_ignores_umask(tmp_path: Path, umask077: None) -> None:
    path = tmp_path / "run" / "flannel" / "subnet.env"
    write_subnet_env(str(path), DUAL)
    assert path.read_text() == DUAL_TEXT
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "run" / "flannel").stat().st_mode) == 0o755
    assert os.listdir(path.parent) == ["subnet.env"]  # no temp file left behind


def test_write_replaces_existing_file_atomically(tmp_path: Path, umask077: None) -> None:
    path = tmp_path / "subnet.env"
    path.write_text("old\n")
    os.chmod(path, 0o600)
    before = path.stat().st_ino
    write_subnet_env(str(path), V4_ONLY)
    assert path.read_text() == V4_ONLY_TEXT
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.stat().st_ino != before  # replaced by rename, not rewritten in place
    assert os.listdir(tmp_path) == ["subnet.env"]


def test_existing_parent_mode_untouched(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    os.chmod(d, 0o700)
    write_subnet_env(str(d / "subnet.env"), V4_ONLY)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_write_failure_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "subnet.env"
    target.mkdir()  # rename onto a directory fails
    (target / "x").write_text("")
    with pytest.raises(OSError):
        write_subnet_env(str(target), V4_ONLY)
    assert sorted(os.listdir(tmp_path)) == ["subnet.env"]


def test_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    write_subnet_env(str(path), DUAL)
    assert read_previous_subnets(str(path)) == (IPv4Network("10.5.72.0/24"), IPv6Network("fd00:10:0:5::/64"))
    assert read_subnet_env(str(path)) == {
        "FLANNEL_NETWORK": "10.5.0.0/16",
        "FLANNEL_SUBNET": "10.5.72.1/24",
        "FLANNEL_IPV6_NETWORK": "fd00:10::/56",
        "FLANNEL_IPV6_SUBNET": "fd00:10:0:5::1/64",
        "FLANNEL_MTU": "1430",
        "FLANNEL_IPMASQ": "true",
    }


PREVIOUS_CASES: list[tuple[str, tuple[str | None, str | None]]] = [
    (V4_ONLY_TEXT, ("10.5.72.0/24", None)),
    ("FLANNEL_SUBNET=10.5.72.1/24\n", ("10.5.72.0/24", None)),
    ("FLANNEL_SUBNET=10.5.72.0/24\n", ("10.5.72.0/24", None)),
    ("FLANNEL_SUBNET=10.5.72.77/26\n", ("10.5.72.64/26", None)),
    ("export FLANNEL_SUBNET=10.5.72.1/24\n", ("10.5.72.0/24", None)),
    ('FLANNEL_SUBNET="10.5.72.1/24"\n', ("10.5.72.0/24", None)),
    ("FLANNEL_SUBNET=10.5.72.1/24 # comment\n", ("10.5.72.0/24", None)),
    ("# FLANNEL_SUBNET=10.5.72.1/24\n", (None, None)),
    ("FLANNEL_SUBNET=10.5.72.1/24,10.5.73.1/24\n", (None, None)),  # more than one value: ignored
    ("FLANNEL_SUBNET=10.5.72.1/24,garbage\n", ("10.5.72.0/24", None)),  # bad parts skipped, like flannel
    ("FLANNEL_SUBNET=10.5.72.1\n", (None, None)),  # no prefix
    ("FLANNEL_SUBNET=10.5.72.1/33\n", (None, None)),
    ("FLANNEL_SUBNET=10.5.72.1/255.255.255.0\n", (None, None)),
    ("FLANNEL_SUBNET=010.5.72.1/24\n", (None, None)),
    ("FLANNEL_SUBNET=0.0.0.0/0\n", (None, None)),
    ("FLANNEL_SUBNET=fd00::1/64\n", (None, None)),  # wrong family
    ("FLANNEL_SUBNET=\n", (None, None)),
    ("FLANNEL_IPV6_SUBNET=fd00:10:0:5::1/64\n", (None, "fd00:10:0:5::/64")),
    ("FLANNEL_IPV6_SUBNET=10.5.72.1/24\n", (None, None)),
    ("FLANNEL_IPV6_SUBNET=fe80::1%eth0/64\n", (None, None)),
    ("FLANNEL_IPV6_SUBNET=fd00::1/64,fd00:1::1/64\n", (None, None)),
    ("garbage\n\x00\xff line without equals\n=novalue\n", (None, None)),
    ("", (None, None)),
]


@pytest.mark.parametrize(("content", "want"), PREVIOUS_CASES)
def test_read_previous_subnets(tmp_path: Path, content: str, want: tuple[str | None, str | None]) -> None:
    path = tmp_path / "subnet.env"
    path.write_text(content, encoding="utf-8")
    v4, v6 = read_previous_subnets(str(path))
    assert (str(v4) if v4 else None, str(v6) if v6 else None) == want


def test_read_previous_subnets_binary_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    path.write_bytes(b"\xff\xfe\x00FLANNEL_SUBNET=\xff/24\n")
    assert read_previous_subnets(str(path)) == (None, None)
    assert read_previous_subnets(str(tmp_path / "missing.env")) == (None, None)
    assert read_previous_subnets(str(tmp_path)) == (None, None)  # a directory
    assert read_previous_subnets("") == (None, None)


def test_read_subnet_env_skips_invalid_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.env"
    path.write_text("A=1\nnot a line\n  B = two  \n=x\nbad key=3\nC='q v'\n#D=4\n\nE=\n")
    assert read_subnet_env(str(path)) == {"A": "1", "B": "two", "C": "q v", "E": ""}
