"""The daemon's local control socket: newline-delimited JSON over a Unix stream socket.

A request is one JSON object per line, ``{"cmd": "status", ...}``; each gets one response line,
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``. Commands the CLI sends:

* ``{"cmd": "status"}``: daemon-wide state (see ``tunnel.ops.cli`` for the fields it shows).
* ``{"cmd": "list-sas"}``: ``{"ike_sas": [...]}``, each IKE SA with its ``children``.
* ``{"cmd": "list-conns"}``: ``{"connections": [...]}``, the loaded configuration without secrets.
* ``{"cmd": "initiate", "child": NAME}`` or ``{"cmd": "initiate", "ike": NAME}``: starts it and
  answers at once with ``since`` (a journal number) and ``connection``, or ``already: true``.
* ``{"cmd": "events", "since": N, "connection": NAME}``: ``{"events": [...], "next": M}``, the
  journal entries after N (``seq``, ``event``, ``child``, ``text``, ``outcome`` "up"/"failed"),
  which ``espgw initiate`` polls until the SA is up or has failed.
* ``{"cmd": "terminate" | "rekey", "ike": NAME}`` or ``... "child": NAME}``: an error if none is up.
* ``{"cmd": "reload"}``: read the configuration file again; ``added``, ``removed``, ``changed``,
  ``unchanged`` and ``warnings``, or an error listing the file's problems (nothing changed).
* ``{"cmd": "keys"}``: the key snapshot ``tunnel.ops.keyexport`` writes out for Wireshark.

:class:`ControlServer` runs inside the daemon's own selector loop (no threads): it never blocks,
buffers partial lines and partial writes, caps line length and client count, and survives
garbage and clients that disappear. :func:`control_request` is the blocking client.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import stat
import time
from typing import Any
from collections.abc import Callable, Iterator

import structlog

MAX_LINE = 64 * 1024  # a request is a few dozen bytes; anything this long is not a client of ours
MAX_RESPONSE = 64 * 1024 * 1024  # what the client accepts: status with thousands of SAs fits
MAX_CLIENTS = 32
MAX_PENDING_OUTPUT = 64 * 1024 * 1024

log = structlog.get_logger("espgw.control")


class EncodedJson(bytes):
    """A handler result already encoded as JSON, sent as it is. ``list-sas`` on a gateway with
    thousands of SAs encodes them one by one: building every SA's dict first leaves ~7 MB of the
    daemon's heap fragmented for good (at 10,000 SAs)."""


class ControlError(Exception):
    """A request failed; raised by handlers for a clean ``{"ok": false}`` reply, and by the client."""


