"""Security associations: one object per direction.

OutboundSA.encapsulate turns an inner packet into SPI | seq | IV | ciphertext
| ICV; InboundSA.decapsulate reverses it, checking the replay window before
and updating it after the ICV (RFC 4303 s3.4.3).  Every failure is a counted
Drop.  No clocks here: time-based lifetimes belong to the caller (IKE).

The cipher objects are built by the first packet, not the constructor: each
`cryptography` AEAD holds OpenSSL contexts of about 2.4 KB, and a gateway with
thousands of mostly idle SAs should not pay for them.  Until then the SA keeps
a reference to the caller's keying material (no copy), and drops it once the
cipher holds the key.  The per-packet path is unchanged: the first packet takes
the branch other transforms take.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from collections.abc import Callable

from cryptography.exceptions import InvalidTag

from .crypto import ESN_AAD, HEADER, Opener, Sealer, direct_aead, make_opener, make_sealer, split_keymat
from .errors import Counters, Drop, DropReason, SAExpired
from .padding import PAD_PREFIX, trailer_table
from .replay import ReplayWindow
from .transforms import Transform, transform_by_name

NH_IPV4, NH_IPV6, NH_NONE = 4, 41, 59
_REKEY_MARGIN = 1 << 16     # rekey this many packets before the counter would wrap
_NEVER = 1 << 80            # a limit no counter reaches: no limit set
# Per ESN setting: (the last number we may send, the one that asks for a rekey, the one before
# it). Shared ints: computed per SA they cost ~100 B each of its thousands of SAs.
_SEQ_LIMITS = {esn: (span - 1, span - _REKEY_MARGIN, span - _REKEY_MARGIN - 1)
               for esn, span in ((False, 1 << 32), (True, 1 << 64))}
_MAX_INNER = 0xFFFF + 40    # no inner packet is longer (IPv6: header + 16-bit payload length)
_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack
_pack_iv = struct.Struct("!Q").pack


@dataclass
class Lifetime:
    soft_packets: int | None = None
    hard_packets: int | None = None
    soft_bytes: int | None = None
    hard_bytes: int | None = None


_NO_LIMITS = Lifetime()


def _as_transform(t: str | Transform) -> Transform:
    return t if isinstance(t, Transform) else transform_by_name(t)


def _first_limit(*limits: int | None) -> int:
    return min((x for x in limits if x is not None), default=_NEVER)


def _before(limit: int) -> int:
    """The count just under ``limit``; ``_NEVER`` itself (no new int) when there is no limit."""
    return limit if limit >= _NEVER else limit - 1


def _held_keymat(t: Transform, keymat: bytes) -> bytes:
    """The keying material kept until the first packet builds the cipher (the caller's bytes
    object itself, not a copy); the length is checked now so a bad key fails at install time."""
    split_keymat(t, keymat)
    return bytes(keymat)


def _cipher_not_built(*_args: object) -> bytes:
    """Stands in for the cipher until the first packet builds it (it never runs: see _slow_path
    and _first_or_refuse, which every first packet goes through)."""
    raise RuntimeError("ESP cipher used before it was built")


class _LimitedSA:
    """Soft/hard packet and byte limits shared by both directions."""

    __slots__ = ("lifetime", "counters", "rekey_needed", "_soft_packets", "_soft_bytes",
                 "_hard_packets", "_hard_bytes", "spi", "transform", "esn", "_key", "_salt", "expired")
    # expired: InboundSA replaces the slot with a property (its length check follows it)

    def _init_limits(self, lifetime: Lifetime | None, seq_soft: int | None) -> None:
        self.lifetime = lifetime or _NO_LIMITS  # shared: read only, limits are copied below
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
    __slots__ = ("seq", "tfc_pad_to", "_max_seq", "_soft_seq", "_seal", "_encrypt", "_trailers", "_align",
                 "_rng", "_counter_iv", "_pkt_check", "_seq_check", "_byte_check")

    def __init__(self, spi: int, transform: str | Transform, keymat: bytes, *, esn: bool = False,
                 tfc_pad_to: int = 0, lifetime: Lifetime | None = None, initial_seq: int = 0,
                 rng: Callable[[int], bytes] = os.urandom) -> None:
        self.spi = spi
        self.transform = t = _as_transform(transform)
        self.esn = esn
        self.seq = initial_seq        # last sequence number sent
        self.tfc_pad_to = tfc_pad_to
        self._max_seq, self._soft_seq = _SEQ_LIMITS[esn][:2]  # never wrap past _max_seq
        self._key: bytes | None = _held_keymat(t, keymat)
        self._init_limits(lifetime, None)
        self._seal: Sealer = _cipher_not_built  # the first packet builds it (_build_cipher)
        self._encrypt: Callable[..., bytes] | None = None
        self._salt = b""
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
        """Cheap bounds that send encapsulate into _slow_path near a limit, and the first packet
        (which builds the cipher there)."""
        if self._key is not None:
            self._pkt_check = self._seq_check = self._byte_check = -1
        elif self.rekey_needed:
            self._pkt_check, self._seq_check, self._byte_check = (
                self._hard_packets, self._max_seq, self._hard_bytes)
        else:
            self._pkt_check = min(_before(self._soft_packets), self._hard_packets)
            self._seq_check = _SEQ_LIMITS[self.esn][2]  # just under _soft_seq, so under _max_seq
            self._byte_check = min(_before(self._soft_bytes), self._hard_bytes)

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
        plaintext = inner + self._trailers[next_header][len(inner) % self._align]
        encrypt = self._encrypt
        if encrypt is not None:            # AEAD, full tag: the per-packet case, inlined
            iv = _pack_iv(seq)             # the counter is unique under the key (RFC 4106 s3.1)
            header = _pack_header(self.spi, seq & 0xFFFFFFFF)
            return header + iv + encrypt(self._salt + iv, plaintext,
                                         ESN_AAD.pack(self.spi, seq) if self.esn else header)
        iv = _pack_iv(seq) if self._counter_iv else self._rng(16)
        return self._seal(seq, iv, plaintext)

    def _build_cipher(self, key: bytes) -> None:
        """The first packet: build the cipher (see the module docstring), let go of the keys."""
        self._key = None
        self._encrypt, self._salt = direct_aead(self.transform, key, encrypt=True)
        if self._encrypt is None:
            self._seal = make_sealer(self.transform, key, self.spi, self.esn)

    def encapsulate_dummy(self, size: int = 0) -> bytes:
        """A next-header-59 packet for traffic-flow confidentiality (RFC 4303 s2.6)."""
        return self.encapsulate(bytes(size), NH_NONE)

    def _slow_path(self, seq: int, n: int) -> None:
        if self._key is not None:
            self._build_cipher(self._key)
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
    __slots__ = ("replay", "_expired", "_min_len", "_block", "_overhead", "_open", "_decrypt", "_len_check",
                 "_limit_check")

    def __init__(self, spi: int, transform: str | Transform, keymat: bytes, *, esn: bool = False,
                 replay_window: int = 1024, lifetime: Lifetime | None = None) -> None:
        self.spi = spi
        self.transform = t = _as_transform(transform)
        self.esn = esn
        self.replay = ReplayWindow(replay_window, esn)
        self._min_len = 8 + t.iv_len + t.icv_len + (16 if t.kind == "cbc" else 2)
        self._block = 16 if t.kind == "cbc" else 1
        self._overhead = 8 + t.iv_len + t.icv_len
        # Built by the first packet (_first_or_refuse, behind the length check): one-shot AEADs
        # with a full 16-byte tag are then decrypted inline in decapsulate, others through _open.
        self._key: bytes | None = _held_keymat(t, keymat)
        self._init_limits(lifetime, None)
        self._plan_limit_check()
        self._open: Opener = _cipher_not_built
        self._decrypt: Callable[..., bytes] | None = None
        self._salt = b""

    def __repr__(self) -> str:
        return f"InboundSA(spi=0x{self.spi:08x}, transform={self.transform.name})"

    def _drop(self, reason: DropReason, detail: str = "") -> Drop:
        self.counters.drop(reason)
        return Drop(reason, f"SA 0x{self.spi:08x}" + (f": {detail}" if detail else ""))

    @property
    def expired(self) -> bool:
        return self._expired

    @expired.setter
    def expired(self, value: bool) -> None:
        # An expired SA gets an impossible minimum length, so decapsulate needs
        # no separate flag test: the length check sends it to the refusal.
        self._expired = value
        self._len_check = 1 << 62 if value or self._key is not None else self._min_len

    def decapsulate(self, esp: bytes | memoryview) -> tuple[int, bytes]:
        """(next header, inner packet) or a counted Drop.

        The gateway's per-packet path, so it is written flat (bench/README.md
        has the measurements): the AEAD call and the anti-replay check and
        update are inline on esp.replay's ring; ReplayWindow's methods only run
        for ESN epoch guesses outside top's epoch and for jumps past top + 1.
        """
        n = len(esp)
        if n < self._len_check:
            self._first_or_refuse(n)
        spi, seq = _unpack_header(esp)
        if spi != self.spi:
            raise self._drop(DropReason.UNKNOWN_SPI, f"packet SPI 0x{spi:08x}")
        replay = self.replay
        top = replay.top
        esn = self.esn
        if esn:
            seq = self._full_seq(seq, top)
        # RFC 4303 s3.4.3: reject replays before spending the ICV on them
        seen = replay.seen
        slot = seq & replay.ring_mask
        if seq <= top and (seq <= 0 or self._replayed(seq, top, seen[slot])):
            raise self._drop(DropReason.REPLAY, f"seq {seq & 0xFFFFFFFF}")
        decrypt = self._decrypt
        if decrypt is not None:            # AEAD, full tag: the per-packet case, inlined
            try:
                plaintext = decrypt(self._salt + esp[8:16], esp[16:],
                                    ESN_AAD.pack(spi, seq) if esn else esp[:8])
            except InvalidTag:
                raise self._drop(DropReason.AUTH_FAILED, "ICV mismatch") from None
        else:
            plaintext = self._open_other(esp, seq)
        # authenticated: now the window may move
        if seq == top + 1:                 # in order: no slot to clear on the way
            seen[slot] = 1
            replay.top = seq
        elif seq > top:
            replay.update(seq)             # clears the slots the window slides over
        else:
            seen[slot] = 1
        # trailer: pad bytes 1, 2, 3, ..., pad length, next header (RFC 4303 s2.4)
        n = len(plaintext) - 2
        pad = plaintext[n]
        end = n - pad
        if pad and plaintext[end:n] != PAD_PREFIX[pad]:   # a negative end never matches
            raise self._drop(DropReason.BAD_PADDING)
        nh = plaintext[-1]
        if nh == 4 and end >= 20 and plaintext[0] >> 4 == 4:          # IPv4 in tunnel mode
            length = plaintext[2] << 8 | plaintext[3]
            if not 20 <= length <= end:
                raise self._bad_inner_length(length, end)
        elif nh == 41 and end >= 40 and plaintext[0] >> 4 == 6:       # IPv6 in tunnel mode
            length = 40 + (plaintext[4] << 8 | plaintext[5])
            if length > end:
                raise self._bad_inner_length(length, end)
        else:
            length = self._other_inner_length(nh, end)
        c = self.counters
        c.packets += 1
        c.bytes += length
        if c.packets >= self._limit_check:
            self._limits_reached()
            self._plan_limit_check()
        return nh, plaintext[:length]       # drops the trailer and any TFC padding

    def _full_seq(self, seq_lo: int, top: int) -> int:
        """ESN: the 64-bit number for the wire's low 32 bits (RFC 4303 A2.2)."""
        size = self.replay.size
        low = top & 0xFFFFFFFF
        if size and low >= size - 1 and seq_lo > low - size:   # case A, in top's epoch
            return top - low + seq_lo
        return self.replay.infer(seq_lo)

    def _replayed(self, seq: int, top: int, seen: int) -> bool:
        """For 0 < seq <= top: too old or already ``seen``, unless anti-replay is off."""
        size = self.replay.size
        return bool(size and (top - seq >= size or seen))

    def _open_other(self, esp: bytes | memoryview, seq: int) -> bytes:
        """Transforms the inline AEAD call does not cover: CBC+HMAC, GMAC, short GCM tags."""
        if (len(esp) - self._overhead) % self._block:
            raise self._drop(DropReason.TRUNCATED, f"{len(esp)} bytes, not whole cipher blocks")
        try:
            return self._open(esp, seq)
        except Drop as d:
            self.counters.drop(d.reason)
            raise

    def _first_or_refuse(self, n: int) -> None:
        """Below the length check: the first packet (build the cipher and go on), or a drop."""
        key = self._key
        if key is None or self._expired or n < self._min_len:
            raise self._truncated_or_expired(n)
        self._key = None
        self._decrypt, self._salt = direct_aead(self.transform, key)
        if self._decrypt is None:
            self._open = make_opener(self.transform, key, self.esn)
        self.replay.own_ring()             # decapsulate writes the ring in place from now on
        self._len_check = self._min_len

    def _plan_limit_check(self) -> None:
        """Packet count at which decapsulate next compares both lifetime limits.

        One comparison per packet instead of two: a packet adds at most
        _MAX_INNER bytes, so the byte limit cannot be crossed before then.
        """
        c = self.counters
        if self.rekey_needed:
            packets, octets = self._hard_packets, self._hard_bytes
        else:
            packets = min(self._soft_packets, self._hard_packets)
            octets = min(self._soft_bytes, self._hard_bytes)
        if octets >= _NEVER:               # no byte limit: the packet limit alone (a shared int)
            self._limit_check = packets
        else:
            self._limit_check = min(packets, c.packets + max(1, (octets - c.bytes) // _MAX_INNER))

    def _truncated_or_expired(self, n: int) -> Drop:
        if self.expired:
            return self._drop(DropReason.SA_EXPIRED)
        return self._drop(DropReason.TRUNCATED, f"{n} bytes")

    def _bad_inner_length(self, length: int, end: int) -> Drop:
        if length < 20:
            return self._drop(DropReason.BAD_INNER, "IPv4 total length below 20")
        return self._drop(DropReason.BAD_INNER, "inner length exceeds payload")

    def _other_inner_length(self, nh: int, end: int) -> int:
        """Length of an inner packet that is neither a well-formed IPv4 nor IPv6 header."""
        if nh == NH_IPV4:
            raise self._drop(DropReason.BAD_INNER, "not an IPv4 header")
        if nh == NH_IPV6:
            raise self._drop(DropReason.BAD_INNER, "not an IPv6 header")
        if nh == NH_NONE:
            raise self._drop(DropReason.DUMMY)
        if end > _MAX_INNER:               # oversized buffer: have the lifetime limits checked now
            self._limit_check = 0
        return end                         # transport-mode or other payload: no length inside
