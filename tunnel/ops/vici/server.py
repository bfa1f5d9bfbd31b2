"""The vici unix socket inside the daemon's loop: one :class:`ViciSession` per client, no threads.

Modelled on ``tunnel.ops.control.ControlServer``: the listener and every client are registered in
the daemon's ``selectors`` selector, reads and writes never block, and a client that sends garbage,
stops reading or disappears is dropped alone (the session decides, see ``session.py``). Commands
go to ``dispatch(session, request)``, which answers with ``session.respond`` at once or later
(``initiate`` waits for IKE); an answer given later is flushed by :meth:`ViciServer.finish`.
"""

from __future__ import annotations

import selectors
import socket
from collections.abc import Callable, Collection

import structlog

from tunnel.ops.control import accept_pending, bind_unix, remove_socket_file, unregister

from .codec import EncodableMessage
from .session import CommandRequest, EventSubscription, SessionClosed, ViciSession

log = structlog.get_logger("espgw.vici")

MAX_CLIENTS = 32
READ_SIZE = 65536
LOW_WATER = 64 * 1024  # a streaming command goes on once the client's backlog is below this

Dispatch = Callable[[ViciSession, CommandRequest], None]


class _Client:
    __slots__ = ("sock", "session", "events", "resume")

    def __init__(self, sock: socket.socket, session: ViciSession):
        self.sock = sock
        self.session = session
        self.events = 0  # the selector interest last set
        self.resume: Callable[[], None] | None = None  # a streaming command waiting for the client


class ViciServer:
    def __init__(self, path: str, dispatch: Dispatch, *, commands: Collection[str], events: Collection[str],
                 selector: selectors.BaseSelector):
        self.path = path
        self.dispatch = dispatch
        self.commands = frozenset(commands)
        self.events = frozenset(events)
        self.selector = selector
        self.clients: dict[ViciSession, _Client] = {}
        self.listener = bind_unix(path)  # mode 0600: root's only, as charon's socket
        selector.register(self.listener, selectors.EVENT_READ, lambda _mask: self._accept())

    def close(self) -> None:
        for client in list(self.clients.values()):
            client.session.close("shutdown", "the daemon stops")
            self._drop(client)
        if self.listener.fileno() >= 0:
            unregister(self.selector, self.listener)
            self.listener.close()
            remove_socket_file(self.path)

    def finish(self, session: ViciSession, message: EncodableMessage) -> None:
        """Answer a command that responded later than its dispatch (initiate, terminate)."""
        client = self.clients.get(session)
        if client is None:
            return
        if session.active_command is not None:
            session.respond(message)
        self._process(client)

    def when_drained(self, session: ViciSession, resume: Callable[[], None]) -> None:
        """Call ``resume()`` once the client has read most of its backlog: a command streaming
        thousands of events (list-sas) emits a batch at a time instead of buffering them all."""
        client = self.clients.get(session)
        if client is not None:
            client.resume = resume

    def emit(self, event: str, message: EncodableMessage) -> None:
        """Raise ``event`` to every client registered for it (ike-updown, log...)."""
        for client in list(self.clients.values()):
            if client.session.emit_event(event, message) or client.session.closed:
                self._process(client)

    def emit_to(self, session: ViciSession, event: str, message: EncodableMessage) -> None:
        """An event for one client only (control-log of its own initiate), flushed at once."""
        client = self.clients.get(session)
        if client is not None and session.emit_event(event, message):
            self._process(client)

    # --- internals ---------------------------------------------------------------------------
    def _accept(self) -> None:
        for sock in accept_pending(self.listener, "vici.accept_failed"):
            if len(self.clients) >= MAX_CLIENTS:
                oldest = next(iter(self.clients.values()))
                log.warning("vici.too_many_clients", limit=MAX_CLIENTS)
                oldest.session.close("too-many-clients", "dropped for a newer client")
                self._drop(oldest)
            client = _Client(sock, ViciSession(self.events, commands=self.commands))
            self.clients[client.session] = client
            client.events = selectors.EVENT_READ
            self.selector.register(sock, selectors.EVENT_READ, lambda mask, c=client: self._on_client(c, mask))

    def _on_client(self, client: _Client, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(client)
        if mask & selectors.EVENT_READ and client.session in self.clients:
            try:
                data = client.sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                client.session.close("recv-failed", exc.strerror or str(exc))
                data = b""
            if data:
                client.session.receive_data(data)
            else:
                client.session.close("eof", "the client closed the connection")
            self._process(client)

    def _process(self, client: _Client) -> None:
        session = client.session
        while (event := session.next_event()) is not None:
            if isinstance(event, SessionClosed):
                if event.reason not in ("eof", "shutdown"):
                    log.warning("vici.client_dropped", reason=event.reason, detail=event.detail[:200])
                self._drop(client)
                return
            if isinstance(event, EventSubscription):
                log.debug("vici.subscription", event_name=event.event[:64], registered=event.registered,
                          known=event.known)
                continue
            assert isinstance(event, CommandRequest)
            log.debug("vici.command", command=event.command)
            try:
                self.dispatch(session, event)
            except Exception as exc:  # a bug in one command must not take the daemon down
                log.exception("vici.command_failed", command=event.command)
                if session.active_command is not None:
                    session.respond({"success": False, "errmsg": f"internal error in {event.command}: "
                                                                 f"{type(exc).__name__}"})
            if session.active_command is not None:
                break  # answered later through finish(); what queued behind it waits
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        if client.session not in self.clients:
            return
        session = client.session
        while True:
            while data := session.pending_output():
                try:
                    sent = client.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # EPIPE, ECONNRESET: the client went away
                    session.close("send-failed", exc.strerror or str(exc))
                    self._drop(client)
                    return
                session.output_sent(sent)
            if client.resume is None or session.closed or session.pending_size() >= LOW_WATER:
                break
            resume, client.resume = client.resume, None
            resume()  # the next batch; it may ask to be resumed again
            if session.active_command is None:  # it answered: what queued behind it may go
                self._process(client)
                return
        if session.closed:
            self._drop(client)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if session.pending_output() else 0)
        if events != client.events:
            key = self.selector.get_key(client.sock)
            self.selector.modify(client.sock, events, key.data)
            client.events = events

    def _drop(self, client: _Client) -> None:
        if self.clients.pop(client.session, None) is None:
            return
        unregister(self.selector, client.sock)
        client.sock.close()
