"""strongSwan-style proposal strings, selection by the responder's preference, negotiated algorithms."""

from __future__ import annotations

import pytest

from ike.codec.constants import DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from ike.crypto.proposals import (Proposal, Transform, format_proposal, negotiated, parse_proposals,
                           select_proposal, without_dh)

IKE, ESP = ProtocolId.IKE, ProtocolId.ESP


def one(text: str, protocol: ProtocolId = IKE) -> Proposal:
    [proposal] = parse_proposals(text, protocol)
    return proposal


def test_aead_ike_proposal():
    p = one("aes256gcm16-prfsha256-ecp256")
    assert p.transforms == [Transform(TransformType.ENCR, EncrId.AES_GCM_16, 256),
                            Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
                            Transform(TransformType.DH, DhId.ECP256)]


def test_classic_ike_proposal_takes_prf_from_integrity():
    p = one("aes128-sha256-modp2048")
    assert p.of_type(TransformType.PRF) == [Transform(TransformType.PRF, PrfId.HMAC_SHA2_256)]
    assert p.of_type(TransformType.INTEG) == [Transform(TransformType.INTEG, IntegId.HMAC_SHA2_256_128)]
    assert p.of_type(TransformType.ENCR) == [Transform(TransformType.ENCR, EncrId.AES_CBC, 128)]


def test_several_algorithms_of_one_type():
    p = one("aes128-aes256-sha256-sha384-modp2048-ecp256")
    assert [t.key_length for t in p.of_type(TransformType.ENCR)] == [128, 256]
    assert [t.id for t in p.of_type(TransformType.PRF)] == [PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA2_384]
    assert [t.id for t in p.of_type(TransformType.DH)] == [DhId.MODP2048, DhId.ECP256]


def test_esp_defaults_to_no_esn_and_keeps_pfs_group():
    p = one("aes256gcm16-ecp256", ESP)
    assert p.of_type(TransformType.ESN) == [Transform(TransformType.ESN, EsnId.NO_ESN)]
    assert p.of_type(TransformType.DH) == [Transform(TransformType.DH, DhId.ECP256)]
    assert [t.id for t in one("aes128-sha256-esn-noesn", ESP).of_type(TransformType.ESN)] == [1, 0]


def test_list_and_comma_forms_number_proposals():
    a = parse_proposals("aes256gcm16-prfsha256-ecp256, aes128-sha256-modp2048", IKE)
    b = parse_proposals(["aes256gcm16-prfsha256-ecp256", "aes128-sha256-modp2048"], IKE)
    assert a == b and [p.number for p in a] == [1, 2]


@pytest.mark.parametrize("text,protocol", [
    ("aes256gcm16-prfsha256-ecp256", IKE), ("aes128-sha256-prfsha256-modp2048", IKE),
    ("chacha20poly1305-prfsha256-x25519", IKE), ("aes256-sha512-prfsha512-modp3072", IKE),
    ("aes128-aes256-sha256-sha384-prfsha256-prfsha384-modp2048-ecp256", IKE),
    ("aes192gcm8-prfsha1-ecp521", IKE), ("aes128gcm12-prfsha512-modp4096-ecp384", IKE),
    ("aes256gcm16", ESP), ("aes128-sha256", ESP), ("aes256gcm16-ecp256", ESP), ("aes128-sha1-esn", ESP),
    ("aes256-sha384-esn-noesn", ESP), ("aes128gmac", ESP), ("chacha20poly1305-x25519-esn", ESP),
])
def test_format_round_trips(text, protocol):
    p = one(text, protocol)
    assert format_proposal(p) == text
    assert one(format_proposal(p), protocol) == p


def test_aliases_format_canonically():
    assert format_proposal(one("aes-sha-modp2048")) == "aes128-sha1-prfsha1-modp2048"
    assert format_proposal(one("aes256gcm128-prfsha256-curve25519")) == "aes256gcm16-prfsha256-x25519"
    assert format_proposal(one("aes256gcm-noesn", ESP)) == "aes256gcm16"


