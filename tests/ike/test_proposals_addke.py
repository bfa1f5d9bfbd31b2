"""RFC 9370 additional key exchanges in proposals: strongSwan's keN_ syntax, SA payload
encoding (transform types 6-12) and selection; checked against strongSwan 6.1's own SA payloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ike.codec.constants import DhId, ProtocolId, TransformType
from ike.codec.message import decode
from ike.codec.payloads import SaPayload
from ike.crypto.proposals import (Proposal, Transform, format_proposal, negotiated, parse_proposals, select_proposal,
                           without_dh)
from tunnel.lab.ike_pcap import read_ike_frames
from tests.ike.harness import IkeSaUp, NegotiationFailed, Pair, mirrored

IKE, ESP = ProtocolId.IKE, ProtocolId.ESP
ISSUE_EXAMPLES = [  # issue #16's proposals, as strongSwan writes them
    ("aes256gcm16-prfsha384-ecp384-ke1_mlkem768", IKE),
    ("aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke2_mlkem1024", IKE),
    ("aes256gcm16-ecp384-ke1_mlkem768", ESP),
    ("aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke1_none", IKE),
    ("aes128-sha256-modp3072-ke1_mlkem512-ke3_ecp256-ke7_mlkem1024", ESP),
]
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "strongswan61" / "strongswan-6.1-mlkem768.json"


def one(text: str, protocol: ProtocolId = IKE) -> Proposal:
    (proposal,) = parse_proposals(text, protocol)
    return proposal


@pytest.mark.parametrize(("text", "protocol"), ISSUE_EXAMPLES)
def test_parse_format_round_trip(text, protocol):
    proposal = one(text, protocol)
    assert format_proposal(proposal) == text
    assert format_proposal(one(format_proposal(proposal), protocol)) == text


def test_addke_transforms():
    p = one("aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke2_mlkem1024")
    assert p.of_type(TransformType.ADDKE1) == [Transform(TransformType.ADDKE1, DhId.ML_KEM_768)]
    assert p.of_type(TransformType.ADDKE2) == [Transform(TransformType.ADDKE2, DhId.ML_KEM_1024)]
    assert [tr.id for tr in one("aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke1_none")
            .of_type(TransformType.ADDKE1)] == [DhId.ML_KEM_768, DhId.NONE]


@pytest.mark.parametrize("text", ["aes256gcm16-prfsha256-x25519-ke8_mlkem768",
                                  "aes256gcm16-prfsha256-x25519-ke0_mlkem768",
                                  "aes256gcm16-prfsha256-x25519-ke1_sha256",
                                  "aes256gcm16-prfsha256-x25519-ke1_",
                                  "aes256gcm16-prfsha256-x25519-ke1_mlkem123"])
def test_bad_addke_keywords(text):
    with pytest.raises(ValueError):
        parse_proposals(text, IKE)


@pytest.mark.parametrize(("text", "protocol"), ISSUE_EXAMPLES)
def test_sa_payload_round_trip(text, protocol):
    proposal = one(text, protocol)
    if protocol == ESP:
        proposal.spi = b"\x01\x02\x03\x04"
    body = SaPayload([proposal]).body()
    (back,) = SaPayload.parse(body).proposals
    assert back.transforms == proposal.transforms
    assert format_proposal(back) == text
    # RFC 7296 s3.3.2 transform substructures: type byte at offset 4 of each
    types = set()
    pos = 8 + len(proposal.spi)
    while pos < len(body):
        types.add(body[pos + 4])
        pos += int.from_bytes(body[pos + 2:pos + 4], "big")
    assert types == {int(tr.type) for tr in proposal.transforms}
    assert any(6 <= t <= 12 for t in types)


def test_strongswan_61_sa_payloads():
    """strongSwan 6.1's IKE_SA_INIT offer decodes to our parse of the same string, and our
    selection from it is what its responder chose."""
    record = json.loads(FIXTURE.read_text())
    frames = read_ike_frames(FIXTURE.parent / record["pcap"])
    offered = decode(frames[0].message).get(SaPayload).proposals
    answered = decode(frames[1].message).get(SaPayload).proposals
    own = parse_proposals(record["ike_proposal"], IKE)
    assert [sorted(p.transforms, key=repr) for p in offered] == [sorted(p.transforms, key=repr) for p in own]
    chosen = select_proposal(own, offered)
    assert chosen is not None and len(answered) == 1
    assert sorted(chosen.transforms, key=repr) == sorted(answered[0].transforms, key=repr)
    assert negotiated(chosen).additional_ke == ((1, DhId.ML_KEM_768),)
    assert negotiated(chosen).describe() == "AES_GCM_16_256/HMAC_SHA2_384/ECP384/KE1_ML_KEM_768"


def select(own: str, offered: str, protocol: ProtocolId = IKE, **kw) -> Proposal | None:
    return select_proposal(parse_proposals(own, protocol), parse_proposals(offered, protocol), **kw)


BASE = "aes256gcm16-prfsha256-x25519"


def test_select_matching_addke():
    chosen = select(f"{BASE}-ke1_mlkem768", f"{BASE}-ke1_mlkem768")
    assert format_proposal(chosen) == f"{BASE}-ke1_mlkem768"
    assert negotiated(chosen).additional_ke == ((1, DhId.ML_KEM_768),)


def test_select_two_addke_types():
    text = f"{BASE}-ke1_mlkem768-ke2_mlkem1024"
    assert negotiated(select(text, text)).additional_ke == ((1, DhId.ML_KEM_768), (2, DhId.ML_KEM_1024))


def test_select_by_own_preference():
    chosen = select(f"{BASE}-ke1_mlkem1024-ke1_mlkem768", f"{BASE}-ke1_mlkem768-ke1_mlkem1024")
    assert negotiated(chosen).additional_ke == ((1, DhId.ML_KEM_1024),)


def test_required_addke_missing_from_offer():
    assert select(f"{BASE}-ke1_mlkem768", BASE) is None


def test_offered_addke_we_lack():
    """Every offered ADDKE type needs a choice (RFC 9370 s2.2.1): no match without NONE."""
    assert select(BASE, f"{BASE}-ke1_mlkem768") is None
    assert select(f"{BASE}-ke1_mlkem512", f"{BASE}-ke1_mlkem768") is None


def test_none_makes_addke_optional_on_either_side():
    for own, offered in ((f"{BASE}-ke1_mlkem768-ke1_none", BASE),
                         (BASE, f"{BASE}-ke1_mlkem768-ke1_none"),
                         (f"{BASE}-ke1_none-ke1_mlkem768", f"{BASE}-ke1_mlkem768-ke1_none")):
        chosen = select(own, offered)
        assert chosen is not None and format_proposal(chosen) == BASE, (own, offered)
        assert negotiated(chosen).additional_ke == ()
    chosen = select(f"{BASE}-ke1_mlkem768-ke1_none", f"{BASE}-ke1_mlkem768-ke1_none")
    assert negotiated(chosen).additional_ke == ((1, DhId.ML_KEM_768),)


def test_none_in_one_type_does_not_excuse_another():
    assert select(f"{BASE}-ke1_none-ke2_mlkem768", BASE) is None
    chosen = select(f"{BASE}-ke1_none-ke2_mlkem768", f"{BASE}-ke2_mlkem768")
    assert negotiated(chosen).additional_ke == ((2, DhId.ML_KEM_768),)


def test_esp_addke_selection_and_ike_auth_skip():
    own, offered = "aes256gcm16-ecp384-ke1_mlkem768", "aes256gcm16-ecp384-ke1_mlkem768"
    assert negotiated(select(own, offered, ESP)).additional_ke == ((1, DhId.ML_KEM_768),)
    # the CHILD SA of IKE_AUTH: the initiator sends no KE transforms at all, the responder skips them
    sent = without_dh(parse_proposals(offered, ESP))
    assert not any(tr.type in (TransformType.DH, TransformType.ADDKE1) for tr in sent[0].transforms)
    chosen = select_proposal(parse_proposals(own, ESP), sent, skip_dh=True)
    assert chosen is not None and format_proposal(chosen) == "aes256gcm16"
    assert negotiated(chosen).additional_ke == ()


def test_proposals_without_addke_unchanged():
    chosen = select("aes256gcm16-prfsha256-ecp256,aes128-sha256-modp2048", "aes128-sha256-modp2048")
    assert format_proposal(chosen) == "aes128-sha256-prfsha256-modp2048"
    assert negotiated(chosen).additional_ke == ()


def test_a_responder_without_additional_key_exchanges_refuses_hybrid_only_and_takes_a_fallback():
    """IKE_INTERMEDIATE is not implemented: a peer offering only a hybrid proposal gets
    NO_PROPOSAL_CHOSEN, and one with a classic fallback gets the fallback (issue #16's baseline)."""
    a, b = mirrored(a_ike="aes256gcm16-prfsha384-ecp384-ke1_mlkem768")
    pair = Pair([a], [b])
    pair.a.initiate("site", None, 0.0)
    pair.run()
    assert [e.notify for e in pair.of("a", NegotiationFailed)] == ["NO_PROPOSAL_CHOSEN"]
    assert not pair.of("b", IkeSaUp)
    a, b = mirrored(a_ike="aes256gcm16-prfsha384-ecp384-ke1_mlkem768, aes256gcm16-prfsha256-ecp256")
    pair = Pair([a], [b])
    pair.a.initiate("site", None, 0.0)
    pair.run()
    assert [e.proposal for e in pair.of("a", IkeSaUp)] == ["aes256gcm16-prfsha256-ecp256"]
