"""RFC 9370 key updates and RFC 9242 IntAuth, step by step against strongSwan 6.1's own log.

tests/fixtures/strongswan61 (see its README) holds a 6.1 <-> 6.1 exchange with
aes256gcm16-prfsha384-ecp384-ke1_mlkem768 and every value charon dumped at ike level 4. From
the logged shared secrets and the nonces/SPIs on the wire, espgw's functions must give each
SKEYSEED and SK_* set charon derived, the IntAuth inputs and chain values of the
IKE_INTERMEDIATE exchange, and the AUTH payloads of IKE_AUTH, which they then decrypt.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from ike.codec.constants import AuthMethod
from ike.codec.constants import ProtocolId
from ike.crypto.multi_ke import (child_keymat_multi, intauth, intauth_chain, intauth_parts, rekeyed_ike_keys,
                                  rekeyed_skeyseed, update_ike_keys)
from ike.crypto.keys import IkeKeys, child_keymat, derive_ike_keys, prf, psk_auth, signed_octets
from ike.codec.message import decode, decode_inner, encrypted_payload, open_sk
from ike.codec.payloads import AuthPayload, IdiPayload, IdrPayload, NoncePayload, SaPayload
from ike.crypto.proposals import negotiated, parse_proposals
from ike.crypto.skcipher import SkCipher
from tunnel.lab import ike_pcap

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "strongswan61" / "strongswan-6.1-mlkem768.json"
# the classic part of the proposal: what IKE_SA_INIT's key derivation and the SK payloads use
CLASSIC = "aes256gcm16-prfsha384-ecp384"


class Recorded:
    def __init__(self) -> None:
        self.record = json.loads(FIXTURE.read_text())
        self.frames = ike_pcap.read_ike_frames(FIXTURE.parent / self.record["pcap"])
        self.neg = negotiated(parse_proposals(CLASSIC, ProtocolId.IKE)[0])
        self.logged = self.record["logged"]["gwA"]
        self.key_sets = self.record["key_sets"]
        init_req, init_resp = (decode(f.message) for f in self.frames[:2])
        self.ni = init_req.get(NoncePayload).data
        self.nr = init_resp.get(NoncePayload).data
        self.spi_i, self.spi_r = self.frames[1].spi_i, self.frames[1].spi_r

    def values(self, name: str, group: str = "IKE") -> list[bytes]:
        """charon's dumps of ``name`` in log order (gwA, the initiator); group IKE or CHD."""
        return [bytes.fromhex(e["hex"]) for e in self.logged if e["name"] == name and e["group"] == group]

    def keys(self, index: int) -> IkeKeys:
        s = self.key_sets[index]
        return IkeKeys(*(bytes.fromhex(s[k]) if k in s else b""
                         for k in ("Sk_d", "Sk_ai", "Sk_ar", "Sk_ei", "Sk_er", "Sk_pi", "Sk_pr")))


@pytest.fixture(scope="module")
def rec() -> Recorded:
    return Recorded()


