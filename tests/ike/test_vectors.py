"""Published IKE test vectors (rfc-vectors/ike/*.json), each reproduced to the byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from ike.codec.constants import DhId, EncrId, PrfId
from ike.crypto.dh import MODP_GENERATOR, MODP_PRIMES, ecp_from_private, key_exchange, x25519_from_private
from ike.crypto.keys import child_keymat, prf, prf_len, prf_plus
from ike.crypto.proposals import Negotiated
from ike.crypto.skcipher import IntegrityError, SkCipher

VECTORS = Path(__file__).resolve().parents[2] / "rfc-vectors" / "ike"


def load(name: str) -> dict:
    data = json.loads((VECTORS / name).read_text())
    assert data["source"].split()[0] in ("RFC", "NIST")  # every file names its document
    return data


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def prf_named(name: str) -> PrfId:
    return PrfId[name.removeprefix("PRF_")]  # the files use IANA's "PRF_HMAC_SHA2_256"


def test_every_vector_file_is_used():
    used = {"rfc4868_prf_hmac_sha2.json", "rfc5903_ecp_dh.json", "rfc7748_rfc8031_curve25519.json",
            "rfc7634_ikev2_chacha20poly1305.json", "nist_cavp_ikev2_kdf.json",
            "rfc7427_appendix_a_algorithm_identifiers.json",  # tests/ike/test_rfc7427_vectors.py
            "acvp_fips203_mlkem_decap.json"}  # tests/ike/test_mlkem_vectors.py
    assert {p.name for p in VECTORS.glob("*.json")} == used


@pytest.mark.parametrize("vector", load("rfc4868_prf_hmac_sha2.json")["vectors"],
                         ids=lambda v: f"{v['name']}-{v['prf']}")
def test_rfc4868_prf(vector):
    prf_id = prf_named(vector["prf"])
    assert prf(prf_id, h(vector["key"]), h(vector["data"])) == h(vector["output"])


@pytest.mark.parametrize("vector", load("rfc5903_ecp_dh.json")["vectors"], ids=lambda v: v["section"])
def test_rfc5903_ecp(vector):
    group = DhId(vector["group"])
    initiator = ecp_from_private(group, int(vector["i"], 16))
    responder = ecp_from_private(group, int(vector["r"], 16))
    assert initiator.public == h(vector["gi"])
    assert responder.public == h(vector["gr"])
    assert initiator.shared_secret(h(vector["gr"])) == h(vector["gir"])
    assert responder.shared_secret(h(vector["gi"])) == h(vector["gir"])


@pytest.mark.parametrize("vector", load("rfc5903_ecp_dh.json")["vectors"], ids=lambda v: v["section"])
def test_rfc5903_private_value_through_rng(vector):
    """key_exchange() keeps an in-range value from the rng as is, so the vector's i reproduces."""
    private = h(vector["i"])
    assert key_exchange(vector["group"], lambda n: private[-n:].rjust(n, b"\0")).public == h(vector["gi"])


@pytest.mark.parametrize("vector", load("rfc7748_rfc8031_curve25519.json")["scalar_mult"],
                         ids=lambda v: v["output"][:8])
def test_rfc7748_x25519_function(vector):
    # the function underneath: the peer's "public value" is any u-coordinate
    assert x25519_from_private(h(vector["scalar"])).shared_secret(h(vector["u"])) == h(vector["output"])


@pytest.mark.parametrize("vector", load("rfc7748_rfc8031_curve25519.json")["iterated"],
                         ids=lambda v: str(v["iterations"]))
def test_rfc7748_iterated(vector):
    k = u = (9).to_bytes(32, "little")
    for _ in range(vector["iterations"]):
        k, u = X25519PrivateKey.from_private_bytes(k).exchange(X25519PublicKey.from_public_bytes(u)), k
    assert k == h(vector["output"])


@pytest.mark.parametrize("vector", load("rfc7748_rfc8031_curve25519.json")["key_exchange"],
                         ids=lambda v: v["section"])
def test_curve25519_key_exchange(vector):
    initiator = key_exchange(DhId.CURVE25519, lambda n: h(vector["i"]))
    responder = x25519_from_private(h(vector["r"]))
    assert initiator.public == h(vector["gi"])
    assert responder.public == h(vector["gr"])
    assert initiator.shared_secret(responder.public) == h(vector["gir"])
    assert responder.shared_secret(initiator.public) == h(vector["gir"])


@pytest.mark.parametrize("vector", load("rfc7634_ikev2_chacha20poly1305.json")["vectors"])
def test_rfc7634_ikev2_sk_payload(vector):
    neg = Negotiated(encr=EncrId.CHACHA20_POLY1305, encr_key_bits=None, prf=PrfId.HMAC_SHA2_256,
                     integ=None, dh=DhId.CURVE25519)
    cipher = SkCipher(neg, h(vector["key"]), b"")
    aad, plaintext = h(vector["aad"]), h(vector["plaintext"])
    body = cipher.seal(aad, plaintext, lambda n: h(vector["iv"]))
    assert body == h(vector["iv"]) + h(vector["encrypted"])
    # the lengths in the vector's headers are the ones encrypted_len predicts
    assert int.from_bytes(aad[24:28], "big") == len(aad) + len(body)
    assert int.from_bytes(aad[30:32], "big") == 4 + cipher.encrypted_len(len(plaintext))
    assert cipher.open(aad, body) == plaintext
    with pytest.raises(IntegrityError):
        cipher.open(aad[:-1] + b"\x2a", body)


@pytest.mark.parametrize("vector", load("nist_cavp_ikev2_kdf.json")["vectors"])
def test_nist_ikev2_kdf(vector):
    prf_id = prf_named(vector["prf"])
    ni, nr, gir, gir_new = h(vector["ni"]), h(vector["nr"]), h(vector["gir"]), h(vector["gir_new"])
    skeyseed = prf(prf_id, ni + nr, gir)
    assert skeyseed == h(vector["skeyseed"])
    dkm = prf_plus(prf_id, skeyseed, ni + nr + h(vector["spi_i"]) + h(vector["spi_r"]), vector["dkm_len"])
    assert dkm == h(vector["dkm"])
    sk_d = dkm[:prf_len(prf_id)]
    n = len(h(vector["dkm_child"]))
    assert child_keymat(prf_id, sk_d, ni, nr, n) == h(vector["dkm_child"])
    assert child_keymat(prf_id, sk_d, ni, nr, n, g_ir=gir_new) == h(vector["dkm_child_dh"])
    assert prf(prf_id, sk_d, gir_new + ni + nr) == h(vector["skeyseed_rekey"])


def _pi_times_2_to(bits: int) -> int:
    """floor(pi * 2^bits) by Machin's formula, in integers."""
    def arctan_inv(x: int, one: int) -> int:
        total = term = one // x
        n, sign = 1, 1
        while term:
            term //= x * x
            n, sign = n + 2, -sign
            total += sign * (term // n)
        return total
    one = 1 << (bits + 64)
    return (4 * (4 * arctan_inv(5, one) - arctan_inv(239, one))) >> 64


@pytest.mark.parametrize("group,bits,k", [(14, 2048, 124476), (15, 3072, 1690314), (16, 4096, 240904)])
def test_rfc3526_primes_match_their_definition(group, bits, k):
    """RFC 3526: p = 2^n - 2^(n-64) - 1 + 2^64 * ([2^(n-130) pi] + k), generator 2."""
    expected = 2**bits - 2**(bits - 64) - 1 + 2**64 * (_pi_times_2_to(bits - 130) + k)
    assert MODP_PRIMES[group] == expected
    assert MODP_GENERATOR == 2
