"""Hybrid post-quantum IKE SAs between two espgw endpoints: RFC 9242 IKE_INTERMEDIATE carrying the
RFC 9370 additional key exchanges (ML-KEM), IntAuth in AUTH, fragmentation, and bad key shares."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from ike.codec import message as codec
from ike.codec.constants import DhId, ExchangeType, NotifyType, PayloadType
from ike.codec.payloads import KePayload, NotifyPayload
from ike.crypto.mlkem import public_value_len
from ike.crypto.multi_ke import intauth_of
from ike.crypto.keys import IkeKeys
from ike.tasks import ike_init, ike_intermediate
from tests.ike.harness import ChildSaUp, IkeSaUp, NegotiationFailed, Pair, Wire, mirrored

HYBRID_768 = "aes256gcm16-prfsha384-ecp384-ke1_mlkem768"
HYBRID_TWO = "aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke2_mlkem1024"


def _run(ike_a: str, ike_b: str | None = None, initiator: str = "a", **kw) -> tuple[Pair, list]:
    a, b = mirrored(ike=ike_a, b_ike=ike_b or ike_a, **kw)
    seen: list = []
    pair = Pair([a], [b], wire=Wire(tamper=lambda d: (seen.append(d), d)[1]))
    (pair.a if initiator == "a" else pair.b).initiate("site", "net", pair.now)
    pair.run()
    return pair, [codec.decode(d.data) for d in seen]


def _exchanges(msgs: list) -> list[tuple[str, int, bool]]:
    """(exchange, message ID, response) per datagram, fragments of one message once."""
    out: list[tuple[str, int, bool]] = []
    for m in msgs:
        key = (m.exchange_name, m.message_id, m.response)
        if not out or out[-1] != key:
            out.append(key)
    return out


@pytest.mark.parametrize("initiator", ["a", "b"])
@pytest.mark.parametrize("ike,additional", [(HYBRID_768, 1), (HYBRID_TWO, 2)])
def test_hybrid_handshake(ike, additional, initiator):
    pair, msgs = _run(ike, initiator=initiator)
    (ia,), (ib,) = pair.of("a", IkeSaUp), pair.of("b", IkeSaUp)
    assert ia.proposal == ib.proposal == ike
    (ca,), (cb,) = pair.of("a", ChildSaUp), pair.of("b", ChildSaUp)
    assert ca.inbound_keymat == cb.outbound_keymat and ca.outbound_keymat == cb.inbound_keymat
    assert not pair.of("a", NegotiationFailed) and not pair.of("b", NegotiationFailed)
    # message IDs: IKE_SA_INIT 0, one IKE_INTERMEDIATE each (1..n), IKE_AUTH n+1
    expected = [("IKE_SA_INIT", 0, False), ("IKE_SA_INIT", 0, True)]
    for mid in range(1, additional + 1):
        expected += [("IKE_INTERMEDIATE", mid, False), ("IKE_INTERMEDIATE", mid, True)]
    expected += [("IKE_AUTH", additional + 1, False), ("IKE_AUTH", additional + 1, True)]
    assert _exchanges(msgs) == expected
    init_req, init_resp = msgs[0], msgs[1]
    for m in (init_req, init_resp):
        assert NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED in m.notifies()
    # the IKE SAs hold the final keys (both the same), and no IKE_INTERMEDIATE state after IKE_AUTH
    sa_a, sa_b = next(iter(pair.a.sas.values())), next(iter(pair.b.sas.values()))
    assert sa_a.keys.sk_d == sa_b.keys.sk_d and sa_a.intermediate is None and sa_b.intermediate is None


def test_key_shares_have_fips203_sizes():
    pair, msgs = _run(HYBRID_768)
    sa = next(iter(pair.a.sas.values()))
    assert sa.established
    # both IKE_INTERMEDIATE messages are encrypted; their sizes show the encapsulation key and ciphertext
    inter = [m for m in msgs if m.exchange == ExchangeType.IKE_INTERMEDIATE]
    request_len = len(codec.encode(inter[0]))
    response_len = len(codec.encode(inter[1]))
    ek, ct = public_value_len(DhId.ML_KEM_768, True), public_value_len(DhId.ML_KEM_768, False)
    assert ek + 8 < request_len < ek + 100 and ct + 8 < response_len < ct + 100


def test_classic_peer_and_fallback_proposal():
    """A PQ-capable initiator with a classic fallback against a classic responder: plain IKE SA,
    no IKE_INTERMEDIATE and no IntAuth."""
    pair, msgs = _run(f"{HYBRID_768}, aes256gcm16-prfsha384-ecp384", "aes256gcm16-prfsha384-ecp384")
    (ia,) = pair.of("a", IkeSaUp)
    assert ia.proposal == "aes256gcm16-prfsha384-ecp384"
    assert "IKE_INTERMEDIATE" not in {m.exchange_name for m in msgs}
    assert NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED in msgs[0].notifies()
    assert NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED not in msgs[1].notifies()


def test_pq_only_responder_refuses_classic_offer():
    pair, _ = _run("aes256gcm16-prfsha384-ecp384", HYBRID_768)
    assert not pair.of("a", IkeSaUp)
    assert [f.notify for f in pair.of("a", NegotiationFailed)] == ["NO_PROPOSAL_CHOSEN"]


@pytest.mark.parametrize("ike_a,ike_b,intermediate", [
    ("aes256gcm16-prfsha384-ecp384-ke1_mlkem768-ke1_none", "aes256gcm16-prfsha384-ecp384", False),
    ("aes256gcm16-prfsha384-ecp384-ke1_mlkem768-ke1_none", HYBRID_768, True),
    (HYBRID_768, "aes256gcm16-prfsha384-ecp384-ke1_none-ke1_mlkem768", True),
])
def test_ke1_none_makes_the_exchange_optional(ike_a, ike_b, intermediate):
    pair, msgs = _run(ike_a, ike_b)
    (ia,) = pair.of("a", IkeSaUp)
    assert ("IKE_INTERMEDIATE" in {m.exchange_name for m in msgs}) == intermediate
    assert ia.proposal.endswith("ke1_mlkem768") == intermediate


@pytest.mark.parametrize("ike", [HYBRID_768, HYBRID_TWO])
def test_fragmented_key_shares(ike):
    """With 576-byte fragments every IKE_INTERMEDIATE message goes as RFC 7383 fragments."""
    pair, msgs = _run(ike, fragment_size=576)
    assert pair.of("a", IkeSaUp) and pair.of("b", IkeSaUp)
    inter = [m for m in msgs if m.exchange == ExchangeType.IKE_INTERMEDIATE]
    assert inter and all(m.payloads[-1].type == PayloadType.SKF for m in inter)
    assert all(len(codec.encode(m)) <= 576 - 28 for m in msgs if m.exchange != ExchangeType.IKE_SA_INIT)
    assert max(m.payloads[-1].total for m in inter) >= 3


def test_peer_without_intermediate_support_is_refused(monkeypatch):
    """Additional key exchanges need INTERMEDIATE_EXCHANGE_SUPPORTED from the initiator (as strongSwan)."""
    monkeypatch.setattr(ike_init, "has_additional_ke", lambda proposals: False)
    pair, msgs = _run(HYBRID_768)
    assert not pair.of("a", IkeSaUp)
    assert msgs[1].notifies().keys() == {NotifyType.NO_PROPOSAL_CHOSEN}
    assert [f.notify for f in pair.of("b", NegotiationFailed)] == ["NO_PROPOSAL_CHOSEN"]


def _bad_request(monkeypatch, payloads):
    original = ike_intermediate.IkeIntermediate.build

    def build(self, sa, now):
        out = original(self, sa, now)
        self.sent = payloads(out[0]) if out else out
        return self.sent
    monkeypatch.setattr(ike_intermediate.IkeIntermediate, "build", build)


ALL_FF = bytes([0xFF]) * public_value_len(DhId.ML_KEM_768, True)  # every coefficient 4095 >= q


@pytest.mark.parametrize("mutate,notify", [
    (lambda ke: [KePayload(ke.group, ke.data[:-1])], "NO_PROPOSAL_CHOSEN"),  # short encapsulation key
    (lambda ke: [KePayload(ke.group, ke.data + b"\0")], "NO_PROPOSAL_CHOSEN"),  # long
    (lambda ke: [KePayload(ke.group, ALL_FF)], "NO_PROPOSAL_CHOSEN"),  # fails the modulus check
    (lambda ke: [KePayload(DhId.ML_KEM_1024, ke.data)], "NO_PROPOSAL_CHOSEN"),  # another method
    (lambda ke: [NotifyPayload(NotifyType.COOKIE2, b"x" * 8)], "INVALID_SYNTAX"),  # no KE payload
    (lambda ke: [ke, ke], "INVALID_SYNTAX"),  # two KE payloads
])
def test_bad_encapsulation_key_is_refused(monkeypatch, mutate, notify):
    _bad_request(monkeypatch, mutate)
    pair, msgs = _run(HYBRID_768)
    assert not pair.of("a", IkeSaUp) and not pair.of("b", IkeSaUp)
    assert [f.notify for f in pair.of("b", NegotiationFailed)] == [notify]
    assert [(f.stage, f.notify) for f in pair.of("a", NegotiationFailed)] == [("IKE_INTERMEDIATE", notify)]
    assert not pair.a.sas and not pair.b.sas  # both SAs are gone, nothing waits for a timeout


@pytest.mark.parametrize("mutate", [
    lambda ke: KePayload(ke.group, ke.data[:-1]),  # short ciphertext
    lambda ke: KePayload(ke.group, ke.data + b"\0"),  # long ciphertext
    lambda ke: KePayload(DhId.ML_KEM_1024, ke.data),  # another method
])
def test_bad_ciphertext_fails_the_initiator(monkeypatch, mutate):
    original = ike_intermediate.respond_intermediate

    def respond(sa, msg, now):
        return [mutate(p) if isinstance(p, KePayload) else p for p in original(sa, msg, now)]
    monkeypatch.setattr(ike_intermediate, "respond_intermediate", respond)
    pair, _ = _run(HYBRID_768)
    assert not pair.of("a", IkeSaUp) and not pair.a.sas
    assert [(f.stage, f.notify) for f in pair.of("a", NegotiationFailed)] == [
        ("IKE_INTERMEDIATE", "INVALID_KE_PAYLOAD")]


def test_forged_ciphertext_fails_authentication(monkeypatch):
    """A well-formed but wrong ciphertext decapsulates to another secret (implicit rejection):
    the keys differ, so the IKE_AUTH request cannot be decrypted; the peer never comes up."""
    original = ike_intermediate.respond_intermediate

    def respond(sa, msg, now):
        return [KePayload(p.group, bytes(len(p.data))) if isinstance(p, KePayload) else p
                for p in original(sa, msg, now)]
    monkeypatch.setattr(ike_intermediate, "respond_intermediate", respond)
    a, b = mirrored(ike=HYBRID_768)
    pair = Pair([a], [b], retransmit_tries=1, retransmit_timeout=0.5)
    pair.a.initiate("site", "net", pair.now)
    pair.run(until=60.0, idle_stop=False)
    assert not pair.of("a", IkeSaUp) and not pair.of("b", IkeSaUp)


def test_ike_auth_before_intermediate_is_refused(monkeypatch):
    """An initiator that skips the additional exchange gets INVALID_SYNTAX for its IKE_AUTH."""
    monkeypatch.setattr(ike_intermediate.IkeIntermediate, "build", lambda self, sa, now: None)
    pair, msgs = _run(HYBRID_768)
    assert not pair.of("b", IkeSaUp)
    assert [f.notify for f in pair.of("b", NegotiationFailed)] == ["INVALID_SYNTAX"]


# --- IntAuth input against strongSwan 6.1's log ------------------------------------------------

FIXTURE = (Path(__file__).resolve().parents[1] / "fixtures" / "strongswan61"
           / "strongswan-6.1-x25519-mlkem768-mlkem1024.json")


def test_intauth_input_matches_strongswan_for_whole_and_fragmented_messages():
    from tunnel.lab import ike_pcap

    record = json.loads(FIXTURE.read_text())
    frames = ike_pcap.read_ike_frames(FIXTURE.parent / record["pcap"])
    logged = [bytes.fromhex(e["hex"]) for e in record["logged"]["gwA"]
              if e["name"] == "IntAuth_A|P" and e["group"] == "IKE"]
    names = ("Sk_d", "Sk_ai", "Sk_ar", "Sk_ei", "Sk_er", "Sk_pi", "Sk_pr")

    def keys(index: int) -> IkeKeys:
        s = record["key_sets"][index]
        return IkeKeys(*(bytes.fromhex(s[k]) if k in s else b"" for k in names))

    for index, (msg_frames, key_set) in enumerate([([frames[2]], 0), ([frames[3]], 0),
                                                   (frames[4:6], 1), (frames[6:8], 1)]):
        key = getattr(keys(key_set), "sk_ei" if msg_frames[0].from_initiator else "sk_er")
        if msg_frames[0].next_payload == ike_pcap.PAYLOAD_SK:
            first, inner = ike_pcap.open_sk(msg_frames[0].message, key, None, "aes-gcm-16")
        else:
            parts = [ike_pcap.open_skf(f.message, key) for f in msg_frames]
            first, inner = parts[0][2], b"".join(p[3] for p in parts)
        assert intauth_of(msg_frames[0].message[:28], first, inner) == logged[index]
        assert struct.unpack_from("!I", logged[index], 24)[0] == len(logged[index])
