"""Settings of one flanneld process, grouped by concern.

Built by :func:`pyflannel.cli.flags.parse_args` from the command line and the ``FLANNELD_*``
environment; every field corresponds to one flanneld flag (named in its comment) unless marked as a
pyflannel extension. All classes are frozen: the daemon never changes its settings after start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EtcdSettings:
    """Where and how to reach etcd (etcd subnet manager only)."""

    endpoints: tuple[str, ...]
    """``--etcd-endpoints``: the comma-separated flag value split on ``,`` (no other clean-up)."""
    prefix: str
    """``--etcd-prefix``: key prefix of the network, default ``/coreos.com/network``."""
    cafile: str
    """``--etcd-cafile``: CA bundle; only used when both certfile and keyfile are given."""
    certfile: str
    """``--etcd-certfile``: client certificate; TLS is used only if keyfile is set too."""
    keyfile: str
    """``--etcd-keyfile``: client key; TLS is used only if certfile is set too."""
    username: str
    """``--etcd-username``: etcd v3 auth user; empty = no auth."""
    password: str = field(repr=False)
    """``--etcd-password``: never shown by ``repr`` (flannel logs it in clear; we do not)."""


@dataclass(frozen=True)
class InterfaceSettings:
    """How the external interface and the advertised addresses are chosen."""

    iface: tuple[str, ...]
    """``--iface`` (repeatable): interface names or IPs, tried in order."""
    iface_regex: tuple[str, ...]
    """``--iface-regex`` (repeatable): regexes tried after all ``--iface`` values."""
    iface_can_reach: str
    """``--iface-can-reach``: IP whose route (``ip route get``) picks the interface."""
    public_ip: str
    """``--public-ip``: IPv4 advertised in the lease; empty = the interface address."""
    public_ipv6: str
    """``--public-ipv6``: IPv6 advertised in the lease; empty = the interface address."""


@dataclass(frozen=True)
class SubnetSettings:
    """The subnet lease and the subnet.env file."""

    subnet_file: str
    """``--subnet-file``: subnet.env path (written at start-up, read for the previous subnet)."""
    renew_margin_minutes: int
    """``--subnet-lease-renew-margin``: renew this many minutes before expiry; valid 1..1439."""
    lease_ttl_seconds: int
    """``--subnet-lease-ttl`` (pyflannel extension, not in flannel): TTL of the etcd lease in
    seconds. Default 86400 (flannel's fixed value); tests lower it to make leases expire."""


@dataclass(frozen=True)
class TrafficSettings:
    """iptables/nftables rules and blackhole route."""

    ip_masq: bool
    """``--ip-masq``: install masquerade rules; also written as ``FLANNEL_IPMASQ``."""
    ip_masq_fully_random_disable: bool
    """``--ip-masq-fully-random-disable``: no ``--random-fully`` on MASQUERADE rules."""
    iptables_resync: int
    """``--iptables-resync``: period in seconds of the rule ensure loop (and blackhole re-add)."""
    iptables_forward_rules: bool
    """``--iptables-forward-rules``: FORWARD ACCEPT rules for the overlay network (default true)."""
    ip_blackhole_route: bool
    """``--ip-blackhole-route``: keep a ``blackhole <own subnet>`` route."""


@dataclass(frozen=True)
class HealthSettings:
    """The /healthz and /readyz HTTP server."""

    healthz_ip: str
    """``--healthz-ip``: listen address, default ``0.0.0.0``."""
    healthz_port: int
    """``--healthz-port``: listen port; 0 (the default) disables the server."""


@dataclass(frozen=True)
class KubeSettings:
    """Kubernetes subnet manager (accepted for compatibility)."""

    kube_subnet_mgr: bool
    """``--kube-subnet-mgr``: use the Kubernetes API instead of etcd."""
    kube_api_url: str
    """``--kube-api-url``: API server URL; empty inside a pod."""
    kubeconfig_file: str
    """``--kubeconfig-file``: kubeconfig path; empty inside a pod."""
    kube_annotation_prefix: str
    """``--kube-annotation-prefix``: node annotation prefix, default ``flannel.alpha.coreos.com``."""
    net_config_path: str
    """``--net-config-path``: network config file, default ``/etc/kube-flannel/net-conf.json``."""
    set_node_network_unavailable: bool
    """``--set-node-network-unavailable``: patch the node condition once ready (default true)."""


@dataclass(frozen=True)
class LogSettings:
    """The klog flags flanneld keeps."""

    verbosity: int
    """``-v``: 0 = INFO and above; >= 1 also DEBUG (see :mod:`pyflannel.log`)."""
    vmodule: str
    """``-vmodule``: ``pattern=N,...`` per-file verbosity (pattern matched on the file name
    without ``.py``); validated like klog."""
    log_backtrace_at: str
    """``-log_backtrace_at``: ``file:N``; validated like klog, accepted for compatibility."""


@dataclass(frozen=True)
class Settings:
    """Everything the flanneld command line and environment configure."""

    etcd: EtcdSettings
    interface: InterfaceSettings
    subnet: SubnetSettings
    traffic: TrafficSettings
    health: HealthSettings
    kube: KubeSettings
    log: LogSettings
    version: bool
    """``--version``: print the version on stderr and exit 0 (command line only, like flannel)."""
