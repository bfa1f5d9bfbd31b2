"""Raw ESP out through an AF_PACKET TX ring: many packets per syscall instead of one.

A raw IP socket costs one ``sendto`` per ESP packet (about 3.5 us here, half of the encrypting
gateway's time). Linux has no GSO for raw IP, but a packet socket with a ``PACKET_TX_RING``
(packet_mmap) takes frames written into shared memory and sends every frame marked
``TP_STATUS_SEND_REQUEST`` with one ``send()``. So the gateway writes Ethernet + outer IPv4 +
ESP into the ring as it encrypts, and flushes once per loop turn (or when a batch is full).

What it bypasses, by design and documented: the IP output path of the gateway's own namespace
(netfilter OUTPUT/POSTROUTING, the qdisc with ``PACKET_QDISC_BYPASS``). Only IPv4 outer headers
over an Ethernet-type interface go this way; everything else keeps the raw socket.

The Ethernet header needs the next hop's MAC, which the kernel resolves for its own traffic.
``resolve_l2`` reads the route and neighbour entry (netlink); a peer whose next hop has no
usable neighbour entry keeps the raw socket until a refresh finds one. Because the ring's frames
never pass the kernel's neighbour code, its entry would age to STALE and never be re-checked:
``RingPath.refresh`` (every few seconds) sends the next packet through the raw socket whenever
the entry is not REACHABLE, which makes the kernel probe it again (and pick up a changed MAC).
"""

from __future__ import annotations

import errno
import mmap
import socket
import struct
from dataclasses import dataclass
from collections.abc import Callable

import structlog

__all__ = ["PacketTxRing", "L2Next", "resolve_l2", "RingPath", "RingSet"]

log = structlog.get_logger(__name__)

# <linux/if_packet.h>
_SOL_PACKET = 263
_PACKET_VERSION = 10
_PACKET_TX_RING = 13
_PACKET_LOSS = 14
_PACKET_QDISC_BYPASS = 20
_TPACKET_V2 = 1
_TP_STATUS_AVAILABLE = 0
_TP_STATUS_SEND_REQUEST = 1
_TPACKET2_HDR = 32  # sizeof(struct tpacket2_hdr), already TPACKET_ALIGNed
# Without PACKET_TX_HAS_OFF a V2 TX frame's data starts at TPACKET2_HDRLEN - sizeof(sockaddr_ll).
_DATA_OFFSET = _TPACKET2_HDR
_ETHERTYPE_IPV4 = b"\x08\x00"
_ARPHRD_ETHER = 1
_RTN_UNICAST = 1
_CONFIRMED = 0x02 | 0x40 | 0x80  # NUD_REACHABLE, NUD_NOARP, NUD_PERMANENT
_USABLE = _CONFIRMED | 0x04 | 0x08 | 0x10  # also STALE, DELAY, PROBE: a MAC is known
_U32 = struct.Struct("<I")  # tpacket2_hdr fields are host-endian (x86, arm: little)
_FLUSH_AT = 64  # frames: send the batch without waiting for the end of the loop turn


