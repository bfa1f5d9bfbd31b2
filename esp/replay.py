"""Anti-replay window (RFC 4303 s3.4.3) as an RFC 6479 ring of 64-bit words,
with ESN high-bit inference (RFC 4303 Appendix A2).

check() runs before the ICV and never changes state; update() runs only after
the ICV verified, so forged packets cannot move the window.
"""

from __future__ import annotations

MAX_WINDOW = 1 << 16
_INFER_WITHOUT_WINDOW = 1 << 16   # ESN guess span when anti-replay is off


class ReplayWindow:
    def __init__(self, size: int = 1024, esn: bool = False) -> None:
        if not 0 <= size <= MAX_WINDOW:
            raise ValueError(f"replay window must be 0..{MAX_WINDOW}, got {size}")
        self.size = size
        self.esn = esn
        self.top = 0      # highest authenticated sequence number (full 64 bits with ESN)
        # ring of words; one spare word so the top block never shares a word with the oldest
        nwords = 1
        while nwords * 64 < size + 64:
            nwords *= 2
        self._mask = nwords - 1
        self._words = [0] * nwords

    def reset(self, top: int) -> None:
        """Start as if ``top`` was the last packet received (rekey, tests)."""
        self.top = top
        self._words = [0] * len(self._words)

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
        if seq > top:
            return True
        if not self.size:
            return True
        if top - seq >= self.size:
            return False
        return not (self._words[(seq >> 6) & self._mask] >> (seq & 63)) & 1

    def update(self, seq: int) -> None:
        words, mask = self._words, self._mask
        top = self.top
        if seq > top:
            block, new_block = top >> 6, seq >> 6
            # clear the words the window slides over (all of them on a big jump)
            for b in range(block + 1, min(new_block, block + mask + 1) + 1):
                words[b & mask] = 0
            self.top = seq
        if self.size:
            words[(seq >> 6) & mask] |= 1 << (seq & 63)
