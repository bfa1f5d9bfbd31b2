"""NIST ACVP known answers for ML-KEM (rfc-vectors/ike/acvp_fips203_mlkem_decap.json).

cryptography takes no message m for encapsulation, so encapsulation KATs cannot be reproduced;
decapsulation with the key given as its seed d || z can. The accepted cases check key
generation from the seed as well (with a wrong key pair the ciphertext would be rejected);
the rejected ones check the implicit-rejection value J(z || c).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ike.codec.constants import DhId
from ike.crypto import mlkem

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "rfc-vectors" / "ike"
                      / "acvp_fips203_mlkem_decap.json").read_text())
CASES = VECTORS["decapsulation_from_seed"]
METHODS = {"ML-KEM-768": DhId.ML_KEM_768, "ML-KEM-1024": DhId.ML_KEM_1024}


def case_id(case: dict) -> str:
    return f"{case['parameter_set']}-tc{case['tcId']}"


def decapsulate(case: dict, d: bytes | None = None, z: bytes | None = None) -> bytes:
    seed = (d or bytes.fromhex(case["d"])) + (z or bytes.fromhex(case["z"]))
    return mlkem.from_seed(METHODS[case["parameter_set"]], seed).shared_secret(bytes.fromhex(case["c"]))


def flipped(hex_value: str) -> bytes:
    value = bytearray.fromhex(hex_value)
    value[0] ^= 1
    return bytes(value)


def test_both_paths_and_sizes_covered():
    assert {(c["parameter_set"], c["path"]) for c in CASES} == {
        (p, path) for p in METHODS for path in ("accept", "implicit rejection")}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_acvp_decapsulation_from_seed(case):
    assert decapsulate(case) == bytes.fromhex(case["k"])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_which_branch_the_case_takes(case):
    """Another d: an accepted ciphertext no longer decapsulates to k; a rejected one still gives
    J(z || c). Another z changes the rejection value but not an accepted secret."""
    k = bytes.fromhex(case["k"])
    accepted = case["path"] == "accept"
    assert (decapsulate(case, d=flipped(case["d"])) == k) is not accepted
    assert (decapsulate(case, z=flipped(case["z"])) == k) is accepted
