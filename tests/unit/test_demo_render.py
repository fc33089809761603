"""The demo's pure parts: etcdctl output parsing and the tables it prints."""

from __future__ import annotations

import base64
import json

from pyflannel.lab.demo import matrix_ok, parse_lease_listing, parse_ttl_remaining, render_ping_matrix


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_parse_lease_listing_sorted_with_macs_and_garbage() -> None:
    doc = {"kvs": [
        {"key": b64("/coreos.com/network/subnets/10.244.9.0-24"), "lease": 7,
         "value": b64('{"PublicIP":"192.168.77.2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}}')},
        {"key": b64("/coreos.com/network/subnets/10.244.1.0-24"), "value": b64("not json")},
    ]}
    rows = parse_lease_listing(json.dumps(doc))
    assert [(r.subnet, r.public_ip, r.vtep_mac, r.lease_id) for r in rows] == [
        ("10.244.1.0/24", "", "", 0),
        ("10.244.9.0/24", "192.168.77.2", "aa:bb:cc:dd:ee:02", 7),
    ]


def test_parse_ttl_remaining() -> None:
    assert parse_ttl_remaining("lease 694d granted with TTL(86400s), remaining(86395s)") == 86395
    assert parse_ttl_remaining("lease 694d already expired") is None


def test_ping_matrix_rendering_and_verdict() -> None:
    ips = ["10.244.1.1", "10.244.2.1"]
    rtts = {(ips[0], ips[1]): 0.05, (ips[1], ips[0]): None}
    text = render_ping_matrix(ips, rtts, names=["h1", "h2"])
    assert text.splitlines()[0].split() == ["from", "\\", "to", "h1", "10.244.1.1", "h2", "10.244.2.1"]
    assert "✓ 0.05ms" in text and "✗" in text
    assert not matrix_ok(ips, rtts)
    assert matrix_ok(ips, {(ips[0], ips[1]): 0.1, (ips[1], ips[0]): 0.2})
