"""IKEv2 key derivation (RFC 7296 s2.13-2.18) and PSK authentication (s2.15).

Only HMAC-based PRFs: their preferred key size is the hash output, and SKEYSEED takes Ni | Nr
whole as the key (AES-XCBC/CMAC PRFs would need the s2.14 key handling; not implemented).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, hmac

from ike.codec.constants import PrfId
from ike.crypto.proposals import Negotiated

_PRF_HASHES: dict[int, Callable[[], hashes.HashAlgorithm]] = {
    PrfId.HMAC_SHA1: hashes.SHA1, PrfId.HMAC_SHA2_256: hashes.SHA256,
    PrfId.HMAC_SHA2_384: hashes.SHA384, PrfId.HMAC_SHA2_512: hashes.SHA512}
SUPPORTED_PRFS: tuple[int, ...] = tuple(_PRF_HASHES)
PSK_KEY_PAD = b"Key Pad for IKEv2"  # RFC 7296 s2.15, 17 ASCII characters, no NUL
NONCE_LEN = 32  # bytes of every nonce we send (RFC 7296 s2.10: at least half the PRF key size, 16 minimum)


def _hash(prf_id: int) -> hashes.HashAlgorithm:
    try:
        return _PRF_HASHES[prf_id]()
    except KeyError:
        raise ValueError(f"unsupported PRF {prf_id}") from None


def prf_len(prf_id: int) -> int:
    """Output (and preferred key) length of a PRF in bytes."""
    return _hash(prf_id).digest_size


def prf(prf_id: int, key: bytes, data: bytes) -> bytes:
    mac = hmac.HMAC(key, _hash(prf_id))
    mac.update(data)
    return mac.finalize()


def prf_plus(prf_id: int, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ (RFC 7296 s2.13): T1 | T2 | ... with Tn = prf(K, Tn-1 | S | n), at most 255 blocks."""
    size = prf_len(prf_id)
    if length < 0 or length > 255 * size:
        raise ValueError(f"prf+ can give 0..{255 * size} bytes with this PRF, not {length}")
    out, block = bytearray(), b""
    counter = 1
    while len(out) < length:
        block = prf(prf_id, key, block + seed + bytes([counter]))
        out += block
        counter += 1
    return bytes(out[:length])


_KEY_OFFSETS: dict[tuple[int, ...], tuple[int, ...]] = {}


def _key_offsets(lengths: tuple[int, ...]) -> tuple[int, ...]:
    """Where each key starts, then the end: one shared tuple per combination of key lengths."""
    offsets = _KEY_OFFSETS.get(lengths)
    if offsets is None:
        offsets = _KEY_OFFSETS[lengths] = tuple(itertools.accumulate(lengths, initial=0))
    return offsets


def _key(index: int, doc: str) -> property:
    def read(self: IkeKeys) -> bytes:
        offsets = self._offsets
        return self._material[offsets[index]:offsets[index + 1]]
    return property(read, doc=doc)


class IkeKeys:
    """The seven keys of an IKE SA; lengths are visible in repr, the keys are not.

    Kept as one bytes object in prf+ order and sliced when read (IKE messages are rare): seven
    bytes objects and their attributes cost ~130 B more per SA, and a gateway holds thousands.
    """

    __slots__ = ("_material", "_offsets")

    def __init__(self, sk_d: bytes, sk_ai: bytes, sk_ar: bytes, sk_ei: bytes, sk_er: bytes, sk_pi: bytes,
                 sk_pr: bytes) -> None:
        keys = (sk_d, sk_ai, sk_ar, sk_ei, sk_er, sk_pi, sk_pr)
        self._material = b"".join(keys)
        self._offsets = _key_offsets(tuple(len(k) for k in keys))

    sk_d = _key(0, "derives CHILD SA keys and the next IKE SA's SKEYSEED")
    sk_ai = _key(1, "integrity, initiator to responder (empty with AEAD)")
    sk_ar = _key(2, "integrity, responder to initiator (empty with AEAD)")
    sk_ei = _key(3, "encryption, initiator to responder (AEAD: with its salt)")
    sk_er = _key(4, "encryption, responder to initiator (AEAD: with its salt)")
    sk_pi = _key(5, "the initiator's AUTH payload")
    sk_pr = _key(6, "the responder's AUTH payload")

    @property
    def prf_len(self) -> int:
        return self._offsets[1]

    @property
    def integ_key_len(self) -> int:
        return self._offsets[2] - self._offsets[1]

    @property
    def encr_key_len(self) -> int:
        return self._offsets[4] - self._offsets[3]

    def forget_auth_keys(self) -> None:
        """Drop SK_pi and SK_pr: they only sign IKE_AUTH (rekeyed IKE SAs derive new ones)."""
        offsets = self._offsets
        self._material = self._material[:offsets[5]]
        self._offsets = _key_offsets(tuple(offsets[i + 1] - offsets[i] for i in range(5)) + (0, 0))

    def forget(self) -> None:
        """Drop all seven keys (the SA is gone; bytes cannot be wiped, only released)."""
        self._material = b""
        self._offsets = _key_offsets((0,) * 7)

    def __repr__(self) -> str:
        return f"IkeKeys(prf_len={self.prf_len}, integ_key_len={self.integ_key_len}, encr_key_len={self.encr_key_len})"