class DaemonUnreachable(ControlError):
    """Nothing answers at the control socket path."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"cannot reach the daemon at {path}: {reason}")


Handler = Callable[[dict], Any]


class _Client:
    __slots__ = ("sock", "inbuf", "outbuf", "closing")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closing = False  # close once outbuf is flushed


class ControlServer:
    """Serve control requests on a Unix socket from the daemon's event loop.

    ``handler(request)`` gets the decoded request object (with a string ``cmd``) and returns the
    JSON-serialisable result; it raises :class:`ControlError` for a clean error reply. Anything
    else it raises becomes ``internal error`` and is logged; the server keeps running.

    Two ways to drive it:

    * give a ``selectors`` selector: the server registers and unregisters its sockets itself,
      each with ``data`` a callable taking ``(mask)``; the loop calls ``key.data(mask)``.
    * or poll: register :meth:`sockets` for reading (and :meth:`sockets_to_write` for writing)
      and call :meth:`on_readable` / :meth:`on_writable` for the ready ones.
    """

    def __init__(self, path: str, handler: Handler, selector: selectors.BaseSelector | None = None):
        self.path = path
        self.handler = handler
        self.selector = selector
        self.clients: dict[socket.socket, _Client] = {}
        self.listener = bind_unix(path)
        if selector is not None:
            selector.register(self.listener, selectors.EVENT_READ, self._listener_event)

    # --- integration points -----------------------------------------------------------------

    def sockets(self) -> list[socket.socket]:
        """Every socket to watch for reading: the listener and the connected clients."""
        return [self.listener, *self.clients]

    def sockets_to_write(self) -> list[socket.socket]:
        return [sock for sock, client in self.clients.items() if client.outbuf]

    def on_readable(self, sock: socket.socket) -> None:
        if sock is self.listener:
            self._accept()
        elif sock in self.clients:
            self._read(self.clients[sock])

    def on_writable(self, sock: socket.socket) -> None:
        client = self.clients.get(sock)
        if client is not None:
            self._flush(client)

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client)
        if self.listener.fileno() >= 0:
            if self.selector is not None:
                unregister(self.selector, self.listener)
            self.listener.close()
            remove_socket_file(self.path)

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------------

    def _listener_event(self, mask: int) -> None:
        self._accept()

    def _accept(self) -> None:
        for sock in accept_pending(self.listener, "control socket accept failed"):
            if len(self.clients) >= MAX_CLIENTS:
                oldest = next(iter(self.clients.values()))
                log.warning("too many control clients; dropping the oldest")
                self._drop(oldest)
            client = _Client(sock)
            self.clients[sock] = client
            if self.selector is not None:
                self.selector.register(sock, selectors.EVENT_READ, lambda mask, c=client: self._client_event(c, mask))

    def _client_event(self, client: _Client, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(client)
        if mask & selectors.EVENT_READ and client.sock in self.clients:
            self._read(client)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        if not data:  # the client closed its side: answer a last unterminated request, then go
            if client.inbuf.strip() and not client.closing:
                self._queue(client, self._respond(bytes(client.inbuf)))
            client.inbuf.clear()
            client.closing = True
            self._flush(client)
            return
        if client.closing:
            return
        client.inbuf += data
        while b"\n" in client.inbuf:
            line, _, rest = bytes(client.inbuf).partition(b"\n")
            client.inbuf = bytearray(rest)
            self._queue(client, self._respond(line))
        if len(client.inbuf) > MAX_LINE:
            self._queue(client, {"ok": False, "error": f"request longer than {MAX_LINE} bytes"})
            client.inbuf.clear()
            client.closing = True
        self._flush(client)

    def _respond(self, line: bytes) -> dict:
        line = line.strip()
        if not line:
            return {"ok": False, "error": "empty request"}
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return {"ok": False, "error": "bad request: not JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'bad request: expected an object like {"cmd": "status"}'}
        try:
            result = self.handler(request)
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug in a command must not take the daemon down
            log.error("control command failed", cmd=request["cmd"][:64], error=type(exc).__name__)
            return {"ok": False, "error": f"internal error in {request['cmd'][:64]!r}: {type(exc).__name__}"}
        return {"ok": True, "result": result}

    def _queue(self, client: _Client, response: dict) -> None:
        try:
            result = response.get("result")
            if isinstance(result, EncodedJson):
                data = b'{"ok":true,"result":' + result + b"}\n"
            else:
                data = json.dumps(response, separators=(",", ":")).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            log.error("control response not serialisable", error=str(exc)[:200])
            data = b'{"ok":false,"error":"internal error: response not serialisable"}\n'
        if len(client.outbuf) + len(data) > MAX_PENDING_OUTPUT:  # a client that never reads
            self._drop(client)
            return
        client.outbuf += data

    def _flush(self, client: _Client) -> None:
        if client.sock not in self.clients:
            return
        while client.outbuf:
            try:
                sent = client.sock.send(client.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # EPIPE, ECONNRESET: the client went away
                self._drop(client)
                return
            del client.outbuf[:sent]
        if not client.outbuf and client.closing:
            self._drop(client)
            return
        self._update_interest(client)

    def _update_interest(self, client: _Client) -> None:
        if self.selector is None or client.sock not in self.clients:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbuf else 0)
        key = self.selector.get_key(client.sock)
        if key.events != events:
            self.selector.modify(client.sock, events, key.data)

    def _drop(self, client: _Client) -> None:
        if self.clients.pop(client.sock, None) is None:
            return
        if self.selector is not None:
            unregister(self.selector, client.sock)
        client.sock.close()


def accept_pending(listener: socket.socket, failure_event: str) -> Iterator[socket.socket]:
    """Every connection waiting on a non-blocking listener, each made non-blocking; a failed
    accept (EMFILE and friends) is logged and ends the round: the next readiness tries again."""
    while True:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning(failure_event, error=exc.strerror)
            return
        sock.setblocking(False)
        yield sock


def unregister(selector: selectors.BaseSelector, sock: socket.socket) -> None:
    try:
        selector.unregister(sock)
    except (KeyError, ValueError):
        pass


def bind_unix(path: str) -> socket.socket:
    """Listen at ``path`` (mode 0600), replacing a stale socket file but never a live daemon's."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise ControlError(f"cannot create {directory} for the control socket: {exc.strerror}") from None
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ControlError(f"{path} exists and is not a socket; refusing to replace it")
        if _is_live(path):
            raise ControlError(f"another daemon is already listening at {path}")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is born 0600: no window where others can connect
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ControlError(f"cannot listen at {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock


def _is_live(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def remove_socket_file(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass


def _connect(sock: socket.socket, path: str, deadline: float) -> None:
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:  # EAGAIN: the listen backlog is full for a moment; retry
            if time.monotonic() >= deadline:
                raise TimeoutError(errno.ETIMEDOUT, "the daemon's listen queue stays full") from None
            time.sleep(0.01)


def control_request(path: str, request: dict, timeout: float = 5.0) -> Any:
    """Send one request and return its ``result``; raise :class:`ControlError` if the daemon
    answered with an error and :class:`DaemonUnreachable` if nothing listens at ``path``."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            _connect(sock, path, deadline)
        except FileNotFoundError:
            raise DaemonUnreachable(path, "no such socket") from None
        except ConnectionRefusedError:
            raise DaemonUnreachable(path, "connection refused") from None
        except PermissionError:
            raise DaemonUnreachable(path, "permission denied (the socket is root's: try sudo)") from None
        except OSError as exc:
            raise DaemonUnreachable(path, exc.strerror or str(exc)) from None
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = bytearray()
            while b"\n" not in data:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    raise ControlError("the daemon closed the connection without answering")
                data += chunk
                if len(data) > MAX_RESPONSE:
                    raise ControlError("the daemon's answer is too long")
        except TimeoutError:
            raise ControlError(f"the daemon did not answer within {timeout:g}s") from None
        except OSError as exc:
            raise ControlError(f"control connection failed: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        response = json.loads(bytes(data).partition(b"\n")[0])
    except ValueError:
        raise ControlError("the daemon's answer is not JSON") from None
    if not isinstance(response, dict) or "ok" not in response:
        raise ControlError("the daemon's answer has no 'ok' field")
    if not response["ok"]:
        raise ControlError(str(response.get("error", "unknown error")))
    return response.get("result")
