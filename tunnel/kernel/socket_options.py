"""Socket options and helpers the raw ESP and UDP sockets share (Linux values the socket module
may not export), and the send errors that are counted drops rather than failures."""

from __future__ import annotations

import errno
import ipaddress
import socket

DEFAULT_BUFFER = 8 * 1024 * 1024
MAX_DATAGRAM = 65535

# Linux values the socket module may not export.
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_RECVTOS = getattr(socket, "IP_RECVTOS", 13)
IP_MTU = getattr(socket, "IP_MTU", 14)
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DONT = getattr(socket, "IP_PMTUDISC_DONT", 0)  # DF clear; the kernel fragments if needed
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)  # DF set; too big is EMSGSIZE (a counted drop)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IPV6_MTU = getattr(socket, "IPV6_MTU", 24)
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)  # takes the IP_PMTUDISC_* values
IPV6_RECVTCLASS = getattr(socket, "IPV6_RECVTCLASS", 66)
IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
MAX_GSO_SEGMENTS = 64  # UDP_MAX_SEGMENTS in the kernel

# Errors that mean "this packet did not go out now", not "the socket is broken".
TRANSIENT_SEND = frozenset((errno.EAGAIN, errno.ENOBUFS, errno.ENOPROTOOPT, errno.ECONNREFUSED,
                             errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EMSGSIZE, errno.EPERM,
                             errno.EADDRNOTAVAIL, errno.EINVAL))
ANC_SPACE = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4) + socket.CMSG_SPACE(4)


def big_buffers(sock: socket.socket, size: int) -> None:
    """Use SO_*BUFFORCE (root, beyond net.core.*mem_max) and fall back to the capped options."""
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


def address_family(addr: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