def _split_ike_keys(neg: Negotiated, skeyseed: bytes, ni: bytes, nr: bytes, spi_i: bytes,
                    spi_r: bytes) -> IkeKeys:
    if neg.prf is None:
        raise ValueError("an IKE SA needs a PRF")
    if len(spi_i) != 8 or len(spi_r) != 8:
        raise ValueError("IKE SPIs are 8 bytes each")
    p, a, e = prf_len(neg.prf), neg.integ_key_len, neg.encr_key_len
    material = prf_plus(neg.prf, skeyseed, ni + nr + spi_i + spi_r, 3 * p + 2 * a + 2 * e)
    offsets, keys = 0, []
    for size in (p, a, a, e, e, p, p):
        keys.append(material[offsets:offsets + size])
        offsets += size
    return IkeKeys(*keys)


def derive_ike_keys(neg: Negotiated, ni: bytes, nr: bytes, g_ir: bytes, spi_i: bytes, spi_r: bytes) -> IkeKeys:
    """SKEYSEED = prf(Ni | Nr, g^ir); {SK_d|SK_ai|SK_ar|SK_ei|SK_er|SK_pi|SK_pr} = prf+(SKEYSEED,
    Ni | Nr | SPIi | SPIr) (RFC 7296 s2.14). AEAD SK_e include their 4-byte salt."""
    if neg.prf is None:
        raise ValueError("an IKE SA needs a PRF")
    skeyseed = prf(neg.prf, ni + nr, g_ir)
    return _split_ike_keys(neg, skeyseed, ni, nr, spi_i, spi_r)


def derive_rekeyed_ike_keys(neg: Negotiated, old_sk_d: bytes, old_prf: int, ni: bytes, nr: bytes,
                            g_ir: bytes, spi_i: bytes, spi_r: bytes) -> IkeKeys:
    """Rekeyed IKE SA (RFC 7296 s2.18): SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) with the
    OLD SA's PRF; the keys then come from prf+ of the NEW SA's PRF, new nonces and new SPIs."""
    skeyseed = prf(old_prf, old_sk_d, g_ir + ni + nr)
    return _split_ike_keys(neg, skeyseed, ni, nr, spi_i, spi_r)


def child_keymat(prf_id: int, sk_d: bytes, ni: bytes, nr: bytes, length: int, g_ir: bytes | None = None) -> bytes:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (RFC 7296 s2.17).

    The caller splits it: the first half protects initiator-to-responder traffic, the second
    half responder-to-initiator; each half is encryption key | salt | integrity key.
    """
    return prf_plus(prf_id, sk_d, (g_ir or b"") + ni + nr, length)


def split_child_keymat(keymat: bytes) -> tuple[bytes, bytes]:
    """(initiator-to-responder, responder-to-initiator) halves of a CHILD SA's KEYMAT."""
    if len(keymat) % 2:
        raise ValueError("CHILD SA KEYMAT must have an even length")
    half = len(keymat) // 2
    return keymat[:half], keymat[half:]


def psk_auth(prf_id: int, psk: bytes, signed_octets: bytes) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>) (RFC 7296 s2.15)."""
    return prf(prf_id, prf(prf_id, psk, PSK_KEY_PAD), signed_octets)


def signed_octets(message: bytes, nonce_peer: bytes, prf_id: int, sk_p: bytes, id_payload_body: bytes) -> bytes:
    """<Initiator|Responder>SignedOctets = RealMessage | Nonce of the peer | prf(SK_px, IDx').

    ``message`` is the sender's own IKE_SA_INIT message as sent; ``nonce_peer`` the other side's
    nonce data; ``sk_p`` SK_pi for the initiator, SK_pr for the responder; ``id_payload_body``
    the ID payload without its generic header: ID type (1) | reserved (3) | identification data.
    """
    return message + nonce_peer + prf(prf_id, sk_p, id_payload_body)
