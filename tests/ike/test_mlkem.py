"""ML-KEM key exchange objects (ike.crypto.mlkem): the two roles, lengths, FIPS 203 input checks."""

from __future__ import annotations

import hashlib

import pytest

from ike.codec.constants import DhId
from ike.crypto import mlkem
from ike.crypto.dh import InvalidKeyExchange

METHODS = [(DhId.ML_KEM_768, 1184, 1088), (DhId.ML_KEM_1024, 1568, 1568)]


def counter_rng(label: bytes = b"rng"):
    """Deterministic test randomness: SHA-256 in counter mode."""
    state = {"n": 0}

    def rng(size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += hashlib.sha256(label + state["n"].to_bytes(8, "big")).digest()
            state["n"] += 1
        return out[:size]
    return rng


@pytest.mark.parametrize(("method", "ek_len", "ct_len"), METHODS)
def test_initiator_and_responder_agree(method, ek_len, ct_len):
    initiator = mlkem.key_exchange(method, counter_rng())
    responder = mlkem.key_exchange(method, counter_rng(b"other"), initiator=False)
    assert len(initiator.public) == ek_len == mlkem.public_value_len(method, initiator=True)
    secret_r = responder.shared_secret(initiator.public)
    assert len(responder.public) == ct_len == mlkem.public_value_len(method, initiator=False)
    secret_i = initiator.shared_secret(responder.public)
    assert secret_i == secret_r and len(secret_i) == mlkem.SHARED_SECRET_LEN
    assert (initiator.group, responder.group) == (method, method)


@pytest.mark.parametrize(("method", "ek_len", "ct_len"), METHODS)
def test_key_generation_is_reproducible_from_rng(method, ek_len, ct_len):
    a = mlkem.key_exchange(method, counter_rng())
    b = mlkem.key_exchange(method, counter_rng())
    c = mlkem.key_exchange(method, counter_rng(b"different"))
    assert a.public == b.public != c.public
    assert a.public == mlkem.from_seed(method, counter_rng()(64)).public


@pytest.mark.parametrize(("method", "ek_len", "ct_len"), METHODS)
def test_wrong_lengths_are_invalid_key_exchange(method, ek_len, ct_len):
    for bad in (b"", bytes(ek_len - 1), bytes(ek_len + 1)):
        with pytest.raises(InvalidKeyExchange, match="encapsulation key must be"):
            mlkem.key_exchange(method, counter_rng(), initiator=False).shared_secret(bad)
    for bad in (b"", bytes(ct_len - 1), bytes(ct_len + 1)):
        with pytest.raises(InvalidKeyExchange, match="ciphertext must be"):
            mlkem.key_exchange(method, counter_rng()).shared_secret(bad)
    with pytest.raises(InvalidKeyExchange):
        mlkem.key_exchange(method, counter_rng()).shared_secret("not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize(("method", "ek_len", "ct_len"), METHODS)
@pytest.mark.parametrize("position", [0, 100, -33])
def test_encapsulation_key_modulus_check(method, ek_len, ct_len, position):
    """FIPS 203 s7.2: every 12-bit coefficient of t-hat must be below q = 3329."""
    ek = bytearray(mlkem.key_exchange(method, counter_rng()).public)
    start = (position % (ek_len - 32)) // 3 * 3  # a 3-byte group holds two coefficients
    ek[start] = 0xFF
    ek[start + 1] |= 0x0F  # the first coefficient of the group: 0xFFF = 4095 >= q
    with pytest.raises(InvalidKeyExchange, match="modulus check"):
        mlkem.key_exchange(method, counter_rng(), initiator=False).shared_secret(bytes(ek))
    ek[start], ek[start + 1] = 0x00, ek[start + 1] & 0xF0 | 0x0D  # 0xD00 = 3328 = q - 1: valid
    mlkem.key_exchange(method, counter_rng(), initiator=False).shared_secret(bytes(ek))


@pytest.mark.parametrize(("method", "ek_len", "ct_len"), METHODS)
def test_forged_ciphertext_gives_an_unrelated_secret(method, ek_len, ct_len):
    """Decapsulation's implicit rejection: no error, a secret the responder does not have; the
    mismatch shows when the first message under the derived keys fails to authenticate."""
    initiator = mlkem.key_exchange(method, counter_rng())
    responder = mlkem.key_exchange(method, counter_rng(), initiator=False)
    secret_r = responder.shared_secret(initiator.public)
    forged = bytearray(responder.public)
    forged[0] ^= 1
    assert initiator.shared_secret(bytes(forged)) != secret_r


def test_roles_are_enforced():
    responder = mlkem.key_exchange(DhId.ML_KEM_768, counter_rng(), initiator=False)
    with pytest.raises(RuntimeError, match="no ciphertext"):
        _ = responder.public
    initiator = mlkem.key_exchange(DhId.ML_KEM_768, counter_rng())
    responder.shared_secret(initiator.public)
    with pytest.raises(RuntimeError, match="single-use"):
        responder.shared_secret(initiator.public)


def test_ml_kem_512_and_others_unsupported():
    assert mlkem.is_kem(DhId.ML_KEM_512) and not mlkem.is_kem(DhId.ECP256)
    with pytest.raises(ValueError, match="ML-KEM-512"):
        mlkem.key_exchange(DhId.ML_KEM_512, counter_rng())
    with pytest.raises(ValueError):
        mlkem.key_exchange(DhId.ECP256, counter_rng())
    with pytest.raises(ValueError):
        mlkem.from_seed(DhId.ML_KEM_768, bytes(63))


def test_repr_shows_no_key_material():
    initiator = mlkem.key_exchange(DhId.ML_KEM_768, counter_rng())
    text = repr(initiator)
    assert "initiator=True" in text and initiator.public.hex()[:16] not in text and "private" not in text.lower()
