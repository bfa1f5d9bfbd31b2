"""The recorded strongSwan fixtures are complete and their keys open every SK payload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunnel.lab.ike_pcap import SkError, open_sk, read_ike_frames

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "strongswan"
RECORDS = sorted(FIXTURES.glob("strongswan-*.json"))
EXPECTED_EXCHANGES = ["IKE_SA_INIT", "IKE_AUTH", "CREATE_CHILD_SA", "INFORMATIONAL",
                      "CREATE_CHILD_SA", "INFORMATIONAL", "INFORMATIONAL"]


def test_all_versions_and_suites_recorded():
    assert [p.stem for p in RECORDS] == [f"strongswan-{v}-{s}" for v in ("5.9", "6.0") for s in ("cbc", "gcm")]


@pytest.mark.parametrize("record_path", RECORDS, ids=lambda p: p.stem)
def test_fixture_matches_pcap_and_keys_open_sk(record_path):
    record = json.loads(record_path.read_text())
    frames = read_ike_frames(FIXTURES / record["pcap"])
    assert [f.summary() for f in frames] == record["messages"]
    assert [f.exchange for f in frames[::2]] == EXPECTED_EXCHANGES
    assert all(not q.is_response and r.is_response and q.message_id == r.message_id
               for q, r in zip(frames[::2], frames[1::2], strict=True))
    sas = {(sa["spi_i"], sa["spi_r"]): sa["keys"] for sa in record["ike_sas"]}
    assert len(sas) == 2
    inner_types = []
    for frame in frames[2:]:
        keys = sas[(frame.spi_i.hex(), frame.spi_r.hex())]
        side = "i" if frame.from_initiator else "r"
        integ = bytes.fromhex(keys[f"Sk_a{side}"]) if f"Sk_a{side}" in keys else None
        first, _ = open_sk(frame.message, bytes.fromhex(keys[f"Sk_e{side}"]), integ, record["sk_cipher"])
        inner_types.append(first)
    assert inner_types[0] == 35  # IKE_AUTH request starts with IDi
    # the wrong direction's key must not open it
    frame = frames[2]
    keys = sas[(frame.spi_i.hex(), frame.spi_r.hex())]
    with pytest.raises(SkError):
        open_sk(frame.message, bytes.fromhex(keys["Sk_er"]),
                bytes.fromhex(keys["Sk_ar"]) if "Sk_ar" in keys else None, record["sk_cipher"])
