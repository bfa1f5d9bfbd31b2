"""Key updates for multiple key exchanges (RFC 9370) and the IKE_INTERMEDIATE AUTH input (RFC 9242).

Pure functions over bytes; the PRF and prf+ are ike.crypto.keys'. After the IKE_SA_INIT keys (RFC 7296
s2.14), each IKE_INTERMEDIATE exchange n that completes an additional key exchange with shared
secret SK(n) replaces all seven keys (RFC 9370 s2.2.2):

    SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr)
    {SK_d(n) | SK_ai(n) | SK_ar(n) | SK_ei(n) | SK_er(n) | SK_pi(n) | SK_pr(n)}
        = prf+(SKEYSEED(n), Ni | Nr | SPIi | SPIr)

with the IKE_SA_INIT nonces and SPIs throughout. IKE_AUTH then signs the IKE_INTERMEDIATE
messages too (RFC 9242 s3.3.2): each side's IntAuth chain is a prf, keyed with the SK_pi/SK_pr
in force when the message was sent, over the message's plaintext parts.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Protocol

from ike.crypto import dh, mlkem
from ike.crypto.dh import Rng
from ike.crypto.keys import IkeKeys, _split_ike_keys, prf, prf_plus
from ike.crypto.proposals import Negotiated


def update_ike_keys(neg: Negotiated, keys: IkeKeys, shared_secret: bytes, ni: bytes, nr: bytes,
                    spi_i: bytes, spi_r: bytes) -> IkeKeys:
    """The keys after one IKE_INTERMEDIATE additional key exchange (RFC 9370 s2.2.2)."""
    if neg.prf is None:
        raise ValueError("an IKE SA needs a PRF")
    skeyseed = prf(neg.prf, keys.sk_d, shared_secret + ni + nr)
    return _split_ike_keys(neg, skeyseed, ni, nr, spi_i, spi_r)


def update_ike_keys_all(neg: Negotiated, keys: IkeKeys, shared_secrets: Iterable[bytes], ni: bytes,
                        nr: bytes, spi_i: bytes, spi_r: bytes) -> list[IkeKeys]:
    """Each intermediate key set in order: [keys(1), ..., keys(n)] for SK(1) .. SK(n)."""
    out: list[IkeKeys] = []
    for secret in shared_secrets:
        keys = update_ike_keys(neg, keys, secret, ni, nr, spi_i, spi_r)
        out.append(keys)
    return out


def rekeyed_skeyseed(old_prf: int, old_sk_d: bytes, g_ir: bytes, additional: Sequence[bytes],
                     ni: bytes, nr: bytes) -> bytes:
    """IKE SA rekey with additional key exchanges (RFC 9370 s2.2.4), with the old SA's PRF:
    SKEYSEED = prf(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)), SK(0) the CREATE_CHILD_SA's
    g^ir. The additional secrets follow the nonces, so with none it is RFC 7296 s2.18's."""
    return prf(old_prf, old_sk_d, g_ir + ni + nr + b"".join(additional))


def rekeyed_ike_keys(neg: Negotiated, old_prf: int, old_sk_d: bytes, g_ir: bytes,
                     additional: Sequence[bytes], ni: bytes, nr: bytes, spi_i: bytes,
                     spi_r: bytes) -> IkeKeys:
    """The new IKE SA's keys after CREATE_CHILD_SA + IKE_FOLLOWUP_KE (RFC 9370 s2.2.4): the
    SKEYSEED above, then prf+(SKEYSEED, Ni | Nr | SPIi | SPIr) with the new SA's PRF."""
    skeyseed = rekeyed_skeyseed(old_prf, old_sk_d, g_ir, additional, ni, nr)
    return _split_ike_keys(neg, skeyseed, ni, nr, spi_i, spi_r)


def child_keymat_multi(prf_id: int, sk_d: bytes, g_ir: bytes | None, additional: Sequence[bytes],
                       ni: bytes, nr: bytes, length: int) -> bytes:
    """CHILD SA KEYMAT with additional key exchanges (RFC 9370 s2.2.4):
    prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)); no PFS group leaves SK(0) out."""
    return prf_plus(prf_id, sk_d, (g_ir or b"") + ni + nr + b"".join(additional), length)


# -- RFC 9242 s3.3.2 -----------------------------------------------------------------------------

IKE_HEADER_LEN = 28
SK_HEADER_LEN = 4  # the Encrypted payload's generic header
_PAYLOAD_SK = 46


