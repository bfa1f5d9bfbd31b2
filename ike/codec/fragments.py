"""Reassembly of RFC 7383 fragments (each fragment is decrypted on its own before it is kept)."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_FRAGMENTS = 64  # bounds memory per message; strongSwan's default max is 65535 bytes total
MAX_TOTAL_BYTES = 65535


@dataclass
class Reassembly:
    message_id: int
    total: int
    first_inner: int = 0
    pieces: dict[int, bytes] = field(default_factory=dict, repr=False)

    def add(self, number: int, total: int, first_inner: int, plaintext: bytes) -> bytes | None:
        """Keep one decrypted fragment; the whole inner chain once all are there, else None.

        A fragment whose total disagrees with the first one seen is ignored (RFC 7383 s2.6.2
        would restart on a larger total; strongSwan drops; dropping keeps retransmits working).
        """
        if total != self.total or number in self.pieces:
            return None
        if number == 1:
            self.first_inner = first_inner
        self.pieces[number] = plaintext
        if sum(len(p) for p in self.pieces.values()) > MAX_TOTAL_BYTES:
            self.pieces.clear()
            return None
        if len(self.pieces) < self.total:
            return None
        return b"".join(self.pieces[i] for i in range(1, self.total + 1))


def fragment_limit(fragment_size: int, remote_ip: str, natt: bool) -> int:
    """Bytes of IKE message per fragment for a configured IP datagram size."""
    ip_header = 40 if ":" in remote_ip else 20
    return max(fragment_size - ip_header - 8 - (4 if natt else 0), 100)
