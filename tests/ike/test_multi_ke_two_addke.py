"""Two additional key exchanges (x25519-ke1_mlkem768-ke2_mlkem1024) against strongSwan 6.1's log.

Two IKE_INTERMEDIATE exchanges, so two key updates and a two-step IntAuth chain; the second
exchange carries an ML-KEM-1024 key and ciphertext and is fragmented (RFC 7383), so its IntAuth
input is the reassembled message. Checks which SK_p keys each IntAuth step, and the AUTH payloads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ike.codec.constants import ProtocolId
from ike.crypto.multi_ke import (intauth, intauth_parts, intauth_parts_reassembled, intauth_step,
                                  rekeyed_ike_keys, update_ike_keys)
from ike.crypto.keys import IkeKeys, derive_ike_keys, psk_auth, signed_octets
from ike.codec.message import decode, decode_inner, encrypted_payload, open_sk
from ike.codec.payloads import AuthPayload, IdiPayload, IdrPayload, NoncePayload, SaPayload
from ike.crypto.proposals import negotiated, parse_proposals
from ike.crypto.skcipher import SkCipher
from tunnel.lab import ike_pcap

FIXTURE = (Path(__file__).resolve().parents[1] / "fixtures" / "strongswan61"
           / "strongswan-6.1-x25519-mlkem768-mlkem1024.json")
KEYS = ("Sk_d", "Sk_ai", "Sk_ar", "Sk_ei", "Sk_er", "Sk_pi", "Sk_pr")


@pytest.fixture(scope="module")
def rec():
    record = json.loads(FIXTURE.read_text())
    frames = ike_pcap.read_ike_frames(FIXTURE.parent / record["pcap"])
    logged = record["logged"]["gwA"]

    def values(name: str) -> list[bytes]:
        return [bytes.fromhex(e["hex"]) for e in logged if e["name"] == name and e["group"] == "IKE"]

    def keys(index: int) -> IkeKeys:
        s = record["key_sets"][index]
        return IkeKeys(*(bytes.fromhex(s[k]) if k in s else b"" for k in KEYS))

    neg = negotiated(parse_proposals("aes256gcm16-prfsha256-x25519", ProtocolId.IKE)[0])
    init_req, init_resp = (decode(f.message) for f in frames[:2])
    return {"record": record, "frames": frames, "values": values, "keys": keys, "neg": neg,
            "ni": init_req.get(NoncePayload).data, "nr": init_resp.get(NoncePayload).data,
            "spi_i": frames[1].spi_i, "spi_r": frames[1].spi_r}


def _same(a: IkeKeys, b: IkeKeys) -> bool:
    return all(getattr(a, k.lower()) == getattr(b, k.lower()) for k in KEYS)


def test_shape(rec):
    assert [f.exchange for f in rec["frames"][:10]] == (
        ["IKE_SA_INIT"] * 2 + ["IKE_INTERMEDIATE"] * 6 + ["IKE_AUTH"] * 2)
    assert [f.next_payload for f in rec["frames"][2:8]] == [46, 46, 53, 53, 53, 53]  # exchange 2: SKF
    assert [len(v) for v in rec["values"]("key exchange secret")[:3]] == [32, 32, 32]  # x25519, ML-KEM x2


def test_two_key_updates(rec):
    g_ir, kem1, kem2 = rec["values"]("key exchange secret")[:3]
    args = (rec["ni"], rec["nr"], rec["spi_i"], rec["spi_r"])
    keys0 = derive_ike_keys(rec["neg"], rec["ni"], rec["nr"], g_ir, rec["spi_i"], rec["spi_r"])
    assert _same(keys0, rec["keys"](0))
    keys1 = update_ike_keys(rec["neg"], keys0, kem1, *args)
    assert _same(keys1, rec["keys"](1))
    keys2 = update_ike_keys(rec["neg"], keys1, kem2, *args)
    assert _same(keys2, rec["keys"](2))


def _inner(frames, keys: IkeKeys):
    """(first fragment, first inner payload type, inner payloads) of a possibly fragmented message."""
    side = "i" if frames[0].from_initiator else "r"
    key = getattr(keys, f"sk_e{side}")
    if frames[0].next_payload == ike_pcap.PAYLOAD_SK:
        first, inner = ike_pcap.open_sk(frames[0].message, key, None, "aes-gcm-16")
        return frames[0].message, first, inner
    parts = [ike_pcap.open_skf(f.message, key) for f in frames]
    return frames[0].message, parts[0][2], b"".join(p[3] for p in parts)


def _intauth(rec) -> tuple[bytes, bytes]:
    """IntAuth_i2 and IntAuth_r2, each step checked against charon's input, key and result."""
    frames = rec["frames"]
    logged_parts = rec["values"]("IntAuth_A|P")
    logged_keys = rec["values"]("SK_p")
    logged_results = rec["values"]("IntAuth_N = prf(Sk_px, data)")
    # charon's dumps are in this order: request 1, response 1, request 2, response 2
    messages = [([frames[2]], 0), ([frames[3]], 0), (frames[4:6], 1), (frames[6:8], 1)]
    chain = {"i": b"", "r": b""}
    for index, (msg_frames, key_set) in enumerate(messages):
        keys = rec["keys"](key_set)  # the keys that protect the message
        first_fragment, first_inner, inner = _inner(msg_frames, keys)
        if len(msg_frames) == 1:
            parts = intauth_parts(first_fragment, 28, inner)
        else:
            parts = intauth_parts_reassembled(first_fragment, first_inner, inner)
        assert parts == logged_parts[index]
        side = "i" if msg_frames[0].from_initiator else "r"
        sk_p = getattr(keys, f"sk_p{side}")
        assert sk_p == logged_keys[index]
        chain[side] = intauth_step(rec["neg"].prf, sk_p, chain[side], parts)
        assert chain[side] == logged_results[index]
    return chain["i"], chain["r"]


