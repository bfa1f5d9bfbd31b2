"""Typed drop reasons and errors of the ESP data plane.

Messages name the reason and, where useful, the SPI and sequence number;
they never contain key material.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field


class DropReason(enum.Enum):
    TRUNCATED = "truncated"
    UNKNOWN_SPI = "unknown_spi"
    REPLAY = "replay"
    AUTH_FAILED = "auth_failed"
    BAD_PADDING = "bad_padding"
    BAD_NEXT_HEADER = "bad_next_header"
    BAD_INNER = "bad_inner"          # inner IP header malformed or longer than the payload
    DUMMY = "dummy"                  # next header 59: TFC dummy packet, dropped by design
    SA_EXPIRED = "sa_expired"
    BAD_OUTER_HEADER = "bad_outer_header"
    NOT_ESP = "not_esp"
    ECN_DROP = "ecn_drop"            # RFC 6040: CE outer over a Not-ECT inner
    INNER_MISMATCH = "inner_mismatch"  # counted by tunnel/ (traffic selector check)


class Drop(Exception):
    """A packet was dropped; ``reason`` says why."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"ESP drop: {reason.value}" + (f" ({detail})" if detail else ""))


class SAExpired(Exception):
    """The outbound SA reached a hard limit and must not send any more."""


@dataclass
class Counters:
    packets: int = 0
    bytes: int = 0
    drops: Counter = field(default_factory=Counter)  # DropReason -> count

    def drop(self, reason: DropReason) -> None:
        self.drops[reason] += 1