def _same(a: IkeKeys, b: IkeKeys) -> bool:
    return all(getattr(a, k) == getattr(b, k) for k in ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr"))


def test_fixture_shape(rec):
    exchanges = [f.exchange for f in rec.frames]
    assert exchanges[:6] == ["IKE_SA_INIT"] * 2 + ["IKE_INTERMEDIATE"] * 2 + ["IKE_AUTH"] * 2
    assert rec.record["strongswan_version"].startswith("6.1")
    assert len(rec.key_sets) == 3  # IKE_SA_INIT, after IKE_INTERMEDIATE, the rekeyed IKE SA
    assert [len(v) for v in rec.values("key exchange secret")] == [48, 32, 48]  # ECP-384, ML-KEM, ECP-384
    assert [len(v) for v in rec.values("additional key exchange secret")] == [0, 0, 32]


def test_ike_sa_init_keys(rec):
    """Step 0, RFC 7296 s2.14: SKEYSEED = prf(Ni | Nr, g^ir), then prf+ -> SK_*(0)."""
    g_ir = rec.values("key exchange secret")[0]
    assert rec.values("nonces")[0] == rec.ni + rec.nr
    assert prf(rec.neg.prf, rec.ni + rec.nr, g_ir) == rec.values("SKEYSEED")[0]
    keys0 = derive_ike_keys(rec.neg, rec.ni, rec.nr, g_ir, rec.spi_i, rec.spi_r)
    assert _same(keys0, rec.keys(0))


def test_intermediate_key_update(rec):
    """Step 1, RFC 9370 s2.2.2: SKEYSEED(1) = prf(SK_d(0), SK(1) | Ni | Nr), prf+ -> SK_*(1)."""
    kem_secret = rec.values("key exchange secret")[1]
    assert prf(rec.neg.prf, rec.keys(0).sk_d, kem_secret + rec.ni + rec.nr) == rec.values("SKEYSEED")[1]
    keys1 = update_ike_keys(rec.neg, rec.keys(0), kem_secret, rec.ni, rec.nr, rec.spi_i, rec.spi_r)
    assert _same(keys1, rec.keys(1))
    assert not _same(keys1, rec.keys(0))


def test_intermediate_messages_use_the_init_keys_and_later_ones_the_updated(rec):
    for frame in rec.frames[2:4]:
        side = "i" if frame.from_initiator else "r"
        ike_pcap.open_sk(frame.message, getattr(rec.keys(0), f"sk_e{side}"), None, "aes-gcm-16")
        with pytest.raises(ike_pcap.SkError):
            ike_pcap.open_sk(frame.message, getattr(rec.keys(1), f"sk_e{side}"), None, "aes-gcm-16")
    for frame in rec.frames[4:6]:
        side = "i" if frame.from_initiator else "r"
        ike_pcap.open_sk(frame.message, getattr(rec.keys(1), f"sk_e{side}"), None, "aes-gcm-16")


def _intauth_steps(rec) -> tuple[bytes, bytes]:
    """IntAuth_i1 and IntAuth_r1 from the IKE_INTERMEDIATE request and response, checked
    against the A|P input and the prf value charon logged for each."""
    logged_parts, logged_values = rec.values("IntAuth_A|P"), rec.values("IntAuth_N = prf(Sk_px, data)")
    out = []
    for index, frame in enumerate(rec.frames[2:4]):
        side = "i" if frame.from_initiator else "r"
        _, inner = ike_pcap.open_sk(frame.message, getattr(rec.keys(0), f"sk_e{side}"), None, "aes-gcm-16")
        parts = intauth_parts(frame.message, 28, inner)
        assert parts == logged_parts[index]
        value = intauth_chain(rec.neg.prf, [(getattr(rec.keys(0), f"sk_p{side}"), parts)])
        assert value == logged_values[index]
        out.append(value)
    return out[0], out[1]


def test_intauth_matches_strongswan(rec):
    _intauth_steps(rec)


def test_ike_auth_with_final_keys_and_intauth(rec):
    """IKE_AUTH opens with SK_*(1); its AUTH payloads are PSK MACs over SignedOctets | IntAuth."""
    intauth_i, intauth_r = _intauth_steps(rec)
    keys1 = rec.keys(1)
    psk = bytes.fromhex(rec.record["psk_hex"])
    init_req, init_resp = rec.frames[0].message, rec.frames[1].message
    for frame, own_init, peer_nonce, sk_p, sk_e, id_cls in (
            (rec.frames[4], init_req, rec.nr, keys1.sk_pi, keys1.sk_ei, IdiPayload),
            (rec.frames[5], init_resp, rec.ni, keys1.sk_pr, keys1.sk_er, IdrPayload)):
        msg = decode(frame.message)
        plain = open_sk(frame.message, msg, SkCipher(rec.neg, sk_e, b""))
        inner = decode_inner(msg, encrypted_payload(msg).first_inner, plain)
        auth = inner.get(AuthPayload)
        assert auth.method == AuthMethod.SHARED_KEY_MIC
        octets = signed_octets(own_init, peer_nonce, rec.neg.prf, sk_p, inner.get(id_cls).body())
        octets += intauth(intauth_i, intauth_r, frame.message_id)
        assert frame.message_id == 2
        assert psk_auth(rec.neg.prf, psk, octets) == auth.data
        assert octets in rec.values("octets = message + nonce + prf(Sk_px, IDx') + IntAuth")


def _followup_plain(rec, frames, keys: IkeKeys) -> bytes:
    """Inner payloads of a fragmented IKE_FOLLOWUP_KE request, reassembled (RFC 7383)."""
    parts = [ike_pcap.open_skf(f.message, keys.sk_ei) for f in frames]
    assert [(n, t) for n, t, _, _ in parts] == [(1, 2), (2, 2)]
    return b"".join(p for _, _, _, p in parts)


def test_ike_rekey_with_additional_key_exchange(rec):
    """IKE SA rekey (CREATE_CHILD_SA + IKE_FOLLOWUP_KE), RFC 9370 s2.2.4:
    SKEYSEED = prf(SK_d(old), SK(0) | Ni | Nr | SK(1)), prf+ with the new nonces and SPIs."""
    keys1 = rec.keys(1)
    request, response = rec.frames[13], rec.frames[14]  # the CREATE_CHILD_SA of the IKE rekey
    assert (request.exchange, response.exchange) == ("CREATE_CHILD_SA", "CREATE_CHILD_SA")
    inner = []
    for frame, sk_e in ((request, keys1.sk_ei), (response, keys1.sk_er)):
        msg = decode(frame.message)
        plain = open_sk(frame.message, msg, SkCipher(rec.neg, sk_e, b""))
        inner.append(decode_inner(msg, encrypted_payload(msg).first_inner, plain))
    ni, nr = (m.get(NoncePayload).data for m in inner)
    spi_i = inner[0].get(SaPayload).proposals[0].spi
    spi_r = inner[1].get(SaPayload).proposals[0].spi
    assert (spi_i.hex(), spi_r.hex()) == (rec.record["ike_sas"][1]["spi_i"], rec.record["ike_sas"][1]["spi_r"])
    g_ir, kem_secret = rec.values("key exchange secret")[2], rec.values("additional key exchange secret")[2]
    assert rec.values("nonces")[2] == ni + nr
    skeyseed = rekeyed_skeyseed(rec.neg.prf, keys1.sk_d, g_ir, [kem_secret], ni, nr)
    assert skeyseed == rec.values("SKEYSEED")[2]
    assert prf(rec.neg.prf, keys1.sk_d, g_ir + kem_secret + ni + nr) != skeyseed  # order matters
    new = rekeyed_ike_keys(rec.neg, rec.neg.prf, keys1.sk_d, g_ir, [kem_secret], ni, nr, spi_i, spi_r)
    assert _same(new, rec.keys(2))
    # the fragmented IKE_FOLLOWUP_KE request carried the ML-KEM encapsulation key under SK_*(1)
    plain = _followup_plain(rec, rec.frames[15:17], keys1)
    assert len(plain) > 1184
    # and the new IKE SA's delete opens with SK_*(2)
    ike_pcap.open_sk(rec.frames[20].message, rec.keys(2).sk_ei, None, "aes-gcm-16")


def test_ike_auth_message_id_follows_intermediate(rec):
    assert struct.unpack("!I", rec.frames[4].message[20:24])[0] == rec.frames[2].message_id + 1


def _opened_pair(rec, request, response, keys: IkeKeys):
    out = []
    for frame, sk_e in ((request, keys.sk_ei), (response, keys.sk_er)):
        msg = decode(frame.message)
        plain = open_sk(frame.message, msg, SkCipher(rec.neg, sk_e, b""))
        out.append(decode_inner(msg, encrypted_payload(msg).first_inner, plain))
    return out


def test_child_sa_keys(rec):
    """The first CHILD SA (IKE_AUTH, no KE): prf+(SK_d(1), Ni | Nr). Its rekey with ECP-384 and
    ML-KEM-768 (RFC 9370 s2.2.4): prf+(SK_d(1), SK(0) | Ni | Nr | SK(1)), the new nonces."""
    keys1, esp_key_len = rec.keys(1), 36  # AES-256-GCM key + salt, per direction
    seeds, enc_i, enc_r = (rec.values(n, "CHD") for n in ("seed", "encryption initiator key",
                                                          "encryption responder key"))
    assert seeds[0] == rec.ni + rec.nr
    first = child_keymat(rec.neg.prf, keys1.sk_d, rec.ni, rec.nr, 2 * esp_key_len)
    assert (first[:esp_key_len], first[esp_key_len:]) == (enc_i[0], enc_r[0])

    request, response = _opened_pair(rec, rec.frames[6], rec.frames[7], keys1)  # CHILD_SA rekey
    ni, nr = request.get(NoncePayload).data, response.get(NoncePayload).data
    g_ir = rec.values("key exchange secret", "CHD")[0]
    kem_secret = rec.values("additional key exchange secret", "CHD")[0]
    assert (len(g_ir), len(kem_secret)) == (48, 32)
    assert seeds[1] == g_ir + ni + nr + kem_secret
    rekeyed = child_keymat_multi(rec.neg.prf, keys1.sk_d, g_ir, [kem_secret], ni, nr, 2 * esp_key_len)
    assert (rekeyed[:esp_key_len], rekeyed[esp_key_len:]) == (enc_i[1], enc_r[1])
