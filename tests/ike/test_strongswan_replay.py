"""espgw's IKE core in the place of one of the two recorded strongSwan gateways.

The fixtures (tests/fixtures/strongswan) hold a strongSwan <-> strongSwan run with its SK_* keys.
We transplant the IKE_SA_INIT result (nonces, messages, keys) into an IkeSa and feed the real
strongSwan messages of the other side into our endpoint:

- as the responder (gwB): strongSwan's IKE_AUTH request must authenticate, our AUTH must equal
  the one strongSwan's gwB computed (it is deterministic), and strongSwan's CHILD rekey, delete,
  IKE rekey and IKE delete requests must be handled;
- as the initiator (gwA): our IKE_AUTH request must carry the AUTH strongSwan's gwA sent, and
  strongSwan's answers to IKE_AUTH, CHILD rekey, delete, IKE rekey and IKE delete must complete
  our own exchanges.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ike.codec import message as codec
from ike.config import AuthConfig, ChildConfig, ConnectionConfig, TrafficSelector
from ike.endpoint import IkeEndpoint
from ike.events import ChildSaDown, ChildSaUp, IkeSaDown, IkeSaUp, NegotiationFailed
from ike.sa.ike_sa import IkeSa
from ike.crypto.keys import IkeKeys
from ike.codec.payloads import AuthPayload, DeletePayload, IdrPayload, KePayload, NoncePayload, SaPayload, TsiPayload
from ike.crypto.proposals import format_proposal, negotiated
from ike.crypto.skcipher import SkCipher
from ike.tasks.ike_auth import IkeAuth
from ike.tasks.ike_init import ZERO_SPI, detect_nat
from tunnel.lab.ike_pcap import read_ike_frames

FIXTURES = Path(__file__).parent.parent / "fixtures" / "strongswan"
RECORDS = sorted(FIXTURES.glob("strongswan-*.json"))
GWA, GWB = "192.0.2.1", "192.0.2.2"
NET_A, NET_B = "10.0.0.0/24", "10.0.5.0/24"


class Replay:
    def __init__(self, path: Path, our_side: str):
        self.record = json.loads(path.read_text())
        self.frames = read_ike_frames(FIXTURES / self.record["pcap"])
        self.ours_initiator = our_side == "gwA"
        local, remote = (GWA, GWB) if self.ours_initiator else (GWB, GWA)
        ids = ("gwa.lab", "gwb.lab") if self.ours_initiator else ("gwb.lab", "gwa.lab")
        nets = (NET_A, NET_B) if self.ours_initiator else (NET_B, NET_A)
        self.config = ConnectionConfig(
            "lab", [local], [remote], AuthConfig(id=ids[0]), AuthConfig(id=ids[1]),
            psk=bytes.fromhex(self.record["psk_hex"]), proposals=[self.record["ike_proposal"]],
            children=[ChildConfig("net", [TrafficSelector.from_cidr(nets[0])], [TrafficSelector.from_cidr(nets[1])],
                                  esp_proposals=[self.record["esp_proposal"]], rekey_time=0.0)],
            rekey_time=0.0)
        self.ep = IkeEndpoint([self.config], rng=random.Random(5).randbytes)
        self.events: list = []
        self.sa = self._transplant()

    def _transplant(self) -> IkeSa:
        f0, f1 = self.frames[0], self.frames[1]
        req, resp = codec.decode(f0.message), codec.decode(f1.message)
        keys = self.record["ike_sas"][0]["keys"]
        k = {name: bytes.fromhex(keys.get(f"Sk_{name}", "")) for name in ("d", "ai", "ar", "ei", "er", "pi", "pr")}
        chosen = resp.get(SaPayload).proposals[0]
        if self.ours_initiator:
            local, remote = (f0.src, f0.sport), (f0.dst, f0.dport)
        else:
            local, remote = (f0.dst, f0.dport), (f0.src, f0.sport)
        sa = IkeSa(self.ep, self.config, initiator=self.ours_initiator, local=local, remote=remote,
                   spi_i=req.spi_i, spi_r=resp.spi_r, unique_id=self.ep.next_unique_id(), now=0.0)
        sa.ni, sa.nr = req.get(NoncePayload).data, resp.get(NoncePayload).data
        sa.init_request, sa.init_response = f0.message, f1.message
        sa.install_keys(negotiated(chosen), IkeKeys(k["d"], k["ai"], k["ar"], k["ei"], k["er"], k["pi"], k["pr"]))
        sa.proposal_name, sa.chosen = format_proposal(chosen), chosen
        if self.ours_initiator:
            nat = detect_nat(resp, req.spi_i, resp.spi_r, (f1.src, f1.sport), (f1.dst, f1.dport))
            sa.my_mid = 1
        else:
            nat = detect_nat(req, req.spi_i, ZERO_SPI, (f0.src, f0.sport), (f0.dst, f0.dport))
            sa.peer_mid, sa.last_response = 1, (0, f1.message)
        sa.nat_local, sa.nat_remote = nat
        self.ep.adopt(sa)
        return sa

    def cipher(self, sa_index: int, from_initiator: bool) -> SkCipher:
        keys = self.record["ike_sas"][sa_index]["keys"]
        side = "i" if from_initiator else "r"
        neg = self.sa.neg
        return SkCipher(neg, bytes.fromhex(keys[f"Sk_e{side}"]), bytes.fromhex(keys.get(f"Sk_a{side}", "")))

    def inner(self, raw: bytes, sa_index: int = 0) -> codec.Message:
        msg = codec.decode(raw)
        plain = codec.open_sk(raw, msg, self.cipher(sa_index, msg.initiator))
        return codec.decode_inner(msg, codec.encrypted_payload(msg).first_inner, plain)

    def deliver(self, index: int) -> list[bytes]:
        f = self.frames[index]
        self.ep.receive_datagram(f.message, (f.src, f.sport), (f.dst, f.dport), float(index))
        return self.sent()

    def sent(self) -> list[bytes]:
        while (ev := self.ep.next_event()) is not None:
            self.events.append(ev)
        return [d.data for d in self.ep.datagrams_to_send(0.0)]

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture(params=RECORDS, ids=lambda p: p.stem)
def record(request):
    return request.param


def test_espgw_as_responder_to_strongswan(record):
    r = Replay(record, "gwB")
    (answer,) = r.deliver(2)  # IKE_AUTH request
    assert not r.of(NegotiationFailed)
    (ike,), (child,) = r.of(IkeSaUp), r.of(ChildSaUp)
    assert ike.remote_id == "gwa.lab" and ike.local_id == "gwb.lab" and not ike.initiator
    ours, theirs = r.inner(answer), r.inner(r.frames[3].message)
    # AUTH is deterministic: ours must be byte for byte what strongSwan's gwB sent
    assert ours.get(AuthPayload).data == theirs.get(AuthPayload).data
    assert ours.get(IdrPayload).body() == theirs.get(IdrPayload).body()
    assert negotiated(ours.get(SaPayload).proposals[0]) == negotiated(theirs.get(SaPayload).proposals[0])
    assert ours.get(TsiPayload).selectors == theirs.get(TsiPayload).selectors
    assert f"{child.outbound_spi:08x}" == r.record["child_sas"][0]["spi_in"]  # gwA's inbound SPI
    # CHILD rekey started by strongSwan
    (answer,) = r.deliver(4)
    new = r.of(ChildSaUp)[-1]
    assert new.rekeyed_from == child.inbound_spi and f"{new.outbound_spi:08x}" == r.record["child_sas"][1]["spi_in"]
    reply = r.inner(answer)
    assert reply.get(SaPayload) and reply.get(NoncePayload) and not reply.notifies()
    # strongSwan deletes the old CHILD SA; we answer with ours
    (answer,) = r.deliver(6)
    (down,) = r.of(ChildSaDown)
    assert down.inbound_spi == child.inbound_spi and down.reason == "rekeyed"
    assert r.inner(answer).get(DeletePayload).spis == [child.inbound_spi.to_bytes(4, "big")]
    # IKE rekey started by strongSwan, then the delete of the old IKE SA
    (answer,) = r.deliver(8)
    reply = r.inner(answer)
    assert len(reply.get(SaPayload).proposals[0].spi) == 8 and reply.get(KePayload) and reply.get(NoncePayload)
    (up,) = r.of(IkeSaUp)[1:]
    assert up.rekeyed_from == ike.unique_id and up.spi_i == bytes.fromhex(r.record["ike_sas"][1]["spi_i"])
    r.deliver(10)
    (gone,) = r.of(IkeSaDown)
    assert gone.unique_id == ike.unique_id and gone.reason == "rekeyed"
    [status] = r.ep.status()
    assert status["unique_id"] == up.unique_id and len(status["children"]) == 1


def test_espgw_as_initiator_with_strongswan(record):
    r = Replay(record, "gwA")
    r.sa.queue_task(IkeAuth(r.config.children[0]), 0.0)
    (request,) = r.sent()
    ours, theirs = r.inner(request), r.inner(r.frames[2].message)
    assert ours.get(AuthPayload).data == theirs.get(AuthPayload).data  # same AUTH as strongSwan's gwA
    r.deliver(3)  # strongSwan's IKE_AUTH answer: its AUTH verifies with our PSK computation
    assert not r.of(NegotiationFailed)
    (ike,), (child,) = r.of(IkeSaUp), r.of(ChildSaUp)
    assert ike.initiator and ike.remote_id == "gwb.lab"
    assert f"{child.outbound_spi:08x}" == r.record["child_sas"][0]["spi_out"]
    # our CHILD rekey; strongSwan's answer (to its own twin request) completes it
    r.ep.rekey_child(child.inbound_spi, 4.0)
    r.sent()
    (delete_request,) = r.deliver(5)
    new = r.of(ChildSaUp)[-1]
    assert new.rekeyed_from == child.inbound_spi and f"{new.outbound_spi:08x}" == r.record["child_sas"][1]["spi_out"]
    assert r.inner(delete_request).get(DeletePayload).spis == [child.inbound_spi.to_bytes(4, "big")]
    r.deliver(7)
    (down,) = r.of(ChildSaDown)
    assert down.inbound_spi == child.inbound_spi and down.reason == "rekeyed"
    # our IKE rekey, answered by strongSwan's response, then our delete of the old IKE SA
    r.sa.rekey_at = 8.0
    r.ep.reschedule(r.sa)
    r.ep.handle_timer(8.0)
    r.sent()
    sent = r.deliver(9)
    (delete_ike,) = sent
    (up,) = r.of(IkeSaUp)[1:]
    assert up.rekeyed_from == ike.unique_id and up.spi_r == bytes.fromhex(r.record["ike_sas"][1]["spi_r"])
    assert r.inner(delete_ike).get(DeletePayload).protocol == 1
    r.deliver(11)
    (gone,) = r.of(IkeSaDown)
    assert gone.unique_id == ike.unique_id and gone.reason == "rekeyed"
    assert [s["unique_id"] for s in r.ep.status()] == [up.unique_id]
