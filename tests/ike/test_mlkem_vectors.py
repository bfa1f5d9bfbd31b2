"""NIST ACVP known answers for ML-KEM (rfc-vectors/ike/acvp_fips203_mlkem_decap.json).

cryptography takes no message m for encapsulation, so encapsulation KATs cannot be reproduced;
decapsulation with the key given as its seed d || z can, and it exercises key generation from
the seed too (a wrong key pair would decapsulate to the implicit-rejection value instead).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ike.constants import DhId
from ike.crypto import mlkem

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "rfc-vectors" / "ike"
                      / "acvp_fips203_mlkem_decap.json").read_text())
METHODS = {"ML-KEM-768": DhId.ML_KEM_768, "ML-KEM-1024": DhId.ML_KEM_1024}


@pytest.mark.parametrize("case", VECTORS["decapsulation_from_seed"], ids=lambda c: f"{c['parameter_set']}-tc{c['tcId']}")
def test_acvp_decapsulation_from_seed(case):
    initiator = mlkem.from_seed(METHODS[case["parameter_set"]], bytes.fromhex(case["d"] + case["z"]))
    assert initiator.shared_secret(bytes.fromhex(case["c"])) == bytes.fromhex(case["k"])


@pytest.mark.parametrize("case", VECTORS["decapsulation_from_seed"], ids=lambda c: f"{c['parameter_set']}-tc{c['tcId']}")
def test_acvp_wrong_seed_gives_another_secret(case):
    seed = bytearray.fromhex(case["d"] + case["z"])
    seed[0] ^= 1  # another d: another key pair, implicit rejection
    initiator = mlkem.from_seed(METHODS[case["parameter_set"]], bytes(seed))
    assert initiator.shared_secret(bytes.fromhex(case["c"])) != bytes.fromhex(case["k"])
