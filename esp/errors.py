"""Typed drop reasons and errors of the ESP data plane.

Messages name the reason and, where useful, the SPI and sequence number;
they never contain key material.
"""

from __future__ import annotations

import enum
from collections import Counter
from types import MappingProxyType
from collections.abc import Mapping


class DropReason(enum.Enum):
    TRUNCATED = "truncated"
    UNKNOWN_SPI = "unknown_spi"
    REPLAY = "replay"
    AUTH_FAILED = "auth_failed"
    BAD_PADDING = "bad_padding"
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


class Counters:
    """Packets, bytes and drops by reason of one SA (or of the SA database).

    ``drops`` reads as an empty mapping until the first drop, so an SA that never drops
    anything (most of them) carries no Counter; count with ``drop()``.
    """

    __slots__ = ("packets", "bytes", "_drops")

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self._drops: Counter | None = None

    @property
    def drops(self) -> Mapping[DropReason, int]:
        return self._drops if self._drops is not None else _NO_DROPS

    def drop(self, reason: DropReason) -> None:
        if self._drops is None:
            self._drops = Counter()
        self._drops[reason] += 1

    def __repr__(self) -> str:
        return f"Counters(packets={self.packets}, bytes={self.bytes}, drops={dict(self.drops)})"


_NO_DROPS: Mapping[DropReason, int] = MappingProxyType({})
