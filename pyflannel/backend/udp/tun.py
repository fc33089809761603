"""Open a TUN device with plain ioctls (``/dev/net/tun``, TUNSETIFF), optionally with offloads.

With ``offload=True`` the device carries a virtio-net header before every packet (IFF_VNET_HDR) and
advertises checksum offload and TCPv4 segmentation offload (TUNSETOFFLOAD TUN_F_CSUM|TUN_F_TSO4):
the kernel then hands us TCP "super-packets" of up to 64 KB with the checksum left for us, and
accepts such super-packets from us. Without it, the device is flannel's: IFF_TUN|IFF_NO_PI, one bare
IPv4 packet per read or write.
"""

from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
IFNAMSIZ = 16


class TunError(OSError):
    pass


def open_tun(name: str = "flannel%d", offload: bool = False) -> tuple[int, str]:
    """Create (or attach to) TUN device ``name``; returns (non-blocking fd, actual device name).

    ``%d`` in ``name`` lets the kernel pick the first free number, as flannel's ``flannel%d``.
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
        ifr = struct.pack("16sH22x", name.encode(), flags)
        try:
            res = fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as e:
            raise TunError(e.errno, f"TUNSETIFF {name}: {e.strerror}") from None
        actual = res[:IFNAMSIZ].rstrip(b"\0").decode()
        if offload:
            try:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", 10))
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
            except OSError as e:
                raise TunError(e.errno, f"TUNSETOFFLOAD {actual}: {e.strerror}") from None
        return fd, actual
    except BaseException:
        os.close(fd)
        raise