def test_aead_drops_integrity_and_esp_drops_prf():
    assert one("aes256gcm16-sha256-prfsha256-ecp256").of_type(TransformType.INTEG) == []
    assert one("aes128-sha256-prfsha256", ESP).of_type(TransformType.PRF) == []


@pytest.mark.parametrize("text,protocol,words", [
    ("aes256-bogus-sha256-modp2048", IKE, "'bogus'"),
    ("3des-sha1-modp2048", IKE, "'3des'"),
    ("aes256-modp2048", IKE, "integrity"),
    ("aes256gcm16-ecp256", IKE, "pseudo-random"),
    ("aes256gcm16-prfsha256", IKE, "key exchange"),
    ("aes256gcm16-aes256-sha256-prfsha256-ecp256", IKE, "mixes"),
    ("aes128gmac-prfsha256-ecp256", IKE, "GMAC"),
    ("aes256gcm16-prfsha256-ecp256-esn", IKE, "esn"),
    ("aes128", ESP, "integrity"),
    ("sha256-modp2048", ESP, "encryption"),
    ("aes128--sha256", ESP, "empty"),
    ("", ESP, "no proposals"),
])
def test_bad_proposals_name_the_problem(text, protocol, words):
    with pytest.raises(ValueError, match=words):
        parse_proposals(text, protocol)


def test_responder_uses_its_own_preference_order():
    own = parse_proposals("aes256gcm16-prfsha256-ecp256,aes128-sha256-modp2048", IKE)
    # the peer prefers CBC/modp2048 but also offers what we like best
    offered = parse_proposals("aes128-sha256-modp2048,aes256gcm16-prfsha256-ecp256", IKE)
    chosen = select_proposal(own, offered)
    assert format_proposal(chosen) == "aes256gcm16-prfsha256-ecp256"
    assert chosen.number == 2


def test_within_a_proposal_own_algorithm_order_wins():
    own = parse_proposals("aes256-aes128-sha384-sha256-ecp256-modp2048", IKE)
    offered = parse_proposals("aes128-aes256-sha256-sha384-modp2048-ecp256", IKE)
    chosen = select_proposal(own, offered)
    assert format_proposal(chosen) == "aes256-sha384-prfsha384-ecp256"
    neg = negotiated(chosen)
    assert (neg.encr, neg.encr_key_bits, neg.integ, neg.prf, neg.dh) == (
        EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_384_192, PrfId.HMAC_SHA2_384, DhId.ECP256)


def test_selection_copies_number_and_spi_from_the_offer():
    offered = one("aes128-sha256-esn-noesn", ESP)
    offered.number, offered.spi = 3, b"\x01\x02\x03\x04"
    chosen = select_proposal(parse_proposals("aes128-sha256-esn", ESP), [offered])
    assert (chosen.number, chosen.spi, format_proposal(chosen)) == (3, b"\x01\x02\x03\x04", "aes128-sha256-esn")


def test_key_length_must_match():
    assert select_proposal(parse_proposals("aes128gcm16-prfsha256-ecp256", IKE),
                           parse_proposals("aes256gcm16-prfsha256-ecp256", IKE)) is None


@pytest.mark.parametrize("own,offered", [
    ("aes256gcm16-prfsha256-ecp256", "aes256gcm16-prfsha256-modp2048"),
    ("aes256gcm16-prfsha256-ecp256", "aes256gcm16-prfsha384-ecp256"),
    ("aes128-sha256-modp2048", "aes128-sha1-prfsha256-modp2048"),
    ("aes128-sha256", "aes128-sha256-esn"),  # ESP: we do not do ESN, the peer insists
])
def test_no_match(own, offered):
    protocol = ESP if "modp" not in own and "ecp" not in own else IKE
    assert select_proposal(parse_proposals(own, protocol), parse_proposals(offered, protocol)) is None


