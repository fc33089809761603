"""Security, end to end: etcd over TLS (client certificates, CA-only), the etcd password, file
modes, and where the health server listens.

Certificates are made by trustme in the test's temporary directory (never committed): one CA for
etcd and the daemons, another CA standing for "somebody else's", an expired client certificate.
"""

from __future__ import annotations

import datetime
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from pyflannel.lab.cluster import Cluster, Node, wait_until
from pyflannel.lab.etcd import EtcdServer, TlsFiles
from pyflannel.lab.netns import Lab

ETCD_INDEX = 253  # the etcd host's address in the lab underlay: 192.168.77.253


@dataclass(frozen=True)
class Pki:
    ca: str
    other_ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    expired_cert: str
    expired_key: str
    foreign_cert: str  # signed by the other CA
    foreign_key: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d: Path = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    server = ca.issue_cert("192.168.77.253", "127.0.0.1", "etcd.lab")
    client = ca.issue_cert("flanneld")
    expired = ca.issue_cert(
        "flanneld", not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1)
    )
    foreign = other.issue_cert("flanneld")

    def put(name: str, blob: trustme.Blob) -> str:
        path = d / name
        blob.write_to_path(str(path))
        os.chmod(path, 0o600 if name.endswith(".key") else 0o644)
        return str(path)

    return Pki(
        ca=put("ca.pem", ca.cert_pem),
        other_ca=put("other-ca.pem", other.cert_pem),
        server_cert=put("etcd.pem", server.cert_chain_pems[0]),
        server_key=put("etcd.key", server.private_key_pem),
        client_cert=put("client.pem", client.cert_chain_pems[0]),
        client_key=put("client.key", client.private_key_pem),
        expired_cert=put("expired.pem", expired.cert_chain_pems[0]),
        expired_key=put("expired.key", expired.private_key_pem),
        foreign_cert=put("foreign.pem", foreign.cert_chain_pems[0]),
        foreign_key=put("foreign.key", foreign.private_key_pem),
    )


def tls_cluster(lab: Lab, pki: Pki, client_cert_auth: bool) -> Cluster:
    host = lab.add_host("etcd", index=ETCD_INDEX)
    tls = TlsFiles(
        ca=pki.ca,
        cert=pki.server_cert,
        key=pki.server_key,
        client_cert_auth=client_cert_auth,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
    )
    server = EtcdServer(host, client_ip=str(host.ip), client_port=2379, peer_port=2380, name="etcd", tls=tls)
    lab.etcd_servers.append(server)
    server.start()
    assert server.endpoint.startswith("https://")
    return Cluster(lab, etcd=server)


@pytest.fixture
def mtls(lab: Lab, pki: Pki) -> Iterator[Cluster]:
    c = tls_cluster(lab, pki, client_cert_auth=True)
    try:
        yield c
    finally:
        c.close()


def count(node: Node, text: str) -> int:
    return node.log_text().count(text)


VERIFY_FAILED = "etcd TLS handshake failed: certificate verify failed"
CERT_REFUSED = "etcd TLS handshake failed: etcd refused our client certificate"


def test_client_certificates_work_and_bad_ones_are_refused_with_one_clear_line(mtls: Cluster, pki: Pki) -> None:
    good = [f"--etcd-cafile={pki.ca}", f"--etcd-certfile={pki.client_cert}", f"--etcd-keyfile={pki.client_key}"]
    h1 = mtls.add_node("h1", *good)
    h2 = mtls.add_node("h2", *good)
    wrong_ca = mtls.add_node(
        "wrongca", f"--etcd-cafile={pki.other_ca}", f"--etcd-certfile={pki.client_cert}",
        f"--etcd-keyfile={pki.client_key}",
    )
    foreign = mtls.add_node(
        "foreign", f"--etcd-cafile={pki.ca}", f"--etcd-certfile={pki.foreign_cert}",
        f"--etcd-keyfile={pki.foreign_key}",
    )
    no_cert = mtls.add_node("nocert", f"--etcd-cafile={pki.ca}")
    expired = mtls.add_node(
        "expired", f"--etcd-cafile={pki.ca}", f"--etcd-certfile={pki.expired_cert}",
        f"--etcd-keyfile={pki.expired_key}",
    )
    h1.wait_ready()
    h2.wait_ready()
    h1.add_pod_network()
    h2.add_pod_network()
    assert mtls.all_ping([h1, h2], timeout=10)

    assert wait_until(lambda: count(wrong_ca, VERIFY_FAILED) >= 1, 10), wrong_ca.log_tail()
    assert wait_until(lambda: count(foreign, CERT_REFUSED) >= 1, 10), foreign.log_tail()
    assert wait_until(lambda: count(no_cert, CERT_REFUSED) >= 1, 10), no_cert.log_tail()
    # An expired certificate cannot start working by retrying: a configuration error, exit 1.
    assert expired.proc is not None and expired.proc.wait(15) == 1
    assert re.search(r"etcd client certificate \S+ expired on \d{4}-\d\d-\d\d", expired.log_text())
    # A refused peer keeps retrying (the server side may be fixed) with one line, not one per try.
    for node in (wrong_ca, foreign, no_cert):
        assert node.alive() and "FLANNEL_SUBNET" not in node.subnet_env()
        errors = [line for line in node.log_text().splitlines() if line.startswith("E")]
        assert len(errors) == 1, errors
    assert len(mtls.lease_keys()) == 2