class PacketTxRing:
    """An AF_PACKET socket bound to one interface with a memory-mapped TX ring (TPACKET_V2).

    ``put(parts)`` copies one frame (Ethernet header first) into the next free slot and marks it
    for sending; ``flush()`` hands every marked slot to the kernel with one ``send()``. A slot the
    kernel has not released yet means the ring is full: ``put`` flushes once and, if that does
    not free it, drops the frame (``ring_full``). Counters: ``frames``, ``flushes``, ``ring_full``,
    ``send_errors``, ``too_big``.
    """

    def __init__(self, ifname: str, *, frames: int = 256, frame_size: int = 2048,
                 qdisc_bypass: bool = False) -> None:
        page = mmap.PAGESIZE
        if frame_size % 16 or frame_size <= _DATA_OFFSET or page % frame_size and frame_size % page:
            raise ValueError(f"frame_size {frame_size} must be a multiple of 16 that divides "
                             f"or is a multiple of {page}")
        block = max(page, frame_size)
        per_block = block // frame_size
        blocks = max(1, -(-frames // per_block))
        self.ifname = ifname
        self.frame_size = frame_size
        self.frames = blocks * per_block
        self.capacity = frame_size - _DATA_OFFSET  # the largest frame, Ethernet header included
        self.counters = {"frames": 0, "flushes": 0, "ring_full": 0, "send_errors": 0, "too_big": 0}
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)  # 0: receives nothing
        try:
            self._sock.setsockopt(_SOL_PACKET, _PACKET_VERSION, _TPACKET_V2)
            self._sock.setsockopt(_SOL_PACKET, _PACKET_LOSS, 1)  # a malformed frame is skipped, not retried forever
            if qdisc_bypass:
                self._sock.setsockopt(_SOL_PACKET, _PACKET_QDISC_BYPASS, 1)
            ring_request = struct.pack("IIII", block, blocks, frame_size, self.frames)
            self._sock.setsockopt(_SOL_PACKET, _PACKET_TX_RING, ring_request)
            self._sock.bind((ifname, 0))
            self._ring = mmap.mmap(self._sock.fileno(), block * blocks, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            self._sock.close()
            raise
        self.fd = self._sock.fileno()
        self.dead = False  # the interface it is bound to is gone: RingSet makes a new one
        self._next = 0  # index of the slot the next frame goes to (the kernel sends in this order)
        self._pending = 0  # frames marked since the last flush
        self._send = self._sock.send
        self.put = self._make_put()

    def _make_put(self) -> Callable[[bytes, bytes, bytes], bool]:
        ring, frame_size, frames, capacity = self._ring, self.frame_size, self.frames, self.capacity
        counters, pack_status = self.counters, _U32.pack_into

        def put(link: bytes, network: bytes, payload: bytes) -> bool:
            """Queue one frame made of three parts (Ethernet header, outer IP header, ESP)."""
            n_link, n_net = len(link), len(network)
            length = n_link + n_net + len(payload)
            if length > capacity:
                counters["too_big"] += 1
                return False
            slot = self._next
            base = slot * frame_size
            if ring[base]:  # the kernel still owns the slot: SEND_REQUEST (unsent) or SENDING
                self.flush()
                if ring[base]:
                    counters["ring_full"] += 1
                    return False
            data = base + _DATA_OFFSET
            ring[data:data + n_link] = link
            data += n_link
            ring[data:data + n_net] = network
            data += n_net
            ring[data:data + length - n_link - n_net] = payload
            pack_status(ring, base + 4, length)  # tp_len
            pack_status(ring, base, _TP_STATUS_SEND_REQUEST)  # last: the slot is complete
            self._next = slot + 1 if slot + 1 < frames else 0
            self._pending += 1
            counters["frames"] += 1
            if self._pending >= _FLUSH_AT:
                self.flush()
            return True

        return put

    def flush(self) -> None:
        """Send every marked slot (one syscall); never blocks."""
        if not self._pending:
            return
        self._pending = 0
        self.counters["flushes"] += 1
        try:
            self._send(b"", socket.MSG_DONTWAIT)
        except OSError as exc:  # ENOBUFS, EAGAIN, ENETDOWN: the slots stay marked for the next flush
            self.counters["send_errors"] += 1
            if exc.errno in (errno.ENXIO, errno.ENODEV):  # the interface was deleted (maybe re-created)
                if not self.dead:
                    log.warning("packet_tx.interface_gone", ifname=self.ifname)
                self.dead = True
            elif exc.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.ENETDOWN, errno.EMSGSIZE):
                log.warning("packet_tx.send_failed", ifname=self.ifname, error=exc.strerror)

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._ring.close()
            self._sock.close()

    def __repr__(self) -> str:
        return f"PacketTxRing(ifname={self.ifname!r}, frames={self.frames}, frame_size={self.frame_size})"


@dataclass(frozen=True)
class L2Next:
    """How a packet to ``peer`` leaves: interface, next hop, MTU and the Ethernet header to use."""
    peer: str
    ifindex: int
    ifname: str
    nexthop: str
    mtu: int
    link_header: bytes  # destination MAC, source MAC, EtherType IPv4
    reachable: bool  # the neighbour entry is REACHABLE/PERMANENT/NOARP (confirmed recently)


def resolve_l2(peer: str, ipr) -> L2Next | None:
    """The route and neighbour entry towards IPv4 ``peer`` (``ipr``: a pyroute2 IPRoute), or None
    when a ring cannot carry it: no route, a route that is not plain unicast over an Ethernet-type
    interface (tun, wireguard, loopback, multipath), or a next hop whose MAC is not known yet."""
    from pyroute2.netlink.exceptions import NetlinkError

    if ":" in peer:
        return None
    try:
        routes = ipr.route("get", dst=peer)
        if not routes:
            return None
        route = routes[0]
        oif = route.get_attr("RTA_OIF")
        if oif is None or route["type"] != _RTN_UNICAST or route.get_attr("RTA_MULTIPATH") is not None:
            return None
        nexthop = route.get_attr("RTA_GATEWAY") or peer
        (link,) = ipr.get_links(oif)
        src_mac = link.get_attr("IFLA_ADDRESS")
        if link["ifi_type"] != _ARPHRD_ETHER or not src_mac:
            return None
        for entry in ipr.get_neighbours(ifindex=oif, dst=nexthop):
            dst_mac, state = entry.get_attr("NDA_LLADDR"), entry["state"]
            if dst_mac and state & _USABLE:
                header = _mac(dst_mac) + _mac(src_mac) + _ETHERTYPE_IPV4
                return L2Next(peer, oif, link.get_attr("IFLA_IFNAME"), nexthop, link.get_attr("IFLA_MTU") or 1500,
                              header, bool(state & _CONFIRMED))
        return None
    except (NetlinkError, OSError, ValueError):
        return None


def _mac(text: str) -> bytes:
    raw = bytes.fromhex(text.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"not an Ethernet address: {text}")
    return raw


class RingPath:
    """The ring transmitter towards one peer, shared by every SA to that peer.

    ``send(network_header, esp)`` queues a frame and returns True/False (queued / a counted ring
    drop), or returns None when the caller must use its raw socket instead: no L2 information
    (yet), a packet larger than the interface MTU (the kernel fragments it or refuses it), or a
    neighbour probe due (see the module docstring).
    """

    __slots__ = ("peer", "l2", "used", "next_check", "_put", "_link", "_mtu", "_probe")

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.l2: L2Next | None = None
        self.used = True  # sent through since the last refresh: worth keeping up to date
        self.next_check = 0.0
        self._put: Callable[[bytes, bytes, bytes], bool] | None = None
        self._link = b""
        self._mtu = 0
        self._probe = False

    def attach(self, l2: L2Next | None, ring: PacketTxRing | None) -> None:
        self.l2 = l2
        if l2 is None or ring is None:
            self._put = None
            return
        self._put, self._link, self._mtu = ring.put, l2.link_header, l2.mtu
        self._probe = not l2.reachable  # one packet through the kernel makes it re-validate the entry

    def send(self, network: bytes, esp: bytes) -> bool | None:
        self.used = True
        put = self._put
        if put is None or self._probe or len(network) + len(esp) > self._mtu:
            self._probe = False
            return None
        return put(self._link, network, esp)

    def idle(self) -> None:
        """Unused since the last check: not worth a netlink round trip now, but its neighbour entry
        may have changed meanwhile, so the first packet after the pause goes through the kernel."""
        self._probe = True


class RingSet:
    """The TX rings of a gateway: one per outgoing interface, one ``RingPath`` per peer.

    ``maintain(now)`` (called once per loop turn, cheap unless a check is due) re-resolves the
    paths in use: every ``refresh`` seconds once resolved, every ``retry`` seconds until then; a
    path unused since its last check waits until it is used again (``RingPath.idle``).
    """

    def __init__(self, frames: int = 256, *, refresh: float = 5.0, retry: float = 0.5) -> None:
        self._frames = frames
        self._refresh, self._retry = refresh, retry
        self._rings: dict[str, PacketTxRing | None] = {}
        self._paths: dict[str, RingPath] = {}
        self._ipr = None
        self._next_check = 0.0

    def path_to(self, peer: str, now: float) -> RingPath:
        path = self._paths.get(peer)
        if path is None:
            path = self._paths[peer] = RingPath(peer)
            self._resolve(path, now)
        return path

    def _ring_for(self, ifname: str) -> PacketTxRing | None:
        ring = self._rings.get(ifname)
        if ring is not None and ring.dead:
            ring.close()
            del self._rings[ifname]
        if ifname not in self._rings:
            try:
                self._rings[ifname] = PacketTxRing(ifname, frames=self._frames)
            except OSError as exc:  # no CAP_NET_RAW, an interface that refuses packet sockets
                log.warning("packet_tx.unavailable", ifname=ifname, error=exc.strerror)
                self._rings[ifname] = None
        return self._rings[ifname]

    def _resolve(self, path: RingPath, now: float) -> None:
        if self._ipr is None:
            from pyroute2 import IPRoute  # netlink only when (re)resolving, never per packet
            self._ipr = IPRoute()
        before = path.l2
        l2 = resolve_l2(path.peer, self._ipr)
        path.attach(l2, self._ring_for(l2.ifname) if l2 is not None else None)
        path.used = False
        path.next_check = now + (self._refresh if l2 is not None else self._retry)
        if (l2 is None) != (before is None) or (l2 and before and l2.link_header != before.link_header):
            log.info("packet_tx.path", peer=path.peer, via=l2.ifname if l2 else None,
                     nexthop=l2.nexthop if l2 else None, ring=path._put is not None)

    def maintain(self, now: float) -> None:
        if now < self._next_check:
            return
        self._next_check = now + min(self._retry, self._refresh)
        for path in self._paths.values():
            if now >= path.next_check and path.used:
                self._resolve(path, now)  # SAs' transmitters hold the path: it is kept, never replaced
            elif now >= path.next_check and path.l2 is not None and not path._probe:
                path.idle()

    def flush(self) -> None:
        for ring in self._rings.values():
            if ring is not None:
                ring.flush()

    def counters(self) -> dict[str, int]:
        total = {"frames": 0, "flushes": 0, "ring_full": 0, "send_errors": 0, "too_big": 0}
        for ring in self._rings.values():
            if ring is not None:
                for key, value in ring.counters.items():
                    total[key] += value
        total["paths"] = sum(1 for p in self._paths.values() if p._put is not None)
        return total

    def close(self) -> None:
        for ring in self._rings.values():
            if ring is not None:
                ring.close()
        self._rings.clear()
        self._paths.clear()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