def test_protocol_mismatch_never_matches():
    assert select_proposal(parse_proposals("aes128-sha256", ESP),
                           [Proposal(ProtocolId.AH, one("aes128-sha256", ESP).transforms)]) is None


def test_esp_pfs_groups():
    own_pfs = parse_proposals("aes256gcm16-ecp256", ESP)
    # CREATE_CHILD_SA: the group must match when we require PFS
    assert select_proposal(own_pfs, parse_proposals("aes256gcm16", ESP)) is None
    assert format_proposal(select_proposal(own_pfs, parse_proposals("aes256gcm16-modp2048-ecp256", ESP))) \
        == "aes256gcm16-ecp256"
    # IKE_AUTH: proposals carry no KE transforms, the group is ignored
    chosen = select_proposal(own_pfs, parse_proposals("aes256gcm16", ESP), skip_dh=True)
    assert format_proposal(chosen) == "aes256gcm16" and negotiated(chosen).dh is None
    # a peer that offers "no PFS" explicitly is accepted by a responder without PFS
    assert select_proposal(parse_proposals("aes256gcm16", ESP), parse_proposals("aes256gcm16-none", ESP))
    # ... but not one that insists on a group
    assert select_proposal(parse_proposals("aes256gcm16", ESP), own_pfs) is None


def test_without_dh_strips_groups():
    [p] = without_dh(parse_proposals("aes256gcm16-ecp256-esn", ESP))
    assert format_proposal(p) == "aes256gcm16-esn"


def test_unknown_transform_ids_from_the_wire_are_not_chosen():
    offered = Proposal(IKE, [Transform(TransformType.ENCR, 1031, 256), Transform(TransformType.PRF, 5),
                             Transform(TransformType.DH, 19)])
    assert select_proposal(parse_proposals("aes256gcm16-prfsha256-ecp256", IKE), [offered]) is None
    assert format_proposal(offered) == "UNKNOWN_1_1031_256-prfsha256-ecp256"


@pytest.mark.parametrize("text,name,keymat", [
    ("aes256gcm16", "aes256gcm16", 36), ("aes128gcm8", "aes128gcm8", 20), ("aes192gcm12", "aes192gcm12", 28),
    ("aes128-sha256", "aes128-sha256", 16 + 32), ("aes256-sha1", "aes256-sha1", 32 + 20),
    ("aes192-sha384", "aes192-sha384", 24 + 48), ("aes256-sha512", "aes256-sha512", 32 + 64),
    ("chacha20poly1305", "chacha20poly1305", 36), ("aes128gmac", "aes128gmac", 20),
    ("aes256gmac-esn", "aes256gmac", 36),
])
def test_esp_transform_names_and_keymat(text, name, keymat):
    neg = negotiated(one(text, ESP))
    assert neg.esp_transform_name == name
    assert neg.child_keymat_len() == keymat
    assert neg.esn == text.endswith("-esn")


def test_esp_names_match_esp_package_when_available():
    transforms = pytest.importorskip("esp.transforms")
    for text in ("aes256gcm16", "aes128-sha256", "chacha20poly1305", "aes128gmac", "aes256-sha1"):
        neg = negotiated(one(text, ESP))
        assert transforms.transform_by_name(neg.esp_transform_name).keymat_len == neg.child_keymat_len()


def test_negotiated_needs_single_choices():
    with pytest.raises(ValueError, match="2 ENCR"):
        negotiated(one("aes128-aes256-sha256-modp2048"))
    with pytest.raises(ValueError, match="no ENCR"):
        negotiated(Proposal(IKE, [Transform(TransformType.PRF, 5), Transform(TransformType.DH, 19)]))
    with pytest.raises(ValueError, match="no ESP transform"):
        _ = negotiated(Proposal(ESP, [Transform(TransformType.ENCR, EncrId.AES_CTR, 128),
                                      Transform(TransformType.INTEG, 12)])).esp_transform_name
