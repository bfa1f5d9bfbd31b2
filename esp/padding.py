"""ESP trailer: padding 1, 2, 3, ... then pad length and next header (RFC 4303 s2.4)."""

from __future__ import annotations

from functools import cache

PAD_BYTES = bytes(range(1, 256))
# PAD_PREFIX[n] == PAD_BYTES[:n]: the receiver compares without slicing the table
PAD_PREFIX = tuple(PAD_BYTES[:n] for n in range(256))


@cache
def trailer_table(align: int) -> tuple[tuple[bytes, ...], ...]:
    """table[next_header][payload_len % align] -> the whole trailer."""
    def trailer(nh: int, rem: int) -> bytes:
        pad = (-(rem + 2)) % align
        return PAD_BYTES[:pad] + bytes((pad, nh))
    return tuple(tuple(trailer(nh, rem) for rem in range(align)) for nh in range(256))


def trailer(payload_len: int, next_header: int, align: int) -> bytes:
    return trailer_table(align)[next_header][payload_len % align]


def strip_trailer(plaintext: bytes) -> tuple[int, bytes] | None:
    """(next_header, payload) or None when the padding is malformed."""
    n = len(plaintext)
    if n < 2:
        return None
    pad = plaintext[-2]
    end = n - 2 - pad
    if end < 0 or plaintext[end:n - 2] != PAD_BYTES[:pad]:
        return None
    return plaintext[-1], plaintext[:end]
