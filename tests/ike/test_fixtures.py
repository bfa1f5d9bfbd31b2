"""espgw's IKE codec against real strongSwan messages (tests/fixtures/strongswan, see its README).

Every message of every recorded exchange decodes with ``ike.codec.message`` and re-encodes to the same
bytes; every SK payload opens with the logged SK_e*/SK_a* keys through ``ike.crypto.skcipher.SkCipher``,
and its inner chain decodes and re-encodes byte-exactly. The AUTH payloads check out against
espgw's own PSK computation, and for the AEAD suite espgw's ``seal`` reproduces strongSwan's
bytes when given the same IV (AEAD needs no padding, so nothing random is left).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ike.codec.constants import AuthMethod, ExchangeType, PayloadType, ProtocolId
from ike.crypto.keys import psk_auth, signed_octets
from ike.codec.message import (DecryptionFailed, decode, decode_inner, encode, encode_chain, encrypted_payload,
                               open_sk, seal)
from ike.codec.payloads import AuthPayload, IdiPayload, IdrPayload, NoncePayload, SaPayload, UnknownPayload
from ike.crypto.proposals import negotiated, parse_proposals, select_proposal
from ike.crypto.skcipher import SkCipher
from tunnel.lab.ike_pcap import read_ike_frames

FIXTURES = Path(__file__).parent.parent / "fixtures" / "strongswan"
RECORDS = sorted(FIXTURES.glob("strongswan-*.json"))


class Fixture:
    """One recorded exchange: frames (raw IKE messages) plus the logged keys per IKE SA."""

    def __init__(self, path: Path):
        self.record = json.loads(path.read_text())
        self.frames = read_ike_frames(FIXTURES / self.record["pcap"])
        self.neg = negotiated(parse_proposals(self.record["ike_proposal"], ProtocolId.IKE)[0])
        self.keys = {(bytes.fromhex(sa["spi_i"]), bytes.fromhex(sa["spi_r"])): sa["keys"]
                     for sa in self.record["ike_sas"]}

    def cipher(self, raw: bytes, from_initiator: bool) -> SkCipher:
        keys = self.keys[(raw[:8], raw[8:16])]
        side = "i" if from_initiator else "r"
        integ = bytes.fromhex(keys[f"Sk_a{side}"]) if self.neg.integ else b""
        return SkCipher(self.neg, bytes.fromhex(keys[f"Sk_e{side}"]), integ)

    def opened(self):
        """(frame, outer message, inner message, plaintext) for each encrypted message."""
        for frame in self.frames[2:]:
            msg = decode(frame.message)
            plain = open_sk(frame.message, msg, self.cipher(frame.message, frame.from_initiator))
            yield frame, msg, decode_inner(msg, encrypted_payload(msg).first_inner, plain), plain


@pytest.fixture(scope="module", params=RECORDS, ids=lambda p: p.stem)
def fixture(request) -> Fixture:
    return Fixture(request.param)


def test_fixtures_present():
    assert [p.stem for p in RECORDS] == [f"strongswan-{v}-{s}" for v in ("5.9", "6.0") for s in ("cbc", "gcm")]


def test_every_message_decodes_and_reencodes(fixture):
    assert len(fixture.frames) == 14
    for frame in fixture.frames:
        msg = decode(frame.message)
        assert encode(msg) == frame.message, f"frame {frame.frame}"
        assert msg.exchange_name == frame.exchange and msg.message_id == frame.message_id
        assert msg.response == frame.is_response and msg.initiator == frame.from_initiator
        assert not any(isinstance(p, UnknownPayload) for p in msg.payloads)


def test_ike_sa_init_payloads(fixture):
    request, response = (decode(f.message) for f in fixture.frames[:2])
    assert request.exchange == ExchangeType.IKE_SA_INIT and not request.encrypted
    own = parse_proposals(fixture.record["ike_proposal"], ProtocolId.IKE)
    # espgw, configured like strongSwan, accepts what strongSwan offers, and the answer is the same
    chosen = select_proposal(own, request.get(SaPayload).proposals)
    assert chosen is not None
    assert negotiated(response.get(SaPayload).proposals[0]) == negotiated(chosen) == fixture.neg
    for msg in (request, response):
        assert 16 <= len(msg.get(NoncePayload).data) <= 256


def test_every_sk_payload_opens_and_inner_chain_reencodes(fixture):
    opened = list(fixture.opened())
    assert len(opened) == 12
    for frame, msg, inner, plain in opened:
        first, chain = encode_chain(inner.payloads)
        assert chain == plain and first == encrypted_payload(msg).first_inner, f"frame {frame.frame}"
        assert not any(isinstance(p, UnknownPayload) for p in inner.payloads), f"frame {frame.frame}"
    exchanges = [inner.exchange_name for _, _, inner, _ in opened[::2]]
    assert exchanges == ["IKE_AUTH", "CREATE_CHILD_SA", "INFORMATIONAL", "CREATE_CHILD_SA",
                         "INFORMATIONAL", "INFORMATIONAL"]
    assert opened[0][2].payloads[0].type == PayloadType.IDi


def test_wrong_direction_key_is_rejected(fixture):
    frame = fixture.frames[2]
    msg = decode(frame.message)
    with pytest.raises(DecryptionFailed):
        open_sk(frame.message, msg, fixture.cipher(frame.message, not frame.from_initiator))


def test_strongswan_auth_matches_espgw_psk_computation(fixture):
    """AUTH = prf(prf(PSK, "Key Pad for IKEv2"), RealMessage | Nonce of the peer | prf(SK_p, ID'))."""
    init_req, init_resp = fixture.frames[0].message, fixture.frames[1].message
    ni = decode(init_req).get(NoncePayload).data
    nr = decode(init_resp).get(NoncePayload).data
    (_, _, auth_req, _), (_, _, auth_resp, _) = list(fixture.opened())[:2]
    keys = fixture.keys[(init_req[:8], init_resp[8:16])]
    psk = bytes.fromhex(fixture.record["psk_hex"])
    for inner, own_init, peer_nonce, sk_p, id_cls in ((auth_req, init_req, nr, "Sk_pi", IdiPayload),
                                                       (auth_resp, init_resp, ni, "Sk_pr", IdrPayload)):
        auth = inner.get(AuthPayload)
        assert auth.method == AuthMethod.SHARED_KEY_MIC
        octets = signed_octets(own_init, peer_nonce, fixture.neg.prf, bytes.fromhex(keys[sk_p]),
                               inner.get(id_cls).body())
        assert psk_auth(fixture.neg.prf, psk, octets) == auth.data


@pytest.mark.parametrize("path", [p for p in RECORDS if p.stem.endswith("-gcm")], ids=lambda p: p.stem)
def test_espgw_seal_reproduces_strongswan_bytes_for_aead(path):
    """(strongSwan pads CBC with random bytes, so only the AEAD suite can compare bytes.)"""
    fixture = Fixture(path)
    assert fixture.neg.aead
    for frame, msg, inner, _ in fixture.opened():
        iv = encrypted_payload(msg).data[:8]
        resealed = seal(inner, fixture.cipher(frame.message, frame.from_initiator), lambda n, iv=iv: iv)
        assert resealed == frame.message, f"frame {frame.frame}"