def intauth_parts(message: bytes, sk_offset: int, inner_plaintext: bytes) -> bytes:
    """IntAuth_A | IntAuth_P of one IKE_INTERMEDIATE message.

    ``message`` is the message as sent (IKE header first, no non-ESP marker); ``sk_offset`` is
    where the Encrypted payload's generic header starts; ``inner_plaintext`` its inner payloads,
    without IV, padding, Pad Length or ICV. A (the AEAD associated data's scope) runs from the
    IKE header to the end of the SK payload's generic header; P is the inner payloads, empty
    when there are none. The IKE header's Length and the SK payload's Payload Length are those
    of a message whose SK payload held only P (as strongSwan 6.1 computes them too).
    """
    if len(message) < sk_offset + SK_HEADER_LEN or sk_offset < IKE_HEADER_LEN:
        raise ValueError("message too short for its Encrypted payload header")
    head = bytearray(message[:sk_offset + SK_HEADER_LEN])
    struct.pack_into("!I", head, 24, len(head) + len(inner_plaintext))
    struct.pack_into("!H", head, sk_offset + 2, SK_HEADER_LEN + len(inner_plaintext))
    return bytes(head) + inner_plaintext


def intauth_parts_reassembled(first_fragment: bytes, first_inner: int, inner_plaintext: bytes) -> bytes:
    """IntAuth_A | IntAuth_P of a fragmented IKE_INTERMEDIATE message (RFC 7383): computed as for
    the message unfragmented, i.e. the first fragment's IKE header with SK (46) as next payload, an
    SK generic header whose next payload is ``first_inner`` (the first fragment's SKF header
    names it), and the reassembled inner payloads; lengths as intauth_parts sets them."""
    if len(first_fragment) < IKE_HEADER_LEN:
        raise ValueError("fragment too short for an IKE header")
    header = bytearray(first_fragment[:IKE_HEADER_LEN])
    header[16] = _PAYLOAD_SK
    sk_header = struct.pack("!BBH", first_inner, 0, SK_HEADER_LEN)
    return intauth_parts(bytes(header) + sk_header, IKE_HEADER_LEN, inner_plaintext)


def intauth_step(prf_id: int, sk_p: bytes, previous: bytes, message_parts: bytes) -> bytes:
    """IntAuth_n = prf(SK_p(n), IntAuth_(n-1) | IntAuth_n_A [| IntAuth_n_P]); IntAuth_0 is empty."""
    return prf(prf_id, sk_p, previous + message_parts)


def intauth_chain(prf_id: int, steps: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The final IntAuth of one direction: ``steps`` are (SK_p in force, message parts) in order."""
    value = b""
    for sk_p, parts in steps:
        value = intauth_step(prf_id, sk_p, value, parts)
    return value


def intauth(intauth_i: bytes, intauth_r: bytes, ike_auth_mid: int) -> bytes:
    """IntAuth = IntAuth_iN | IntAuth_rN | IKE_AUTH_MID, appended to both SignedOctets (s3.3.2)."""
    return intauth_i + intauth_r + struct.pack("!I", ike_auth_mid)


def intauth_of(header: bytes, first_inner: int, inner_plaintext: bytes) -> bytes:
    """IntAuth_A | IntAuth_P of a message given its IKE header (any Length; it is set here), the
    type of its first inner payload and its inner payloads: the same bytes as intauth_parts for
    the message as sent, whole or fragmented (s3.3.2, RFC 7383 s3)."""
    if len(header) != IKE_HEADER_LEN:
        raise ValueError("an IKE header is 28 bytes")
    head = bytearray(header)
    head[16] = _PAYLOAD_SK
    return intauth_parts(bytes(head) + struct.pack("!BBH", first_inner, 0, SK_HEADER_LEN),
                         IKE_HEADER_LEN, inner_plaintext)


class AdditionalKeyExchange(Protocol):
    """What an additional key exchange offers, whether a KEM (ike.crypto.mlkem) or a DH group."""

    group: int

    @property
    def public(self) -> bytes: ...

    def shared_secret(self, peer_data: bytes) -> bytes: ...


def additional_key_exchange(method: int, rng: Rng, *, initiator: bool) -> AdditionalKeyExchange:
    """One side of an additional key exchange: ML-KEM in its role (the initiator sends the
    encapsulation key, the responder the ciphertext), or a DH group; ValueError if unsupported."""
    if mlkem.is_kem(method):
        return mlkem.key_exchange(method, rng, initiator=initiator)
    return dh.key_exchange(method, rng)


def supported_method(method: int) -> bool:
    return method in mlkem.SUPPORTED_METHODS or method in dh.SUPPORTED_GROUPS
