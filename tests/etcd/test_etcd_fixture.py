"""The etcd fixtures and EtcdServer: a real etcd on free loopback ports (no root needed)."""

from __future__ import annotations

import os

from pyflannel.lab.etcd import EtcdServer


def test_put_get(etcd: EtcdServer, etcd_prefix: str) -> None:
    assert etcd_prefix.startswith("/pftest-") and etcd_prefix.endswith("/network")
    etcd.etcdctl("put", etcd_prefix + "/config", '{"Network":"10.244.0.0/16"}')
    assert (
        etcd.etcdctl("get", etcd_prefix + "/config", "--print-value-only").strip()
        == '{"Network":"10.244.0.0/16"}'
    )
    assert etcd.endpoint.startswith("http://127.0.0.1:")


def test_prefixes_are_unique_per_test(etcd: EtcdServer, etcd_prefix: str) -> None:
    # The previous test's key was deleted with its prefix; this test's prefix is a new one.
    assert etcd.etcdctl("get", "--prefix", etcd_prefix, "--keys-only").strip() == ""


def test_restart_and_kill_keep_data_stop_removes_it() -> None:
    with EtcdServer() as server:
        data_dir = server.data_dir
        assert data_dir is not None and os.path.isdir(data_dir)
        server.etcdctl("put", "k", "v1")
        server.restart()
        assert server.etcdctl("get", "k", "--print-value-only").strip() == "v1"
        server.kill()
        assert not server.healthy()
        server.start()
        assert server.etcdctl("get", "k", "--print-value-only").strip() == "v1"
        assert "etcd" in server.log_tail()
    assert server.proc is None
    assert not os.path.exists(data_dir)
