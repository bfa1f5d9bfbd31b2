"""Retransmission schedule (RFC 7296 s2.1) with strongSwan's defaults: timeout 4 s, base 1.8,
5 retransmits; a request unanswered after the last timeout (about 165 s in all) kills the IKE SA.
"""

from __future__ import annotations

from dataclasses import dataclass

TIMEOUT = 4.0
BASE = 1.8
TRIES = 5


@dataclass
class Retransmitter:
    """Tracks one outstanding request: the exact datagrams to resend and when."""

    packets: list[bytes]
    sent_at: float
    timeout: float = TIMEOUT
    base: float = BASE
    tries: int = TRIES
    retransmits: int = 0

    def __post_init__(self) -> None:
        self.deadline = self.sent_at + self.timeout

    def on_timer(self, now: float) -> str | None:
        """'resend', 'give up', or None if not yet due."""
        if now < self.deadline:
            return None
        if self.retransmits >= self.tries:
            return "give up"
        self.retransmits += 1
        self.deadline = now + self.timeout * self.base ** self.retransmits
        return "resend"


def total_lifetime(timeout: float = TIMEOUT, base: float = BASE, tries: int = TRIES) -> float:
    return sum(timeout * base ** i for i in range(tries + 1))
