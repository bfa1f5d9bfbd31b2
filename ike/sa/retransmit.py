"""Retransmission schedule (RFC 7296 s2.1) with strongSwan's defaults: timeout 4 s, base 1.8,
5 retransmits; a request unanswered after the last timeout (about 165 s in all) kills the IKE SA.
The gateway may set its own (strongswan.conf's charon.retransmit_timeout/_base/_tries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

TIMEOUT = 4.0
BASE = 1.8
TRIES = 5
MAX_TRIES = 100  # beyond this base ** tries overflows into hours or more anyway


@dataclass(frozen=True)
class RetransmitSchedule:
    """Wait ``timeout * base ** n`` after the n-th retransmission; give up after ``tries`` of them."""

    timeout: float = TIMEOUT
    base: float = BASE
    tries: int = TRIES

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout, (int, float)) and math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"retransmit timeout must be a positive number of seconds, not {self.timeout!r}")
        if not (isinstance(self.base, (int, float)) and math.isfinite(self.base) and self.base >= 1.0):
            raise ValueError(f"retransmit base must be a number of at least 1, not {self.base!r}")
        if isinstance(self.tries, bool) or not isinstance(self.tries, int) or not 0 <= self.tries <= MAX_TRIES:
            raise ValueError(f"retransmit tries must be an integer from 0 to {MAX_TRIES}, not {self.tries!r}")

    def total(self) -> float:
        """Seconds from the first transmission until the request is given up."""
        return sum(self.timeout * self.base ** i for i in range(self.tries + 1))


DEFAULT_SCHEDULE = RetransmitSchedule()


class Retransmit(Enum):
    RESEND = "resend"
    GIVE_UP = "give up"


@dataclass
class Retransmitter:
    """Tracks one outstanding request: the exact datagrams to resend and when."""

    packets: list[bytes]
    sent_at: float
    schedule: RetransmitSchedule = DEFAULT_SCHEDULE
    retransmits: int = 0

    def __post_init__(self) -> None:
        self.deadline = self.sent_at + self.schedule.timeout

    def on_timer(self, now: float) -> Retransmit | None:
        """RESEND, GIVE_UP, or None if not yet due."""
        if now < self.deadline:
            return None
        if self.retransmits >= self.schedule.tries:
            return Retransmit.GIVE_UP
        self.retransmits += 1
        self.deadline = now + self.schedule.timeout * self.schedule.base ** self.retransmits
        return Retransmit.RESEND


def total_lifetime(timeout: float = TIMEOUT, base: float = BASE, tries: int = TRIES) -> float:
    return RetransmitSchedule(timeout, base, tries).total()
