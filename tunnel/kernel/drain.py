"""How a wake-up's reads stop: a zero-timeout poll after the first packet, not a failing read.

A drain loop reads a non-blocking fd until the read fails with EAGAIN. That last read raises
BlockingIOError, which costs about 2 µs with warm caches and several times that on an idle
gateway whose caches went cold since the last packet: every ping pays it at each of its four
hops. After a wake-up's first packet, ``more(0)`` (a poll of that fd alone: 0.5 µs, no
exception) answers whether anything else is queued, so a lone packet ends its batch at once; a
busy wake-up goes on draining as before and pays the poll once per batch.
"""

from __future__ import annotations

import select
from collections.abc import Callable

__all__ = ["pending_probe"]


def pending_probe(fd: int) -> Callable[[int], list]:
    """``probe(0)`` returns a non-empty list while ``fd`` has something to read."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return poller.poll
