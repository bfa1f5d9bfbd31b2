"""Inbound SA lookup by SPI; counts the drops that have no SA to charge."""

from __future__ import annotations

import struct

from .errors import Counters, Drop, DropReason
from .sa import InboundSA

_SPI = struct.Struct("!I")


class SADatabase:
    def __init__(self) -> None:
        self._inbound: dict[int, InboundSA] = {}
        self.counters = Counters()

    def add_inbound(self, sa: InboundSA) -> None:
        self._inbound[sa.spi] = sa

    def remove_inbound(self, spi: int) -> None:
        self._inbound.pop(spi, None)

    def lookup(self, spi: int) -> InboundSA | None:
        return self._inbound.get(spi)

    def __len__(self) -> int:
        return len(self._inbound)

    def decapsulate(self, esp: bytes | memoryview) -> tuple[InboundSA, int, bytes]:
        if len(esp) < 8:
            self.counters.drop(DropReason.TRUNCATED)
            raise Drop(DropReason.TRUNCATED, f"{len(esp)} bytes, no ESP header")
        spi = _SPI.unpack_from(esp)[0]
        sa = self._inbound.get(spi)
        if sa is None:
            self.counters.drop(DropReason.UNKNOWN_SPI)
            raise Drop(DropReason.UNKNOWN_SPI, f"SPI 0x{spi:08x}")
        nh, inner = sa.decapsulate(esp)
        return sa, nh, inner
