"""ike.crypto.multi_ke on small hand-checked cases (the strongSwan 6.1 fixture test checks real ones)."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest

from ike.codec.constants import ProtocolId
from ike.crypto.multi_ke import (child_keymat_multi, intauth, intauth_chain, intauth_parts, intauth_step,
                                  rekeyed_ike_keys, rekeyed_skeyseed, update_ike_keys, update_ike_keys_all)
from ike.crypto.keys import child_keymat, derive_ike_keys, derive_rekeyed_ike_keys, prf
from ike.crypto.proposals import negotiated, parse_proposals

NEG = negotiated(parse_proposals("aes128gcm16-prfsha256-x25519", ProtocolId.IKE)[0])
SHA256 = NEG.prf
NI, NR = bytes(range(32)), bytes(range(32, 64))
SPI_I, SPI_R = b"\x01" * 8, b"\x02" * 8


def hmac256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


@pytest.fixture
def keys0():
    return derive_ike_keys(NEG, NI, NR, b"\x07" * 32, SPI_I, SPI_R)


def test_intermediate_update_is_hmac_of_old_sk_d(keys0):
    secret = b"\xaa" * 32
    assert prf(SHA256, keys0.sk_d, secret + NI + NR) == hmac256(keys0.sk_d, secret + NI + NR)
    updated = update_ike_keys(NEG, keys0, secret, NI, NR, SPI_I, SPI_R)
    # the same arithmetic as RFC 7296 s2.18's rekey with SK(n) in g^ir's place and the SA's own PRF
    same = derive_rekeyed_ike_keys(NEG, keys0.sk_d, SHA256, NI, NR, secret, SPI_I, SPI_R)
    assert (updated.sk_d, updated.sk_ei, updated.sk_er, updated.sk_pi, updated.sk_pr) == \
        (same.sk_d, same.sk_ei, same.sk_er, same.sk_pi, same.sk_pr)
    assert updated.sk_d != keys0.sk_d and len(updated.sk_ei) == len(keys0.sk_ei) == 20


def test_updates_chain(keys0):
    secrets = [b"\x01" * 32, b"\x02" * 32]
    chain = update_ike_keys_all(NEG, keys0, secrets, NI, NR, SPI_I, SPI_R)
    first = update_ike_keys(NEG, keys0, secrets[0], NI, NR, SPI_I, SPI_R)
    second = update_ike_keys(NEG, first, secrets[1], NI, NR, SPI_I, SPI_R)
    assert [k.sk_d for k in chain] == [first.sk_d, second.sk_d]


def test_rekey_secrets_follow_the_nonces(keys0):
    g_ir, sk1, sk2 = b"\x03" * 32, b"\x04" * 32, b"\x05" * 32
    assert rekeyed_skeyseed(SHA256, keys0.sk_d, g_ir, [sk1, sk2], NI, NR) == \
        hmac256(keys0.sk_d, g_ir + NI + NR + sk1 + sk2)
    # with no additional key exchange it is RFC 7296's rekey
    plain = rekeyed_ike_keys(NEG, SHA256, keys0.sk_d, g_ir, [], NI, NR, SPI_I, SPI_R)
    rfc7296 = derive_rekeyed_ike_keys(NEG, keys0.sk_d, SHA256, NI, NR, g_ir, SPI_I, SPI_R)
    assert plain.sk_d == rfc7296.sk_d and plain.sk_pr == rfc7296.sk_pr


def test_child_keymat(keys0):
    g_ir, sk1 = b"\x03" * 32, b"\x04" * 32
    assert child_keymat_multi(SHA256, keys0.sk_d, None, [], NI, NR, 72) == \
        child_keymat(SHA256, keys0.sk_d, NI, NR, 72)
    assert child_keymat_multi(SHA256, keys0.sk_d, g_ir, [], NI, NR, 72) == \
        child_keymat(SHA256, keys0.sk_d, NI, NR, 72, g_ir)
    with_ke = child_keymat_multi(SHA256, keys0.sk_d, g_ir, [sk1], NI, NR, 72)
    # prf+ T1 = prf(SK_d, seed | 0x01), seed = g^ir | Ni | Nr | SK(1)
    assert with_ke[:32] == hmac256(keys0.sk_d, g_ir + NI + NR + sk1 + b"\x01")


def _message(inner_len: int, padding: int) -> bytes:
    """IKE header + one SK payload with an 8-byte IV, inner_len bytes, padding, pad length, 16-byte ICV."""
    sk_len = 4 + 8 + inner_len + padding + 1 + 16
    header = b"I" * 8 + b"R" * 8 + bytes([46, 0x20, 43, 0x08]) + struct.pack("!II", 1, 28 + sk_len)
    return header + struct.pack("!BBH", 40, 0, sk_len) + b"\x99" * (sk_len - 4)


def test_intauth_parts_adjusts_the_lengths():
    inner = b"P" * 10
    message = _message(len(inner), padding=5)
    parts = intauth_parts(message, 28, inner)
    assert len(parts) == 28 + 4 + 10
    assert parts[:24] == message[:24]
    assert struct.unpack("!I", parts[24:28])[0] == 42  # the IKE Length as if SK held only P
    assert parts[28:30] == message[28:30] and struct.unpack("!H", parts[30:32])[0] == 14
    assert parts[32:] == inner
    assert intauth_parts(_message(0, 0), 28, b"") == parts[:24] + struct.pack("!I", 32) + parts[28:30] + \
        struct.pack("!H", 4)
    with pytest.raises(ValueError):
        intauth_parts(message[:30], 28, inner)


def test_intauth_chain_and_final_value():
    sk_p1, sk_p2 = b"\x11" * 32, b"\x22" * 32
    a1, a2 = b"first message parts", b"second message parts"
    step1 = hmac256(sk_p1, a1)  # IntAuth_0 is empty
    step2 = hmac256(sk_p2, step1 + a2)
    assert intauth_step(SHA256, sk_p1, b"", a1) == step1
    assert intauth_chain(SHA256, [(sk_p1, a1), (sk_p2, a2)]) == step2
    assert intauth_chain(SHA256, []) == b""
    assert intauth(b"i" * 32, b"r" * 32, 2) == b"i" * 32 + b"r" * 32 + b"\x00\x00\x00\x02"
