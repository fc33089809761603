"""LeaseWatcher: snapshot diffs and watch events into ADDED/REMOVED batches."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network

from hypothesis import given
from hypothesis import strategies as st

from pyflannel.subnet.lease import Lease, LeaseAttrs
from pyflannel.subnet.watcher import Event, EventType, LeaseWatcher

A, R = EventType.ADDED, EventType.REMOVED


def lease(
    sn: str,
    ip: str = "192.168.1.2",
    mac: str = "aa:bb:cc:dd:ee:01",
    sn6: str | None = None,
    exp: float | None = None,
) -> Lease:
    attrs = LeaseAttrs(IPv4Address(ip), None, "vxlan", {"VNI": 1, "VtepMAC": mac})
    return Lease(IPv4Network(sn), None if sn6 is None else IPv6Network(sn6), attrs, exp)


def summary(events: list[Event]) -> list[tuple[EventType, str, str]]:
    return [(e.type, str(e.lease.subnet), str(e.lease.attrs.public_ip)) for e in events]


def test_first_snapshot_adds_everything_but_own() -> None:
    w = LeaseWatcher(IPv4Network("10.5.1.0/24"))
    out = w.reset([lease("10.5.1.0/24"), lease("10.5.2.0/24"), lease("10.5.3.0/24", ip="192.168.1.3")])
    assert summary(out) == [(A, "10.5.2.0/24", "192.168.1.2"), (A, "10.5.3.0/24", "192.168.1.3")]
    assert [str(le.subnet) for le in w.leases()] == ["10.5.2.0/24", "10.5.3.0/24"]


def test_snapshot_diff() -> None:
    w = LeaseWatcher(None)
    w.reset([lease("10.5.2.0/24"), lease("10.5.3.0/24"), lease("10.5.4.0/24")])
    out = w.reset(
        [
            lease("10.5.2.0/24", exp=123.0),  # unchanged except expiration: nothing
            lease("10.5.3.0/24", ip="192.168.1.33"),  # changed owner: ADDED
            lease("10.5.5.0/24"),  # new: ADDED
        ]
    )
    # removals first (with the cached lease), then additions
    assert summary(out) == [
        (R, "10.5.4.0/24", "192.168.1.2"),
        (A, "10.5.3.0/24", "192.168.1.33"),
        (A, "10.5.5.0/24", "192.168.1.2"),
    ]
    cached = {str(le.subnet): le for le in w.leases()}
    assert cached["10.5.2.0/24"].expiration == 123.0  # the cache holds the newest lease


def test_identical_snapshot_is_silent() -> None:
    w = LeaseWatcher(None)
    leases = [lease(f"10.5.{i}.0/24") for i in range(1, 10)]
    assert len(w.reset(leases)) == 9
    assert w.reset(leases) == []
    assert w.reset([]) == [Event(R, le) for le in leases]


def test_update_added_new_changed_and_renewal() -> None:
    w = LeaseWatcher(None)
    w.reset([lease("10.5.2.0/24")])
    out = w.update(
        [
            Event(A, lease("10.5.2.0/24", exp=99.0)),  # renewal: not re-programmed
            Event(A, lease("10.5.3.0/24")),  # new
            Event(A, lease("10.5.2.0/24", mac="aa:bb:cc:dd:ee:02")),  # VtepMAC changed
        ]
    )
    assert [(e.type, str(e.lease.subnet)) for e in out] == [(A, "10.5.3.0/24"), (A, "10.5.2.0/24")]
    assert out[1].lease.attrs.backend_data == {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:02"}


def test_removed_carries_cached_lease() -> None:
    w = LeaseWatcher(None)
    w.reset([lease("10.5.2.0/24", ip="192.168.1.7", mac="aa:bb:cc:dd:ee:07")])
    placeholder = Lease(IPv4Network("10.5.2.0/24"), None, LeaseAttrs(IPv4Address(0)))
    out = w.update([Event(R, placeholder)])
    assert len(out) == 1 and out[0].type is R
    assert out[0].lease.attrs.public_ip == IPv4Address("192.168.1.7")
    assert out[0].lease.attrs.backend_data["VtepMAC"] == "aa:bb:cc:dd:ee:07"
    assert w.leases() == []
    assert w.update([Event(R, placeholder)]) == []  # unknown now: nothing


def test_own_subnet_filtered_from_updates() -> None:
    w = LeaseWatcher(IPv4Network("10.5.1.0/24"))
    assert w.update([Event(A, lease("10.5.1.0/24")), Event(R, lease("10.5.1.0/24"))]) == []


def test_keyed_by_subnet_pair() -> None:
    w = LeaseWatcher(None)
    out = w.reset([lease("10.5.2.0/24", sn6="fd00:0:0:2::/64"), lease("10.5.3.0/24")])
    assert len(out) == 2
    # a different IPv6 part is a different key
    out = w.update([Event(A, lease("10.5.3.0/24", sn6="fd00:0:0:3::/64"))])
    assert len(out) == 1 and len(w.leases()) == 3


def test_removal_of_a_duplicate_subnet_re_announces_the_survivor() -> None:
    # node moved to dual stack, the new key was put before the old one was deleted
    w = LeaseWatcher(None)
    old = lease("10.5.3.0/24")
    new = lease("10.5.3.0/24", sn6="fd00:0:0:3::/64", mac="aa:bb:cc:dd:ee:33")
    w.reset([old])
    assert w.update([Event(A, new)]) == [Event(A, new)]
    assert w.update([Event(R, old)]) == [Event(R, old), Event(A, new)]
    # the same in a snapshot: old vanished, new unchanged -> REMOVED old, then ADDED new again
    w = LeaseWatcher(None)
    w.reset([old, new])
    assert w.reset([new]) == [Event(R, old), Event(A, new)]
    # and when both are listed as new/changed, the survivor is announced once
    w = LeaseWatcher(None)
    w.reset([old])
    assert w.reset([new]) == [Event(R, old), Event(A, new)]


def test_large_snapshot_is_linear() -> None:
    import time

    w = LeaseWatcher(None)
    leases = [lease(str(IPv4Network(((10 << 24) + (i << 8), 24)))) for i in range(1, 20001)]
    start = time.perf_counter()
    assert len(w.reset(leases)) == 20000
    assert w.reset(leases) == []
    assert len(w.reset(leases[:10000])) == 10000
    assert len(w.update([Event(R, le) for le in leases])) == 10000
    assert time.perf_counter() - start < 2.0


ops = st.lists(
    st.tuples(
        st.sampled_from(["reset", "add", "remove"]),
        st.lists(st.tuples(st.integers(1, 6), st.integers(1, 3)), max_size=6),
    ),
    max_size=12,
)


@given(ops)
def test_property_events_replay_to_cache(script: list[tuple[str, list[tuple[int, int]]]]) -> None:
    """Applying the emitted events to a mirror (as a backend does) always yields the cache."""
    w = LeaseWatcher(IPv4Network("10.5.6.0/24"))
    mirror: dict[tuple[IPv4Network, IPv6Network | None], Lease] = {}
    for op, items in script:
        leases = [lease(f"10.5.{n}.0/24", ip=f"192.168.1.{v}") for n, v in items]
        if op == "reset":
            out = w.reset(leases)
        elif op == "add":
            out = w.update([Event(A, le) for le in leases])
        else:
            out = w.update([Event(R, le) for le in leases])
        for ev in out:
            k = (ev.lease.subnet, ev.lease.ipv6_subnet)
            if ev.type is A:
                assert mirror.get(k) is None or mirror[k].attrs != ev.lease.attrs  # only real changes
                mirror[k] = ev.lease
            else:
                assert mirror.pop(k).attrs == ev.lease.attrs  # removal names what was programmed
        assert {k: v.attrs for k, v in mirror.items()} == {
            (le.subnet, le.ipv6_subnet): le.attrs for le in w.leases()
        }
        assert all(le.subnet != IPv4Network("10.5.6.0/24") for le in w.leases())
