"""Shared fixtures and the "tests by what they need" rules.

Directories decide what a test needs, markers say it, and a test whose needs are not met is skipped
with the reason:

- ``tests/unit/``   nothing (no root, no network, no etcd)
- ``tests/etcd/``   marker ``etcd``: the etcd binary (``/usr/bin/etcd`` or ``$ETCD_BIN``) and etcdctl
- ``tests/netns/``  marker ``root``: root and working ``ip netns``
- ``tests/e2e/``    markers ``root`` and ``etcd``

A test anywhere may also carry ``@pytest.mark.root`` / ``@pytest.mark.etcd`` itself.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyflannel.lab import etcd as lab_etcd
from pyflannel.lab.etcd import EtcdServer
from pyflannel.lab.netns import Lab

TESTS = Path(__file__).resolve().parent
DIR_MARKERS = {"netns": ("root",), "e2e": ("root", "etcd"), "etcd": ("etcd",)}


@functools.cache
def root_missing() -> str | None:
    """Why root + namespace tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    probe = f"pfprobe{secrets.token_hex(3)}"
    add = subprocess.run(["ip", "netns", "add", probe], check=False, capture_output=True, text=True)
    if add.returncode != 0:
        return f"`ip netns add` does not work here: {add.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False, capture_output=True)
    return None


@functools.cache
def etcd_missing() -> str | None:
    if not lab_etcd.available():
        return f"needs the etcd binary ({lab_etcd.etcd_bin()}, set $ETCD_BIN) and etcdctl"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            top = item.path.resolve().relative_to(TESTS).parts[0]
        except (ValueError, IndexError):
            top = ""
        for name in DIR_MARKERS.get(top, ()):
            item.add_marker(getattr(pytest.mark, name))
        reasons = []
        if item.get_closest_marker("root") is not None and (why := root_missing()):
            reasons.append(why)
        if item.get_closest_marker("etcd") is not None and (why := etcd_missing()):
            reasons.append(why)
        if reasons:
            item.add_marker(pytest.mark.skip(reason="; ".join(reasons)))


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdServer]:
    """One etcd server for the whole session, in the current (root or not) namespace.

    Creates: an etcd process listening on 127.0.0.1 on two free ports, with a data dir
    /tmp/pyflannel-etcd-default-*/ that also holds its log (etcd.log).
    Cleans up: SIGTERM (then SIGKILL) of that process by PID, removal of the data dir.
    Tests share it: isolate your keys with ``etcd_prefix``. A test that must restart or kill etcd
    should start its own ``EtcdServer`` instead.
    """
    if why := etcd_missing():
        pytest.skip(why)
    with EtcdServer() as server:
        yield server


@pytest.fixture
def etcd_prefix(etcd: EtcdServer) -> Iterator[str]:
    """A flannel etcd prefix unique to this test, ``/pftest-<uuid>/network``.

    Cleans up: deletes every key under ``/pftest-<uuid>/`` afterwards (leases are left to expire).
    """
    root = f"/pftest-{uuid.uuid4().hex}"
    yield root + "/network"
    etcd.etcdctl("del", "--prefix", root + "/", check=False)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh :class:`~pyflannel.lab.netns.Lab` (unique prefix ``pf<6 hex>``) for this test.

    Creates: the underlay namespace ``<prefix>-ul`` with bridge br0 (192.168.77.254/24); hosts and
    etcd hosts are added by the test (``lab.add_host``, ``lab.start_etcd``).
    Cleans up: every process started through the lab (SIGTERM, then SIGKILL, by PID) and every
    namespace whose name starts with the prefix, also when the test fails or times out.
    """
    if why := root_missing():
        pytest.skip(why)
    with Lab() as the_lab:
        yield the_lab
