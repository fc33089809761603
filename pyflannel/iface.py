"""Choosing the external interface and the public IP, as flannel does (spec section 1.4).

Order: every ``--iface`` (a name or an address of the interface), then every ``--iface-regex``
(matched against the interface's addresses first, then its name), then ``--iface-can-reach``
(the route to that address), then the interface owning ``--public-ip``, then the interface of the
IPv4 default route. The choice itself (:func:`choose`) is pure; :func:`select` gathers the facts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address

from pyflannel.backend.base import ExternalInterface
from pyflannel.kernel.netlink import Address, Link, Netlink, NetlinkError, Route
from pyflannel.settings import InterfaceSettings

log = logging.getLogger(__name__)


class InterfaceError(Exception):
    """No usable external interface (one-line message)."""


@dataclass(frozen=True)
class HostFacts:
    links: Sequence[Link]
    addresses: Sequence[Address]
    default_routes: Sequence[Route]


def _ipv4_of(link: Link, facts: HostFacts) -> list[IPv4Address]:
    addrs = [a.interface.ip for a in facts.addresses if a.ifindex == link.index]
    # Global before link-local, as flannel's address sort.
    return sorted(addrs, key=lambda ip: ip.is_link_local)


def _usable(ip: IPv4Address) -> bool:
    return not (ip.is_loopback or ip.is_multicast or ip.is_unspecified)


def choose(settings: InterfaceSettings, facts: HostFacts, can_reach: Route | None = None) -> tuple[Link, IPv4Address]:
    """Pick (link, interface address) from the flags and the host's links and addresses."""
    by_name = {link.name: link for link in facts.links}

    def first_addr(link: Link) -> IPv4Address:
        ips = [ip for ip in _ipv4_of(link, facts) if _usable(ip)]
        if not ips:
            raise InterfaceError(f"failed to find IPv4 address for interface {link.name}")
        return ips[0]

    def owner(ip: IPv4Address) -> Link | None:
        for a in facts.addresses:
            if a.interface.ip == ip:
                return next((lk for lk in facts.links if lk.index == a.ifindex), None)
        return None

    for spec in settings.iface:
        try:
            ip = ip_address(spec)
        except ValueError:
            link = by_name.get(spec)
            if link is None:
                log.error("Could not find interface %s", spec)
                continue
            return link, first_addr(link)
        if isinstance(ip, IPv4Address):
            link = owner(ip)
            if link is not None:
                return link, ip
        log.error("Could not find interface for address %s", spec)
    for pattern in settings.iface_regex:
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise InterfaceError(f"invalid --iface-regex {pattern!r}: {e}") from None
        for link in facts.links:
            for ip in _ipv4_of(link, facts):
                if rx.search(str(ip)):
                    return link, ip
        for link in facts.links:
            if rx.search(link.name):
                return link, first_addr(link)
    if (settings.iface or settings.iface_regex) and not settings.iface_can_reach:
        raise InterfaceError("failed to find any interface matching --iface/--iface-regex")
    if settings.iface_can_reach:
        if can_reach is None or can_reach.oif is None:
            raise InterfaceError(f"no route to {settings.iface_can_reach} (--iface-can-reach)")
        link = next((lk for lk in facts.links if lk.index == can_reach.oif), None)
        if link is None:
            raise InterfaceError(f"route to {settings.iface_can_reach} uses an unknown interface")
        return link, can_reach.prefsrc or first_addr(link)
    if settings.public_ip:
        ip = _parse_ip(settings.public_ip, "--public-ip")
        link = owner(ip)
        if link is None:
            raise InterfaceError(f"--public-ip {ip} is not an address of this host; give --iface too")
        return link, ip
    for r in facts.default_routes:
        link = next((lk for lk in facts.links if lk.index == r.oif), None)
        if link is not None:
            return link, first_addr(link)
    raise InterfaceError("failed to get default interface: no IPv4 default route (use --iface)")


def _parse_ip(text: str, flag: str) -> IPv4Address:
    try:
        ip = ip_address(text)
    except ValueError:
        raise InterfaceError(f"invalid {flag} {text!r}") from None
    if not isinstance(ip, IPv4Address):
        raise InterfaceError(f"{flag} {text} is not an IPv4 address")
    return ip


def select(settings: InterfaceSettings, nl: Netlink) -> ExternalInterface:
    """Gather links, addresses and routes from the kernel and choose."""
    try:
        facts = HostFacts(
            links=nl.links(),
            addresses=nl.addresses(),
            default_routes=[r for r in nl.routes() if r.dst.prefixlen == 0],
        )
        can_reach = None
        if settings.iface_can_reach:
            can_reach = nl.route_get(_parse_ip(settings.iface_can_reach, "--iface-can-reach"))
    except NetlinkError as e:
        raise InterfaceError(f"reading interfaces: {e}") from None
    link, addr = choose(settings, facts, can_reach)
    if link.mtu == 0:
        raise InterfaceError(f"failed to determine MTU for {link.name} interface")
    log.info("Using interface with name %s and address %s", link.name, addr)
    if settings.public_ip:
        ext = _parse_ip(settings.public_ip, "--public-ip")
    else:
        ext = addr
        log.info("Defaulting external address to interface address (%s)", addr)
    return ExternalInterface(link=link, iface_addr=addr, ext_addr=ext)
