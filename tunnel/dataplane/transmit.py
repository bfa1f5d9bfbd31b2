"""Putting ESP on the wire: one transmit function per SA (shared by SAs between the same addresses).

Raw IPv4 ESP goes through the kernel-built outer header of the raw socket or, batched, through an
AF_PACKET TX ring (``tunnel.kernel.tx_ring``); ESP-in-UDP waits for the loop turn's ``flush()``
and leaves in UDP GSO batches; raw IPv6 ESP goes out at once (the kernel builds its header).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable

import structlog

from esp.outer import OuterIPv4
from ike.events import Address, ChildSaUp
from tunnel.kernel.tx_ring import RingSet

log = structlog.get_logger("tunnel")

NAT_T_PORT = 4500


class TxBatcher:
    """What one loop turn sends, sent together: ESP-in-UDP per SA with UDP GSO, raw ESP via TX rings.

    One ``sendmsg`` with UDP_SEGMENT carries a run of equal-sized datagrams, and one ``send`` on
    an AF_PACKET TX ring (``tunnel.kernel.tx_ring``) carries every frame written into it, so the
    kernel's send path runs once per batch instead of once per packet. The daemon calls
    ``flush()`` when it has handled what its sockets and TUN had to offer, before it waits again.
    ``rings`` (a ``RingSet``, or None for raw sockets only) is kept up to date from ``flush``.
    """

    def __init__(self, rings: RingSet | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._dirty: list[Callable[[], None]] = []
        self.rings = rings
        self._clock = clock
        self.shared: dict[tuple, Callable[[bytes, bytes], bool]] = {}  # transmitters by address pair

    def transmitter(self, udp, remote: tuple[str, int], local: tuple[str, int]) -> Callable[[bytes, bytes], bool]:
        queue: list[bytes] = []
        dirty = self._dirty
        try:  # the socket and its control messages are chosen once per SA
            send_batch = udp.endpoint(local, remote, True).esp_batch_sender(remote, local[0])
        except ValueError:  # no UDP socket of the peer's address family: nothing can go out
            log.warning("esp.no_udp_socket", remote=remote[0])
            send_batch = len

        def flush() -> None:
            packets = queue[:]
            queue.clear()
            send_batch(packets)

        def transmit_batched(esp: bytes, inner: bytes) -> bool:
            if not queue:
                dirty.append(flush)
            queue.append(esp)
            return True

        return transmit_batched

    def ring_transmitter(self, remote_ip: str, local_ip: str,
                         fallback: Callable[[bytes, bytes], bool]) -> Callable[[bytes, bytes], bool]:
        """Raw IPv4 ESP through the TX ring towards ``remote_ip``; ``fallback`` (the raw socket)
        takes what the ring cannot (see ``RingPath.send``)."""
        rings = self.rings
        if rings is None:
            raise ValueError("ring_transmitter needs a batcher made with TX rings")
        ring_send = rings.path_to(remote_ip, self._clock()).send
        build = OuterIPv4(socket.inet_aton(local_ip), socket.inet_aton(remote_ip), df="copy").build
        dirty, flush = self._dirty, rings.flush

        def transmit_ring(esp: bytes, inner: bytes) -> bool:
            sent = ring_send(build(len(esp), inner), esp)
            if sent is None:
                return fallback(esp, inner)
            if not dirty:
                dirty.append(flush)
            return sent

        return transmit_ring

    def flush(self) -> None:
        dirty = self._dirty
        while dirty:
            dirty.pop()()
        if self.rings is not None:
            self.rings.maintain(self._clock())


def make_transmit(up: ChildSaUp, *, raw_v4, raw_v6, udp, force_udp: bool,
                  batcher: TxBatcher | None = None) -> Callable[[bytes, bytes], bool]:
    """The function that puts one ESP packet on the wire for this SA: raw protocol 50 or UDP 4500.

    With a ``batcher``, ESP-in-UDP packets wait for its ``flush()`` (GSO), and so does raw IPv4
    ESP when the batcher has TX rings; otherwise raw ESP goes at once, one syscall per packet.
    """
    return transmit_between(up.local, up.remote, up.encap, raw_v4=raw_v4, raw_v6=raw_v6, udp=udp,
                            force_udp=force_udp, batcher=batcher)


def transmit_between(local: Address, remote: Address, encap: bool, *, raw_v4, raw_v6, udp, force_udp: bool,
                     batcher: TxBatcher | None = None) -> Callable[[bytes, bytes], bool]:
    """``make_transmit`` for outer addresses given apart: an SA that moved (MOBIKE, a new NAT mapping)."""
    if batcher is None:
        return _new_transmit(local, remote, encap, raw_v4=raw_v4, raw_v6=raw_v6, udp=udp, force_udp=force_udp,
                             batcher=None)
    # Every SA between the same two addresses shares one transmitter (one closure, one UDP queue,
    # one outer-header ID sequence): it depends on nothing else, and 10,000 SAs then cost no more.
    key = (encap or force_udp, local[0], remote[0], remote[1])
    transmit = batcher.shared.get(key)
    if transmit is None:
        transmit = batcher.shared[key] = _new_transmit(local, remote, encap, raw_v4=raw_v4, raw_v6=raw_v6, udp=udp,
                                                       force_udp=force_udp, batcher=batcher)
    return transmit


def _new_transmit(local_addr: Address, remote_addr: Address, encap: bool, *, raw_v4, raw_v6, udp, force_udp: bool,
                  batcher: TxBatcher | None) -> Callable[[bytes, bytes], bool]:
    local_ip, remote_ip = local_addr[0], remote_addr[0]
    if encap or force_udp:
        remote = (remote_ip, remote_addr[1] if remote_addr[1] != 500 else NAT_T_PORT)
        local = (local_ip, NAT_T_PORT)
        if batcher is not None:
            return batcher.transmitter(udp, remote, local)
        send_esp = udp.send_esp

        def transmit_udp(esp: bytes, inner: bytes) -> bool:
            return send_esp(esp, remote, local)

        return transmit_udp
    if ipaddress.ip_address(remote_ip).version == 4:
        transmit = raw_v4.tunnel_sender(remote_ip, local_ip)  # the kernel builds the outer header
        if batcher is not None and batcher.rings is not None:
            return batcher.ring_transmitter(remote_ip, local_ip, transmit)
        return transmit
    return raw_v6.tunnel_sender(remote_ip)


__all__ = ["TxBatcher", "make_transmit", "transmit_between"]
