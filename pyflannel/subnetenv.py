"""subnet.env: rendered and written atomically at start-up, read back as the "previous subnet".

File format (flannel ``WriteSubnetFile``), in this order::

    FLANNEL_NETWORK=10.5.0.0/16           only with IPv4
    FLANNEL_SUBNET=10.5.72.1/24           first address of the lease, lease prefix
    FLANNEL_IPV6_NETWORK=fd00:10::/56     only with IPv6
    FLANNEL_IPV6_SUBNET=fd00:10:0:5::1/64
    FLANNEL_MTU=1450
    FLANNEL_IPMASQ=false
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubnetEnv:
    """Values of one subnet.env; a family is written only when both its network and subnet are set."""

    network: IPv4Network | None
    """Whole IPv4 overlay network (``FLANNEL_NETWORK``); None when IPv4 is disabled."""
    subnet: IPv4Interface | None
    """This host's first address with the lease prefix, e.g. ``10.5.72.1/24`` (``FLANNEL_SUBNET``)."""
    ipv6_network: IPv6Network | None
    """Whole IPv6 overlay network (``FLANNEL_IPV6_NETWORK``); None when IPv6 is disabled."""
    ipv6_subnet: IPv6Interface | None
    """First IPv6 address of the lease with its prefix (``FLANNEL_IPV6_SUBNET``)."""
    mtu: int
    """MTU of the backend device (``FLANNEL_MTU``)."""
    ipmasq: bool
    """Value of ``--ip-masq`` (``FLANNEL_IPMASQ``), written ``true``/``false``."""


def first_address(subnet: IPv4Network) -> IPv4Interface:
    """Lease subnet -> the value flannel writes as ``FLANNEL_SUBNET`` (network address + 1)."""
    return IPv4Interface((subnet.network_address + 1, subnet.prefixlen))


def first_address6(subnet: IPv6Network) -> IPv6Interface:
    """IPv6 lease subnet -> the value flannel writes as ``FLANNEL_IPV6_SUBNET``."""
    return IPv6Interface((subnet.network_address + 1, subnet.prefixlen))


def render(env: SubnetEnv) -> str:
    """The file content, byte for byte what flannel writes. ValueError if a family is half set."""
    if (env.network is None) != (env.subnet is None):
        raise ValueError("FLANNEL_NETWORK and FLANNEL_SUBNET must be given together")
    if (env.ipv6_network is None) != (env.ipv6_subnet is None):
        raise ValueError("FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET must be given together")
    out = []
    if env.network is not None:
        out.append(f"FLANNEL_NETWORK={env.network}\nFLANNEL_SUBNET={env.subnet}\n")
    if env.ipv6_network is not None:
        out.append(f"FLANNEL_IPV6_NETWORK={env.ipv6_network}\nFLANNEL_IPV6_SUBNET={env.ipv6_subnet}\n")
    out.append(f"FLANNEL_MTU={env.mtu}\nFLANNEL_IPMASQ={'true' if env.ipmasq else 'false'}\n")
    return "".join(out)


def _makedirs(path: str) -> None:
    """``mkdir -p`` with mode 0755 on every directory created here, whatever the umask."""
    if not path or os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _makedirs(parent)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return
    os.chmod(path, 0o755)


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, rename (like renameio).

    The file gets ``mode`` regardless of the umask; readers see either the old or the new content.
    """
    directory = os.path.dirname(os.path.abspath(path))
    _makedirs(directory)
    import tempfile  # here: only when writing (start-up time)

    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def write_subnet_env(path: str, env: SubnetEnv) -> None:
    """Atomically write subnet.env (mode 0644, parent directories created 0755). Raises OSError."""
    write_atomic(path, render(env).encode())


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    # unquoted: a " #" starts a comment
    hash_at = value.find(" #")
    if hash_at >= 0:
        value = value[:hash_at]
    return value.strip()


def read_subnet_env(path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines of an env file (``export`` prefix, quotes and comments handled).

    Lines that are not assignments are skipped. Raises OSError if the file cannot be read.
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key or not (key.replace("_", "").replace(".", "").isalnum() and key.isascii()):
            continue
        out[key] = _unquote(value)
    return out


def _parse_cidr(value: str, version: int) -> IPv4Network | IPv6Network | None:
    """Go ``net.ParseCIDR`` of ``addr/len`` -> the masked network of the wanted family, else None."""
    addr, sep, plen = value.partition("/")
    if not sep or not plen.isdigit() or not plen.isascii() or "%" in addr:
        return None
    try:
        iface = ipaddress.ip_interface(f"{addr}/{int(plen)}")
    except ValueError:
        return None
    if iface.version != version:
        return None
    return iface.network


def _previous(values: dict[str, str], key: str, version: int, path: str) -> IPv4Network | IPv6Network | None:
    raw = values.get(key)
    if raw is None:
        log.info("no subnet found for key: %s in file: %s", key, path)
        return None
    nets = []
    for part in raw.split(","):
        net = _parse_cidr(part, version)
        if net is None:
            log.error(
                "Couldn't parse previous %s from subnet file at %s: invalid CIDR address: %s", key, path, part
            )
            continue
        nets.append(net)
    if len(nets) > 1:
        log.error("error reading subnet: more than 1 entry found for key: %s in file %s", key, path)
        return None
    if not nets:
        return None
    if nets[0].prefixlen == 0:  # flannel's "empty" subnet
        return None
    return nets[0]


def read_previous_subnets(path: str) -> tuple[IPv4Network | None, IPv6Network | None]:
    """``FLANNEL_SUBNET`` / ``FLANNEL_IPV6_SUBNET`` of an existing subnet.env as lease subnets.

    ``10.5.72.1/24`` -> ``10.5.72.0/24``. A missing or unreadable file, a missing key, an unparsable
    value or several comma-separated values give None for that family. Never raises.
    """
    try:
        values = read_subnet_env(path)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as e:
        log.error("Couldn't fetch previous subnets from subnet file at %s: %s", path, e)
        return None, None
    v4 = _previous(values, "FLANNEL_SUBNET", 4, path)
    v6 = _previous(values, "FLANNEL_IPV6_SUBNET", 6, path)
    assert v4 is None or isinstance(v4, IPv4Network)
    assert v6 is None or isinstance(v6, IPv6Network)
    return v4, v6