def test_intauth_chain_over_two_exchanges(rec):
    _intauth(rec)


def test_ike_auth(rec):
    intauth_i, intauth_r = _intauth(rec)
    keys2, frames, neg = rec["keys"](2), rec["frames"], rec["neg"]
    psk = bytes.fromhex(rec["record"]["psk_hex"])
    for frame, own_init, peer_nonce, sk_p, sk_e, id_cls in (
            (frames[8], frames[0].message, rec["nr"], keys2.sk_pi, keys2.sk_ei, IdiPayload),
            (frames[9], frames[1].message, rec["ni"], keys2.sk_pr, keys2.sk_er, IdrPayload)):
        msg = decode(frame.message)
        inner = decode_inner(msg, encrypted_payload(msg).first_inner, open_sk(frame.message, msg,
                                                                              SkCipher(neg, sk_e, b"")))
        octets = signed_octets(own_init, peer_nonce, neg.prf, sk_p, inner.get(id_cls).body())
        octets += intauth(intauth_i, intauth_r, frame.message_id)
        assert frame.message_id == 3
        assert psk_auth(neg.prf, psk, octets) == inner.get(AuthPayload).data


def test_ike_rekey_with_two_additional_key_exchanges(rec):
    keys2, frames, neg = rec["keys"](2), rec["frames"], rec["neg"]
    inner = []
    for frame, sk_e in ((frames[21], keys2.sk_ei), (frames[22], keys2.sk_er)):  # the IKE rekey's CREATE_CHILD_SA
        msg = decode(frame.message)
        inner.append(decode_inner(msg, encrypted_payload(msg).first_inner,
                                  open_sk(frame.message, msg, SkCipher(neg, sk_e, b""))))
    ni, nr = (m.get(NoncePayload).data for m in inner)
    spi_i, spi_r = (m.get(SaPayload).proposals[0].spi for m in inner)
    g_ir = rec["values"]("key exchange secret")[3]
    additional = rec["values"]("additional key exchange secret")[3]
    assert len(additional) == 64  # SK(1) | SK(2), concatenated in order
    new = rekeyed_ike_keys(neg, neg.prf, keys2.sk_d, g_ir, [additional[:32], additional[32:]], ni, nr, spi_i, spi_r)
    assert _same(new, rec["keys"](3))
