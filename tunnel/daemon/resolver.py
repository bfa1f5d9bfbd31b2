"""Host names in ``remote_addrs`` to addresses, without stalling the daemon's loop.

``getaddrinfo`` blocks for as long as the system's resolver takes (a dead DNS server: many
seconds), so each lookup runs in a short-lived daemon thread and its answer comes back through a
pipe the loop watches; the loop calls :meth:`Resolver.deliver` when the pipe is readable and the
callbacks run there, on the loop's thread. A lookup not answered within ``timeout`` fails then
(its thread's late answer is dropped). strongSwan looks names up likewise when initiating and
again on every retry; nothing is cached here, so every attempt asks again.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

LOOKUP_TIMEOUT = 5.0  # seconds: a lookup still unanswered then counts as failed
MAX_IN_FLIGHT = 16  # lookups whose threads may run at once; more fail at once

Lookup = Callable[[str, int], str]  # (host, family or AF_UNSPEC) -> address text; raises OSError
Done = Callable[[str | None, str | None], None]  # (address, None) or (None, why it failed)


def system_lookup(host: str, family: int = socket.AF_UNSPEC) -> str:
    """The first address the system's resolver (``/etc/hosts``, DNS...) gives for ``host``."""
    infos = socket.getaddrinfo(host, None, family, socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"no address for {host}")
    return str(infos[0][4][0])


class Resolver:
    """Lookups in worker threads, answered on the loop's thread (see the module text)."""

    def __init__(self, lookup: Lookup = system_lookup, *, timeout: float = LOOKUP_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lookup, self.timeout, self.clock = lookup, timeout, clock
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._answers: deque[tuple[int, str | None, str | None]] = deque()  # filled by the threads
        self._pending: dict[int, tuple[float, Done]] = {}  # lookup number -> (deadline, callback)
        self._next = 0

    def fileno(self) -> int:
        return self._read

    def submit(self, host: str, family: int, done: Done) -> None:
        """Look ``host`` up; ``done`` runs from :meth:`deliver` or :meth:`expire`, never from here."""
        self._next += 1
        number = self._next
        if len(self._pending) >= MAX_IN_FLIGHT:
            self._answers.append((number, None, "too many host name lookups under way"))
            self._pending[number] = (self.clock() + self.timeout, done)
            self._wake()
            return
        self._pending[number] = (self.clock() + self.timeout, done)
        threading.Thread(target=self._work, args=(number, host, family), name=f"resolve-{host[:32]}",
                         daemon=True).start()

    def _work(self, number: int, host: str, family: int) -> None:
        try:
            answer: tuple[int, str | None, str | None] = (number, self.lookup(host, family), None)
        except (OSError, UnicodeError, ValueError) as exc:
            answer = (number, None, _reason(exc))
        self._answers.append(answer)  # deque.append is atomic: no lock needed
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._write, b"!")
        except (BlockingIOError, OSError):  # the pipe is full: the loop is about to read anyway
            pass

    def deliver(self) -> None:
        """Run the callbacks of the lookups answered so far (the loop calls this when readable)."""
        try:
            while os.read(self._read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while self._answers:
            number, address, error = self._answers.popleft()
            entry = self._pending.pop(number, None)
            if entry is not None:  # None: it timed out before
                entry[1](address, error)

    def expire(self, now: float) -> None:
        """Fail the lookups older than the timeout."""
        for number, (deadline, done) in list(self._pending.items()):
            if deadline <= now:
                del self._pending[number]
                done(None, f"no answer within {self.timeout:g}s")

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Tests: wait until every thread answered, then deliver."""
        deadline = time.monotonic() + timeout
        while len(self._answers) < len(self._pending) and time.monotonic() < deadline:
            time.sleep(0.005)
        self.deliver()

    def close(self) -> None:
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass
        self._read = self._write = -1


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__
