"""One vici client connection as seen by the server, sans-I/O.

The daemon feeds the bytes it reads (:meth:`ViciSession.receive_data`), takes what to do from
:meth:`~ViciSession.next_event`, answers with :meth:`~ViciSession.respond` (or
:meth:`~ViciSession.respond_unknown`), raises events with :meth:`~ViciSession.emit_event`, and
writes :meth:`~ViciSession.pending_output`, reporting what the socket took with
:meth:`~ViciSession.output_sent`. The session holds no socket, clock or thread.

Ordering follows strongSwan's vici plugin: a connection's packets are handled one after another,
and vici has no request ids, so while a command is active (requested, not yet answered) the
packets behind it wait. Event (un)registrations are answered here (EVENT_CONFIRM for the names in
``events``, EVENT_UNKNOWN otherwise) and reported so the daemon can log them. A streamed command
such as ``list-sas`` is: the request, any number of :meth:`emit_event` calls (``list-sa``; they
reach the client only if it registered that name, as swanctl does first), then :meth:`respond`.
Events may also be raised while no command is active (``ike-updown``, ``log``...).

Bad input closes only this session, with a reason (:class:`SessionClosed`): a broken packet (see
:class:`~tunnel.ops.vici.codec.ViciError`), a packet only a server may send, too many packets
queued behind an active command, or a client that stops reading while output piles up beyond
``output_limit`` (its output is dropped rather than growing the daemon's memory).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container
from dataclasses import dataclass

from .codec import (
    VICI_MESSAGE_SIZE_MAX,
    EncodableMessage,
    Message,
    Packet,
    PacketType,
    StreamDecoder,
    ViciError,
    encode_packet,
    frame,
)

DEFAULT_OUTPUT_LIMIT = 4 * 1024 * 1024  # bytes written but not yet taken by the client's socket
DEFAULT_MAX_QUEUED = 32  # packets waiting behind an active command; swanctl never has more than one


@dataclass(frozen=True)
class CommandRequest:
    """The client asks for ``command``; answer with respond() or respond_unknown()."""

    command: str
    message: Message


@dataclass(frozen=True)
class EventSubscription:
    """The client (un)registered ``event``; already answered (``known``: confirmed)."""

    event: str
    registered: bool
    known: bool


@dataclass(frozen=True)
class SessionClosed:
    """The session is over: close the socket. ``reason`` is a short tag for logs and counters."""

    reason: str
    detail: str


SessionEvent = CommandRequest | EventSubscription | SessionClosed


class ViciSession:
    def __init__(self, events: Container[str] = frozenset(), *, commands: Container[str] | None = None,
                 output_limit: int = DEFAULT_OUTPUT_LIMIT, max_queued: int = DEFAULT_MAX_QUEUED,
                 max_packet_size: int = VICI_MESSAGE_SIZE_MAX):
        """``events``: the event names a client may register for. ``commands``: if given, any
        other command is answered CMD_UNKNOWN here and never reported."""
        self.events = events
        self.commands = commands
        self.output_limit = output_limit
        self.max_queued = max_queued
        self.registered: set[str] = set()
        self.active_command: str | None = None
        self.close_reason: SessionClosed | None = None
        self._decoder = StreamDecoder(max_packet_size)
        self._queue: deque[Packet] = deque()
        self._output = bytearray()
        self._close_reported = False

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes read from the client, in any pieces."""
        if self.closed:
            return
        try:
            packets = self._decoder.feed(data)
        except ViciError as exc:
            self.close(exc.reason, exc.detail)
            return
        for packet in packets:
            if packet.type not in (PacketType.CMD_REQUEST, PacketType.EVENT_REGISTER, PacketType.EVENT_UNREGISTER):
                self.close("unexpected-packet", f"a client sent {packet.type.name}")
                return
            self._queue.append(packet)
        if len(self._queue) > self.max_queued:
            self.close("too-many-requests", f"more than {self.max_queued} packets queued behind a command")

    def next_event(self) -> SessionEvent | None:
        """The next thing the daemon must act on, or None until more input or a respond()."""
        if self.closed:
            if self._close_reported:
                return None
            self._close_reported = True
            return self.close_reason
        while self.active_command is None and self._queue:
            packet = self._queue.popleft()
            assert packet.name is not None  # the three types accepted above are named
            if packet.type == PacketType.CMD_REQUEST:
                if self.commands is not None and packet.name not in self.commands:
                    self._send(PacketType.CMD_UNKNOWN)
                    continue
                self.active_command = packet.name
                return CommandRequest(packet.name, packet.message)
            return self._subscription(packet.name, packet.type == PacketType.EVENT_REGISTER)
        return None

    def _subscription(self, event: str, register: bool) -> EventSubscription:
        known = event in self.events
        if known:
            if register:
                self.registered.add(event)
            else:
                self.registered.discard(event)
        self._send(PacketType.EVENT_CONFIRM if known else PacketType.EVENT_UNKNOWN)
        return EventSubscription(event, register, known)

    # ------------------------------------------------------------------ output

    def respond(self, message: EncodableMessage) -> None:
        """The active command's CMD_RESPONSE; the next queued packet may then be handled."""
        self._finish(PacketType.CMD_RESPONSE, message)

    def respond_unknown(self) -> None:
        """Answer the active command with CMD_UNKNOWN (the daemon has no such command)."""
        self._finish(PacketType.CMD_UNKNOWN, None)

    def _finish(self, packet_type: PacketType, message: EncodableMessage | None) -> None:
        if self.closed:
            return  # the client went away while the command ran
        if self.active_command is None:
            raise RuntimeError("no vici command is waiting for a response")
        self.active_command = None
        self._send(packet_type, message=message)

    def emit_event(self, event: str, message: EncodableMessage) -> bool:
        """Raise an event to this client if it registered for it; False if it did not."""
        if self.closed or event not in self.registered:
            return False
        self._send(PacketType.EVENT, event, message)
        return not self.closed

    def pending_output(self) -> bytes:
        """Bytes to write to the client's socket."""
        return bytes(self._output)

    def pending_size(self) -> int:
        """How many bytes wait for the client (without copying them)."""
        return len(self._output)

    def output_sent(self, count: int) -> None:
        """The socket took the first ``count`` bytes of pending_output()."""
        del self._output[:count]

    def close(self, reason: str, detail: str) -> None:
        """End the session (also for the daemon's own reasons: EOF, shutdown); output is dropped."""
        if self.closed:
            return
        self.close_reason = SessionClosed(reason, detail)
        self._output.clear()
        self._queue.clear()
        self.active_command = None

    def _send(self, packet_type: PacketType, name: str | None = None, message: EncodableMessage | None = None) -> None:
        data = frame(encode_packet(packet_type, name, message))
        if len(self._output) + len(data) > self.output_limit:
            self.close("output-overflow", f"the client left more than {self.output_limit} bytes unread")
            return
        self._output += data
