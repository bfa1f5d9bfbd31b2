"""Security associations: one object per direction.

OutboundSA.encapsulate turns an inner packet into SPI | seq | IV | ciphertext
| ICV; InboundSA.decapsulate reverses it, checking the replay window before
and updating it after the ICV (RFC 4303 s3.4.3).  Every failure is a counted
Drop.  No clocks here: time-based lifetimes belong to the caller (IKE).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Callable

from .crypto import HEADER, make_opener, make_sealer
from .errors import Counters, Drop, DropReason, SAExpired
from .padding import PAD_BYTES, trailer_table
from .replay import ReplayWindow
from .transforms import Transform, transform_by_name

NH_IPV4, NH_IPV6, NH_NONE = 4, 41, 59
_SEQ_SPAN = {False: 1 << 32, True: 1 << 64}
_REKEY_MARGIN = 1 << 16     # rekey this many packets before the counter would wrap
_U16 = struct.Struct("!H")


@dataclass
class Lifetime:
    soft_packets: int | None = None
    hard_packets: int | None = None
    soft_bytes: int | None = None
    hard_bytes: int | None = None


def _as_transform(t: str | Transform) -> Transform:
    return t if isinstance(t, Transform) else transform_by_name(t)


def _first_limit(*limits: int | None) -> int:
    return min((x for x in limits if x is not None), default=1 << 80)


class _LimitedSA:
    """Soft/hard packet and byte limits shared by both directions."""

    def _init_limits(self, lifetime: Lifetime | None, seq_soft: int | None) -> None:
        self.lifetime = lifetime or Lifetime()
        self.counters = Counters()
        self.rekey_needed = False
        self.expired = False
        lt = self.lifetime
        self._soft_packets = _first_limit(lt.soft_packets, seq_soft)
        self._soft_bytes = _first_limit(lt.soft_bytes)
        self._hard_packets = _first_limit(lt.hard_packets)
        self._hard_bytes = _first_limit(lt.hard_bytes)

    def _limits_reached(self) -> None:
        c = self.counters
        if c.packets >= self._soft_packets or c.bytes >= self._soft_bytes:
            self.rekey_needed = True
        if c.packets >= self._hard_packets or c.bytes >= self._hard_bytes:
            self.expired = True
            self.rekey_needed = True


class OutboundSA(_LimitedSA):
    def __init__(self, spi: int, transform: str | Transform, keymat: bytes, *, esn: bool = False,
                 tfc_pad_to: int = 0, lifetime: Lifetime | None = None, initial_seq: int = 0,
                 rng: Callable[[int], bytes] = os.urandom) -> None:
        self.spi = spi
        self.transform = t = _as_transform(transform)
        self.esn = esn
        self.seq = initial_seq        # last sequence number sent
        self.tfc_pad_to = tfc_pad_to
        span = _SEQ_SPAN[esn]
        self._max_seq = span - 1       # never wrap: the last number we may send
        self._soft_seq = span - _REKEY_MARGIN
        self._init_limits(lifetime, None)
        self._seal = make_sealer(t, keymat, spi, esn)
        self._trailers = trailer_table(t.align)
        self._align = t.align
        # AEAD: IV is the 64-bit counter, unique under the key (RFC 4106 s3.1);
        # CBC: unpredictable IV from the injected rng (RFC 3602 s2.1).
        self._rng = rng
        self._counter_iv = t.kind != "cbc"
        self._set_thresholds()
        if initial_seq >= self._soft_seq:
            self.rekey_needed = True
            self._set_thresholds()

    def __repr__(self) -> str:
        return f"OutboundSA(spi=0x{self.spi:08x}, transform={self.transform.name}, seq={self.seq})"

    def _set_thresholds(self) -> None:
        """Cheap bounds that send encapsulate into _slow_path near a limit."""
        if self.rekey_needed:
            self._pkt_check, self._seq_check, self._byte_check = (
                self._hard_packets, self._max_seq, self._hard_bytes)
        else:
            self._pkt_check = min(self._soft_packets - 1, self._hard_packets)
            self._seq_check = min(self._soft_seq - 1, self._max_seq)
            self._byte_check = min(self._soft_bytes - 1, self._hard_bytes)

    def encapsulate(self, inner: bytes, next_header: int = NH_IPV4) -> bytes:
        seq = self.seq + 1
        n = len(inner)
        c = self.counters
        if c.packets >= self._pkt_check or seq > self._seq_check or c.bytes + n > self._byte_check:
            self._slow_path(seq, n)
        if n < self.tfc_pad_to and next_header != NH_NONE:
            inner = inner + bytes(self.tfc_pad_to - n)   # receiver strips by inner length
        self.seq = seq
        c.packets += 1
        c.bytes += n
        iv = seq.to_bytes(8, "big") if self._counter_iv else self._rng(16)
        return self._seal(seq, iv, inner + self._trailers[next_header][len(inner) % self._align])

    def encapsulate_dummy(self, size: int = 0) -> bytes:
        """A next-header-59 packet for traffic-flow confidentiality (RFC 4303 s2.6)."""
        return self.encapsulate(bytes(size), NH_NONE)

    def _slow_path(self, seq: int, n: int) -> None:
        c = self.counters
        if (self.expired or seq > self._max_seq or c.packets >= self._hard_packets
                or c.bytes + n > self._hard_bytes):
            self.expired = self.rekey_needed = True
            self._pkt_check = -1          # every later call lands here and refuses
            raise SAExpired(f"SA 0x{self.spi:08x} reached its hard limit")
        if (seq >= self._soft_seq or c.packets + 1 >= self._soft_packets
                or c.bytes + n >= self._soft_bytes):
            self.rekey_needed = True
        self._set_thresholds()


class InboundSA(_LimitedSA):
    def __init__(self, spi: int, transform: str | Transform, keymat: bytes, *, esn: bool = False,
                 replay_window: int = 1024, lifetime: Lifetime | None = None) -> None:
        self.spi = spi
        self.transform = t = _as_transform(transform)
        self.esn = esn
        self.replay = ReplayWindow(replay_window, esn)
        self._init_limits(lifetime, None)
        self._in_pkt_check = min(self._soft_packets, self._hard_packets)
        self._in_byte_check = min(self._soft_bytes, self._hard_bytes)
        self._open = make_opener(t, keymat, esn)
        self._min_len = 8 + t.iv_len + t.icv_len + (16 if t.kind == "cbc" else 2)
        self._block = 16 if t.kind == "cbc" else 1
        self._overhead = 8 + t.iv_len + t.icv_len

    def __repr__(self) -> str:
        return f"InboundSA(spi=0x{self.spi:08x}, transform={self.transform.name})"

    def _drop(self, reason: DropReason, detail: str = "") -> Drop:
        self.counters.drops[reason] += 1
        return Drop(reason, f"SA 0x{self.spi:08x}" + (f": {detail}" if detail else ""))

    def decapsulate(self, esp: bytes | memoryview) -> tuple[int, bytes]:
        if self.expired:
            raise self._drop(DropReason.SA_EXPIRED)
        n = len(esp)
        if n < self._min_len or (n - self._overhead) % self._block:
            raise self._drop(DropReason.TRUNCATED, f"{n} bytes")
        spi, seq_lo = HEADER.unpack_from(esp)
        if spi != self.spi:
            raise self._drop(DropReason.UNKNOWN_SPI, f"packet SPI 0x{spi:08x}")
        replay = self.replay
        seq = replay.infer(seq_lo) if self.esn else seq_lo
        if seq <= replay.top and not replay.check(seq) or seq <= 0:
            raise self._drop(DropReason.REPLAY, f"seq {seq_lo}")
        try:
            plaintext = self._open(esp, seq)
        except Drop as d:
            self.counters.drops[d.reason] += 1
            raise
        replay.update(seq)
        # trailer: pad bytes 1, 2, 3, ..., pad length, next header (RFC 4303 s2.4)
        n = len(plaintext)
        pad = plaintext[-2] if n >= 2 else 255
        end = n - 2 - pad
        if end < 0 or (pad and plaintext[end:n - 2] != PAD_BYTES[:pad]):
            raise self._drop(DropReason.BAD_PADDING)
        nh = plaintext[-1]
        if nh == NH_IPV4:
            if end < 20 or plaintext[0] >> 4 != 4:
                raise self._drop(DropReason.BAD_INNER, "not an IPv4 header")
            length = _U16.unpack_from(plaintext, 2)[0]
            if length < 20:
                raise self._drop(DropReason.BAD_INNER, "IPv4 total length below 20")
        elif nh == NH_IPV6:
            if end < 40 or plaintext[0] >> 4 != 6:
                raise self._drop(DropReason.BAD_INNER, "not an IPv6 header")
            length = 40 + _U16.unpack_from(plaintext, 4)[0]
        elif nh == NH_NONE:
            raise self._drop(DropReason.DUMMY)
        else:
            length = end
        if length > end:
            raise self._drop(DropReason.BAD_INNER, "inner length exceeds payload")
        payload = plaintext[:length]       # drops TFC padding too
        c = self.counters
        c.packets += 1
        c.bytes += length
        if c.packets >= self._in_pkt_check or c.bytes >= self._in_byte_check:
            self._limits_reached()
        return nh, payload
