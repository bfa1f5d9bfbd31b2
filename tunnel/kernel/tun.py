"""The gateway's TUN interface: opened through /dev/net/tun, configured with pyroute2.

The device is non-persistent, so the kernel deletes it (and every route through it) when the
file descriptor closes -- also when the process dies. Reads are non-blocking and batched: the
daemon calls ``read_batch`` when the fd is readable and gets up to ``max_packets`` packets
without a poll per packet (one zero-timeout poll after the first tells a lone packet from a
burst, ``tunnel.kernel.drain``). Offloads are switched off (TUNSETOFFLOAD 0), so the kernel never hands
us GSO super-packets: splitting them in Python costs more than it saves.

With ``vnet_hdr=True`` (IFF_VNET_HDR) every packet in either direction carries a 10-byte
virtio-net header. Reads strip it; ``write`` prepends an empty one; ``write_gso`` hands the
kernel one TCP super-packet (GSO + checksum offload) built by ``tunnel.dataplane.gro``, which the stack
then treats like a packet its own GRO merged.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import struct
from collections.abc import Callable, Iterable

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tunnel.kernel.drain import pending_probe

__all__ = ["TunDevice", "TunError"]

log = structlog.get_logger(__name__)

_TUNSETIFF = 0x400454CA
_TUNSETOFFLOAD = 0x400454D0
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
VNET_HDR_LEN = 10  # struct virtio_net_hdr without num_buffers (TUNSETVNETHDRSZ left at 10)
_EMPTY_VNET_HDR = bytes(VNET_HDR_LEN)
_IFNAMSIZ = 16
_IFA_F_NODAD = 0x02  # no duplicate address detection: the address is usable at once
_MAX_PACKET = 65535


class TunError(OSError):
    """The TUN device could not be created or configured."""


class TunDevice:
    """An open TUN interface in the current network namespace.

    Attributes: ``fd`` (non-blocking, for selectors), ``name``, ``ifindex``, ``mtu``,
    ``vnet_hdr`` and ``counters`` (``read``, ``read_batches``: wake-ups that read, each ending in
    a read that finds the queue empty unless it took the maximum, ``read_dropped``, ``written``, ``write_dropped``,
    ``gso_written``: super-packets, ``gso_segments``: the packets they carried, ``gso_refused``).
    ``read_batch(max_packets=64)`` and ``write(packet)`` are chosen once, by ``vnet_hdr``.
    """

    read_batch: Callable[..., list[bytes]]
    write: Callable[[bytes], bool]

    def __init__(self, fd: int, name: str, ifindex: int, mtu: int, vnet_hdr: bool = False) -> None:
        self.fd = fd
        self.name = name
        self.ifindex = ifindex
        self.mtu = mtu
        self.vnet_hdr = vnet_hdr
        self.counters = {"read": 0, "read_batches": 0, "read_dropped": 0, "written": 0, "write_dropped": 0,
                         "gso_written": 0,
                         "gso_segments": 0, "gso_refused": 0}
        self._closed = False
        self._more = pending_probe(fd)
        self.read_batch = self._read_batch_vnet if vnet_hdr else self._read_batch_plain
        self.write = self._write_vnet if vnet_hdr else self._write_plain

    @classmethod
    def create(cls, name: str, mtu: int, addresses: Iterable[str] = (), txqueuelen: int = 4096,
               accept_local: bool = True, vnet_hdr: bool = False) -> TunDevice:
        """Create TUN ``name`` (IFF_TUN | IFF_NO_PI), set MTU and queue length, add addresses, bring it up.

        ``addresses`` are "address/prefix" strings, IPv4 or IPv6 (IPv6 ones skip DAD).
        ``accept_local`` sets net.ipv4.conf.NAME.accept_local, without which Linux drops as
        martian the ICMP errors we write with one of the host's own addresses as source.
        ``vnet_hdr`` adds IFF_VNET_HDR, needed for ``write_gso``.
        """
        encoded = name.encode()
        if not encoded or len(encoded) >= _IFNAMSIZ:
            raise TunError(errno.EINVAL, f"interface name {name!r} must be 1..15 bytes")
        parsed = [ipaddress.ip_interface(a) for a in addresses]
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise TunError(exc.errno, f"cannot open /dev/net/tun: {exc.strerror}") from None
        try:
            flags = _IFF_TUN | _IFF_NO_PI | (_IFF_VNET_HDR if vnet_hdr else 0)
            fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", encoded, flags))
            fcntl.ioctl(fd, _TUNSETOFFLOAD, 0)
            with IPRoute() as ipr:
                ifindex = ipr.link_lookup(ifname=name)[0]
                ipr.link("set", index=ifindex, mtu=mtu, txqlen=txqueuelen)
                for iface in parsed:
                    extra = {"flags": _IFA_F_NODAD} if iface.version == 6 else {}
                    ipr.addr("add", index=ifindex, address=str(iface.ip), prefixlen=iface.network.prefixlen, **extra)
                ipr.link("set", index=ifindex, state="up")
            if accept_local:
                with open(f"/proc/sys/net/ipv4/conf/{name}/accept_local", "w") as knob:
                    knob.write("1")
        except (OSError, NetlinkError, IndexError) as exc:
            os.close(fd)
            raise TunError(getattr(exc, "errno", None) or errno.EIO, f"cannot set up TUN {name!r}: {exc}") from None
        log.info("tun.created", ifname=name, mtu=mtu, addresses=[str(a) for a in parsed], txqueuelen=txqueuelen,
                 vnet_hdr=vnet_hdr)
        return cls(fd, name, ifindex, mtu, vnet_hdr)

    def fileno(self) -> int:
        return self.fd

    def _read_batch_plain(self, max_packets: int = 64) -> list[bytes]:
        """Up to ``max_packets`` packets, stopping early when the queue is empty (never blocks)."""
        packets = []
        read, fd, more = os.read, self.fd, self._more
        try:
            for i in range(max_packets):
                if i == 1 and not more(0):  # a lone packet: no failing read (tunnel.kernel.drain)
                    break
                packets.append(read(fd, _MAX_PACKET))
        except BlockingIOError:
            pass
        counters = self.counters
        counters["read"] += len(packets)
        counters["read_batches"] += 1
        return packets

    def _read_batch_vnet(self, max_packets: int = 64) -> list[bytes]:
        """``read_batch`` with IFF_VNET_HDR: the header is stripped; a GSO packet (never sent with
        offloads off) would be a counted drop."""
        packets = []
        read, fd, more = os.read, self.fd, self._more
        dropped = 0
        try:
            for i in range(max_packets):
                if i == 1 and not more(0):  # a lone packet: no failing read (tunnel.kernel.drain)
                    break
                data = read(fd, _MAX_PACKET + VNET_HDR_LEN)
                if data[1] or len(data) <= VNET_HDR_LEN:  # gso_type set, or nothing after the header
                    dropped += 1
                else:
                    packets.append(data[VNET_HDR_LEN:])
        except BlockingIOError:
            pass
        counters = self.counters
        counters["read"] += len(packets)
        counters["read_batches"] += 1
        if dropped:
            counters["read_dropped"] += dropped
        return packets

    def _write_vnet(self, packet: bytes) -> bool:
        """``write`` with IFF_VNET_HDR: an empty header (no offload) in front of the packet."""
        try:
            os.writev(self.fd, (_EMPTY_VNET_HDR, packet))
        except OSError:
            self.counters["write_dropped"] += 1
            return False
        self.counters["written"] += 1
        return True

    def write_gso(self, parts: list, segments: int) -> bool:
        """Write one super-packet: ``parts`` = [virtio-net header, IP+TCP header, payloads...].

        ``segments`` is how many received packets it carries (for the counters). False (counted
        as ``gso_refused``) leaves it to the caller to write the packets one by one.
        """
        try:
            os.writev(self.fd, parts)
        except OSError:  # EINVAL: a header the kernel's virtio_net_hdr_to_skb rejects; EAGAIN
            self.counters["gso_refused"] += 1
            return False
        self.counters["written"] += segments
        self.counters["gso_written"] += 1
        self.counters["gso_segments"] += segments
        return True

    def _write_plain(self, packet: bytes) -> bool:
        """Hand one IP packet to the kernel; a full queue or a packet it rejects is a counted drop."""
        try:
            os.write(self.fd, packet)
        except OSError:  # EAGAIN (queue full), EINVAL (not an IP packet), EIO (device down)
            self.counters["write_dropped"] += 1
            return False
        self.counters["written"] += 1
        return True

    def set_mtu(self, mtu: int) -> None:
        """Change the interface MTU (e.g. after a path MTU change)."""
        try:
            with IPRoute() as ipr:
                ipr.link("set", index=self.ifindex, mtu=mtu)
        except NetlinkError as exc:
            raise TunError(exc.code, f"cannot set MTU {mtu} on {self.name}: {exc}") from None
        self.mtu = mtu
        log.info("tun.mtu", ifname=self.name, mtu=mtu)

    def close(self) -> None:
        """Close the fd, which deletes the interface and its routes; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        os.close(self.fd)
        log.info("tun.closed", ifname=self.name, **self.counters)

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TunDevice(name={self.name!r}, fd={self.fd}, mtu={self.mtu}, closed={self._closed})"
