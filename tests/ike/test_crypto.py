"""Key exchange, key derivation and SK payload protection."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives import hashes, hmac

from ike.codec.constants import DhId, PrfId, ProtocolId
from ike.crypto.dh import (MODP_PRIMES, SUPPORTED_GROUPS, InvalidKeyExchange, key_exchange, public_value_len,
                    x25519_from_private)
from ike.crypto.keys import (child_keymat, derive_ike_keys, derive_rekeyed_ike_keys, prf, prf_plus, psk_auth,
                      signed_octets, split_child_keymat)
from ike.crypto.proposals import negotiated, parse_proposals
from ike.crypto.skcipher import IntegrityError, SkCipher


def seeded_rng(seed: int):
    gen = random.Random(seed)
    return lambda n: gen.randbytes(n)


def neg_for(text: str):
    return negotiated(parse_proposals(text, ProtocolId.IKE)[0])


# --- key exchange ---------------------------------------------------------------------------

@pytest.mark.parametrize("group", SUPPORTED_GROUPS, ids=lambda g: DhId(g).name)
def test_agreement_both_ways(group):
    a, b = key_exchange(group, seeded_rng(1)), key_exchange(group, seeded_rng(2))
    assert len(a.public) == len(b.public) == public_value_len(group)
    secret = a.shared_secret(b.public)
    assert secret == b.shared_secret(a.public)
    expected_len = {DhId.ECP256: 32, DhId.ECP384: 48, DhId.ECP521: 66, DhId.CURVE25519: 32}
    assert len(secret) == expected_len.get(group, public_value_len(group))


@pytest.mark.parametrize("group", SUPPORTED_GROUPS, ids=lambda g: DhId(g).name)
def test_same_rng_same_key(group):
    assert key_exchange(group, seeded_rng(7)).public == key_exchange(group, seeded_rng(7)).public


def test_private_key_not_in_repr():
    kex = key_exchange(DhId.ECP256, seeded_rng(3))
    assert "_private" not in repr(kex) and "EllipticCurvePrivateKey" not in repr(kex)


def test_modp_secret_is_padded_to_the_modulus():
    group = DhId.MODP2048
    a = key_exchange(group, seeded_rng(4))
    # a peer value giving a short g^ir: y = 2 makes g^ir = 2^x mod p, whatever its length
    secret = a.shared_secret((2).to_bytes(256, "big"))
    assert len(secret) == 256


@pytest.mark.parametrize("group", [DhId.MODP2048, DhId.MODP3072, DhId.MODP4096])
def test_modp_out_of_range_values_rejected(group):
    p = MODP_PRIMES[group]
    size = public_value_len(group)
    kex = key_exchange(group, seeded_rng(5))
    for y in (0, 1, p - 1, p, p + 1, 2**(8 * size) - 1):
        with pytest.raises(InvalidKeyExchange, match="1 < y < p-1"):
            kex.shared_secret(y.to_bytes(size, "big"))


@pytest.mark.parametrize("group", [DhId.ECP256, DhId.ECP384, DhId.ECP521])
def test_ecp_point_not_on_curve_rejected(group):
    kex = key_exchange(group, seeded_rng(6))
    peer = bytearray(key_exchange(group, seeded_rng(8)).public)
    peer[-1] ^= 1  # y changed: off the curve
    with pytest.raises(InvalidKeyExchange, match="not a point"):
        kex.shared_secret(bytes(peer))
    with pytest.raises(InvalidKeyExchange, match="not a point"):
        kex.shared_secret(bytes(len(peer)))  # (0, 0) is not on these curves


@pytest.mark.parametrize("group", SUPPORTED_GROUPS, ids=lambda g: DhId(g).name)
def test_wrong_length_rejected(group):
    kex = key_exchange(group, seeded_rng(9))
    for bad in (b"", kex.public[:-1], kex.public + b"\0", b"\x04" + kex.public):
        with pytest.raises(InvalidKeyExchange, match="must be"):
            kex.shared_secret(bad)


@pytest.mark.parametrize("low_order", [
    bytes(32),  # 0
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order 8
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # p - 1
])
def test_x25519_all_zero_result_rejected(low_order):
    kex = x25519_from_private(bytes(range(32)))
    with pytest.raises(InvalidKeyExchange, match="all zeros"):
        kex.shared_secret(low_order)


def test_unsupported_group():
    with pytest.raises(ValueError, match="MODP1024"):
        key_exchange(DhId.MODP1024, seeded_rng(0))
    with pytest.raises(ValueError):
        key_exchange(999, seeded_rng(0))


# --- key derivation ---------------------------------------------------------------------------

def test_prf_plus_is_the_rfc_construction():
    key, seed = b"k" * 32, b"seed"
    t1 = prf(PrfId.HMAC_SHA2_256, key, seed + b"\x01")
    t2 = prf(PrfId.HMAC_SHA2_256, key, t1 + seed + b"\x02")
    assert prf_plus(PrfId.HMAC_SHA2_256, key, seed, 50) == (t1 + t2)[:50]
    assert len(prf_plus(PrfId.HMAC_SHA2_256, key, seed, 255 * 32)) == 255 * 32
    with pytest.raises(ValueError):
        prf_plus(PrfId.HMAC_SHA2_256, key, seed, 255 * 32 + 1)
    with pytest.raises(ValueError):
        prf(PrfId.AES128_XCBC, key, seed)


@pytest.mark.parametrize("text,lengths", [
    ("aes256gcm16-prfsha256-ecp256", (32, 0, 36)),
    ("aes128-sha256-modp2048", (32, 32, 16)),
    ("chacha20poly1305-prfsha256-x25519", (32, 0, 36)),
    ("aes256-sha512-modp3072", (64, 64, 32)),
    ("aes192-sha1-prfsha384-ecp384", (48, 20, 24)),
])
def test_ike_key_split(text, lengths):
    neg = neg_for(text)
    ni, nr, gir, spi_i, spi_r = b"N" * 32, b"n" * 32, b"g" * 64, b"I" * 8, b"R" * 8
    keys = derive_ike_keys(neg, ni, nr, gir, spi_i, spi_r)
    p, a, e = lengths
    skeyseed = prf(neg.prf, ni + nr, gir)
    stream = prf_plus(neg.prf, skeyseed, ni + nr + spi_i + spi_r, 3 * p + 2 * a + 2 * e)
    expected, offset = [], 0
    for size in (p, a, a, e, e, p, p):
        expected.append(stream[offset:offset + size])
        offset += size
    assert [keys.sk_d, keys.sk_ai, keys.sk_ar, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr] == expected
    assert (keys.prf_len, keys.integ_key_len, keys.encr_key_len) == lengths
    shown = repr(keys)
    assert "sk_" not in shown and stream[:4].hex() not in shown


def test_rekeyed_ike_keys_use_old_prf_for_skeyseed():
    old_neg, new_neg = neg_for("aes128-sha1-modp2048"), neg_for("aes256gcm16-prfsha384-ecp384")
    old_sk_d, ni, nr, gir, spi_i, spi_r = b"d" * 20, b"1" * 32, b"2" * 32, b"g" * 48, b"a" * 8, b"b" * 8
    keys = derive_rekeyed_ike_keys(new_neg, old_sk_d, old_neg.prf, ni, nr, gir, spi_i, spi_r)
    skeyseed = prf(PrfId.HMAC_SHA1, old_sk_d, gir + ni + nr)
    stream = prf_plus(PrfId.HMAC_SHA2_384, skeyseed, ni + nr + spi_i + spi_r, 48)
    assert keys.sk_d == stream and len(keys.sk_ei) == 36


def test_child_keymat_with_and_without_pfs():
    sk_d, ni, nr, gir = b"d" * 32, b"i" * 32, b"r" * 32, b"g" * 32
    plain = child_keymat(PrfId.HMAC_SHA2_256, sk_d, ni, nr, 72)
    assert plain == prf_plus(PrfId.HMAC_SHA2_256, sk_d, ni + nr, 72)
    pfs = child_keymat(PrfId.HMAC_SHA2_256, sk_d, ni, nr, 72, g_ir=gir)
    assert pfs == prf_plus(PrfId.HMAC_SHA2_256, sk_d, gir + ni + nr, 72)
    i2r, r2i = split_child_keymat(pfs)
    assert i2r == pfs[:36] and r2i == pfs[36:]


def test_psk_auth_is_rfc7296_2_15():
    psk, octets = b"secret psk", b"message|nonce|macedid"
    inner = hmac.HMAC(psk, hashes.SHA256())
    inner.update(b"Key Pad for IKEv2")
    outer = hmac.HMAC(inner.finalize(), hashes.SHA256())
    outer.update(octets)
    assert psk_auth(PrfId.HMAC_SHA2_256, psk, octets) == outer.finalize()


def test_signed_octets_layout():
    sk_p, id_body = b"p" * 32, b"\x01\x00\x00\x00\xc0\x00\x02\x01"
    octets = signed_octets(b"MSG", b"NONCE", PrfId.HMAC_SHA2_256, sk_p, id_body)
    assert octets == b"MSGNONCE" + prf(PrfId.HMAC_SHA2_256, sk_p, id_body)


# --- SK payload -------------------------------------------------------------------------------

IKE_PROPOSALS = [
    "aes128-sha1-prfsha1-modp2048", "aes128-sha256-modp2048", "aes192-sha384-ecp384", "aes256-sha512-modp3072",
    "aes128gcm8-prfsha256-ecp256", "aes192gcm12-prfsha256-ecp256", "aes256gcm16-prfsha256-ecp256",
    "chacha20poly1305-prfsha256-x25519",
]
AAD = bytes(range(28)) + b"\x29\x00\x00\x00"  # IKE header + SK payload header


def cipher_pair(text: str):
    neg = neg_for(text)
    keys = derive_ike_keys(neg, b"N" * 32, b"n" * 32, b"g" * 32, b"I" * 8, b"R" * 8)
    return SkCipher(neg, keys.sk_ei, keys.sk_ai), SkCipher(neg, keys.sk_er, keys.sk_ar)


@pytest.mark.parametrize("text", IKE_PROPOSALS)
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100, 1500])
def test_sk_round_trip(text, size):
    initiator, _ = cipher_pair(text)
    plaintext = random.Random(size).randbytes(size)
    body = initiator.seal(AAD, plaintext, seeded_rng(size))
    assert len(body) == initiator.encrypted_len(size)
    assert initiator.open(AAD, body) == plaintext
    assert initiator.max_plaintext_len(len(body)) >= size


@pytest.mark.parametrize("text", IKE_PROPOSALS)
def test_sk_tampering_detected(text):
    cipher, other_direction = cipher_pair(text)
    body = cipher.seal(AAD, b"payloads" * 10, seeded_rng(1))
    for i in range(len(body)):
        tampered = bytearray(body)
        tampered[i] ^= 0x80
        with pytest.raises(IntegrityError):
            cipher.open(AAD, bytes(tampered))
    for i in range(len(AAD)):
        aad = bytearray(AAD)
        aad[i] ^= 1
        with pytest.raises(IntegrityError):
            cipher.open(bytes(aad), body)
    with pytest.raises(IntegrityError):
        other_direction.open(AAD, body)  # SK_er cannot open what SK_ei sealed


@pytest.mark.parametrize("text", IKE_PROPOSALS)
def test_sk_malformed_bodies(text):
    cipher, _ = cipher_pair(text)
    body = cipher.seal(AAD, b"x" * 40, seeded_rng(2))
    for bad in (b"", body[:cipher.iv_len], body[:-1], body + b"\0", body[:cipher.iv_len + cipher.icv_len]):
        with pytest.raises(IntegrityError):
            cipher.open(AAD, bad)


def test_cbc_pads_to_the_block_and_aead_not():
    cbc, _ = cipher_pair("aes128-sha256-modp2048")
    gcm, _ = cipher_pair("aes256gcm16-prfsha256-ecp256")
    assert cbc.encrypted_len(0) == 16 + 16 + 16 and cbc.encrypted_len(15) == 16 + 16 + 16
    assert cbc.encrypted_len(16) == 16 + 32 + 16
    assert gcm.encrypted_len(0) == 8 + 1 + 16 and gcm.encrypted_len(100) == 8 + 101 + 16


def test_cipher_rejects_wrong_key_sizes_and_hides_keys():
    neg = neg_for("aes256gcm16-prfsha256-ecp256")
    with pytest.raises(ValueError, match="36 bytes"):
        SkCipher(neg, b"k" * 32, b"")
    cipher = SkCipher(neg, b"K" * 36, b"")
    assert "KKKK" not in repr(cipher) and "b'" not in repr(cipher)
