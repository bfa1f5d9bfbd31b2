"""Anti-replay window (RFC 4303 s3.4.3) with ESN high-bit inference (RFC 4303
Appendix A2).

The window is a ring of one byte per sequence number (``seen``), in the spirit
of RFC 6479: moving the top only clears the slots it passes, and an in-order
packet only sets its own slot.  A byte per number instead of a bit lets the
per-packet path in esp.sa test and set a slot with one subscript, without
shifts or new int objects (64 KiB at the largest window).

Until the first authenticated packet the ring is one zero-filled ``bytes``
shared by every window of that size (own_ring() gives the window its own):
an idle SA costs no ring.

check() runs before the ICV and never changes state; update() runs only after
the ICV verified, so forged packets cannot move the window.  InboundSA inlines
both for the common cases and calls these methods for the rest.
"""

from __future__ import annotations

from typing import cast

MAX_WINDOW = 1 << 16
_INFER_WITHOUT_WINDOW = 1 << 16   # ESN guess span when anti-replay is off
_EMPTY_RINGS: dict[int, bytes] = {}
_RING_MASKS: dict[int, int] = {}  # one shared int per ring size (a gateway holds thousands of windows)


class ReplayWindow:
    __slots__ = ("size", "esn", "top", "ring_mask", "seen")

    def __init__(self, size: int = 1024, esn: bool = False) -> None:
        if not 0 <= size <= MAX_WINDOW:
            raise ValueError(f"replay window must be 0..{MAX_WINDOW}, got {size}")
        self.size = size
        self.esn = esn
        self.top = 0      # highest authenticated sequence number (full 64 bits with ESN)
        ring = 64
        while ring < size:
            ring *= 2
        self.ring_mask = _RING_MASKS.setdefault(ring, ring - 1)
        # seen[seq & ring_mask] is 1 once seq in (top - ring, top] was accepted. Until own_ring()
        # it is the shared all-zero ring, an immutable bytes: read only, never written (typed as
        # the bytearray it becomes, as every write happens after own_ring()).
        self.seen: bytearray = cast(bytearray, _EMPTY_RINGS.setdefault(ring, bytes(ring)))

    def own_ring(self) -> None:
        """A writable ring of this window's own, before anything marks a slot."""
        if not isinstance(self.seen, bytearray):  # still the shared read-only ring
            self.seen = bytearray(len(self.seen))

    def reset(self, top: int) -> None:
        """Start as if ``top`` was the last packet received (rekey, tests)."""
        self.top = top
        if type(self.seen) is bytearray:
            self.seen[:] = bytes(len(self.seen))    # in place: the ring object stays the same

    def infer(self, seq_lo: int) -> int:
        """Full sequence number for the 32 bits on the wire (Appendix A2.2)."""
        if not self.esn:
            return seq_lo
        w = self.size or _INFER_WITHOUT_WINDOW
        th, tl = self.top >> 32, self.top & 0xFFFFFFFF
        if tl >= w - 1:                       # window inside one 2^32 subspace
            hi = th if seq_lo >= tl - w + 1 else th + 1
        else:                                 # window straddles two subspaces
            hi = th - 1 if seq_lo >= ((tl - w + 1) & 0xFFFFFFFF) else th
        return -1 if hi < 0 or hi > 0xFFFFFFFF else (hi << 32) | seq_lo

    def check(self, seq: int) -> bool:
        """True if ``seq`` (full) may be accepted; does not change state."""
        if seq <= 0:
            return False
        top = self.top
        if seq > top or not self.size:
            return True
        if top - seq >= self.size:
            return False
        return not self.seen[seq & self.ring_mask]

    def update(self, seq: int) -> None:
        """Record an authenticated ``seq``; slide the window if it is new."""
        self.own_ring()
        seen, mask = self.seen, self.ring_mask
        top = self.top
        if seq > top:
            if seq - top > mask:                        # jumped past the whole ring
                seen[:] = bytes(mask + 1)
            else:                                       # clear the slots top+1 .. seq-1
                start, stop = (top + 1) & mask, seq & mask
                if start <= stop:
                    seen[start:stop] = bytes(stop - start)
                else:
                    seen[start:] = bytes(mask + 1 - start)
                    seen[:stop] = bytes(stop)
            self.top = seq
        seen[seq & mask] = 1