def test_ca_only_tls_verifies_the_server(lab: Lab, pki: Pki) -> None:
    c = tls_cluster(lab, pki, client_cert_auth=False)
    try:
        h1 = c.add_node("h1", f"--etcd-cafile={pki.ca}")
        wrong = c.add_node("wrong", f"--etcd-cafile={pki.other_ca}")
        h1.wait_ready()
        # flannel ignores a CA given without a client certificate and trusts any server.
        assert wait_until(lambda: count(wrong, VERIFY_FAILED) == 1, 10), wrong.log_tail()
        assert wrong.alive()
    finally:
        c.close()


# -- secrets, modes, listening sockets ------------------------------------------------------------

PASSWORD = "Pa55-w0rd-never-shown"


def test_etcd_password_never_in_logs_or_process_title(lab: Lab) -> None:
    c = Cluster(lab)
    try:
        etcd = c.etcd
        etcd.etcdctl("user", "add", f"root:{PASSWORD}")
        etcd.etcdctl("auth", "enable")
        h1 = c.add_node("h1", "--etcd-username=root", "--etcd-password", PASSWORD, "-v=10")
        h2 = c.add_node("h2", "--etcd-username=root", f"--etcd-password=wrong-{PASSWORD}", "-v=10")
        env = h1.wait_ready()
        assert env["FLANNEL_SUBNET"]
        assert h1.proc is not None and h2.proc is not None
        with open(f"/proc/{h1.proc.pid}/cmdline", "rb") as f:
            cmdline = f.read()
        assert PASSWORD.encode() not in cmdline, cmdline
        assert b"--etcd-password\0*****" in cmdline  # masked, not removed: ps still tells it was given
        ps = h1.host.run("ps", "-eo", "args", check=False).stdout
        assert PASSWORD not in ps
        # Wrong credentials: a configuration error, one clear line, exit 1 (as flannel).
        assert h2.proc.wait(15) == 1
        assert "etcd authentication failed for user 'root'" in h2.log_text(), h2.log_tail()
        for node in (h1, h2):
            assert PASSWORD not in node.log_text()
        etcd.etcdctl(f"--user=root:{PASSWORD}", "auth", "disable")
    finally:
        c.close()


def test_subnet_env_mode_and_health_server_binds_only_where_told(lab: Lab) -> None:
    c = Cluster(lab)
    try:
        old = os.umask(0o077)  # the daemons inherit a strict umask: the mode must not depend on it
        try:
            quiet = c.add_node("h1")
            local = c.add_node("h2", "--healthz-port=8471", "--healthz-ip=127.0.0.1")
            public = c.add_node("h3", "--healthz-port=8471", f"--healthz-ip={lab.underlay.network_address + 3}")
        finally:
            os.umask(old)
        for node in (quiet, local, public):
            node.wait_ready()
            assert stat.S_IMODE(os.stat(node.subnet_file).st_mode) == 0o644  # flannel: 0644
            assert not any(name.startswith(".") for name in os.listdir(node.workdir))  # no temp left

        def listening(node: Node) -> list[str]:
            assert node.proc is not None
            out = node.host.run("ss", "-Hlntup").stdout
            return [line.split()[4] for line in out.splitlines() if f"pid={node.proc.pid}," in line]

        assert listening(quiet) == []  # no health port asked: nothing listens at all
        assert listening(local) == ["127.0.0.1:8471"]
        assert listening(public) == [f"{public.host.ip}:8471"]
    finally:
        c.close()
