"""No (key, IV) pair is ever used twice: ESP AEAD IVs are the 64-bit sequence number under a key
that is fresh per SA (new KEYMAT on every CHILD rekey, new nonces on every new IKE SA), the
sender stops at the hard limit instead of wrapping, and the IKE SK payload's AEAD IVs never
repeat under one key."""

from __future__ import annotations

import os
import struct

import pytest

from esp.errors import SAExpired
from esp.sa import InboundSA, OutboundSA
from esp.transforms import transform_by_name
from ike.codec import message as codec
from ike.codec.constants import ExchangeType
from ike.endpoint import IkeEndpoint
from ike.codec.payloads import NoncePayload
from tests.ike.harness import B_IP, ChildSaUp, IkeSaUp, Pair, Wire, mirrored, seeded_rng

AEADS = ["aes128gcm16", "aes256gcm8", "aes128gmac", "chacha20poly1305"]
INNER = bytes.fromhex("4500001c00014000401100000a0100010a020001") + bytes(8)


def keymat(name: str, fill: int = 1) -> bytes:
    return bytes([fill]) * transform_by_name(name).keymat_len


# --- ESP: the IV is the sequence number, and the sequence number never wraps -------------------

@pytest.mark.parametrize("name", AEADS)
def test_esp_aead_iv_is_the_sequence_number(name):
    out = OutboundSA(0x101, name, keymat(name), rng=lambda n: bytes(n))  # a constant rng: not used
    ivs = []
    for expected_seq in range(1, 2001):
        packet = out.encapsulate(INNER)
        seq_lo = struct.unpack_from("!I", packet, 4)[0]
        iv = packet[8:16]
        assert seq_lo == expected_seq and iv == expected_seq.to_bytes(8, "big")
        ivs.append(iv)
    assert len(set(ivs)) == len(ivs)


@pytest.mark.parametrize("name", AEADS)
def test_esp_sender_refuses_past_2_32_without_esn(name):
    last = (1 << 32) - 1
    out = OutboundSA(0x102, name, keymat(name), initial_seq=last - 2)
    assert out.rekey_needed, "a counter this close to the end must already ask for a rekey"
    inbound = InboundSA(0x102, name, keymat(name), replay_window=0)
    sent = [out.encapsulate(INNER), out.encapsulate(INNER)]
    assert [p[8:16] for p in sent] == [(last - 1).to_bytes(8, "big"), last.to_bytes(8, "big")]
    for _ in range(3):  # refused every time, and the counter stays put
        with pytest.raises(SAExpired):
            out.encapsulate(INNER)
        with pytest.raises(SAExpired):
            out.encapsulate_dummy()
    assert out.seq == last and out.expired
    assert inbound.decapsulate(sent[1])[1] == INNER  # the last legal packet is a valid one


@pytest.mark.parametrize("name", AEADS + ["aes128-sha256"])
def test_esp_sender_refuses_past_2_64_with_esn(name):
    last = (1 << 64) - 1
    out = OutboundSA(0x103, name, keymat(name), esn=True, initial_seq=last - 1)
    packet = out.encapsulate(INNER)
    if transform_by_name(name).kind != "cbc":
        assert packet[8:16] == last.to_bytes(8, "big")
    with pytest.raises(SAExpired):
        out.encapsulate(INNER)
    assert out.seq == last


def test_esp_esn_ivs_differ_across_the_32_bit_boundary():
    """With ESN the low 32 bits on the wire repeat after 2^32, the 64-bit IV must not."""
    name = "aes128gcm16"
    out = OutboundSA(0x104, name, keymat(name), esn=True, initial_seq=(1 << 32) - 3)
    packets = [out.encapsulate(INNER) for _ in range(6)]
    ivs = [p[8:16] for p in packets]
    assert len(set(ivs)) == 6
    assert [int.from_bytes(iv, "big") for iv in ivs] == list(range((1 << 32) - 2, (1 << 32) + 4))
    assert [struct.unpack_from("!I", p, 4)[0] for p in packets[2:]] == [0, 1, 2, 3]


def test_esp_cbc_ivs_come_from_the_rng_and_differ():
    name = "aes128-sha256"
    out = OutboundSA(0x105, name, keymat(name), rng=os.urandom)
    ivs = {out.encapsulate(INNER)[8:24] for _ in range(2000)}
    assert len(ivs) == 2000


# --- IKE: fresh CHILD keys on every rekey, fresh IKE keys on every new IKE SA ------------------

def child_keys(pair) -> list[bytes]:
    """Every directional ESP key A installed (B's are the same ones, mirrored)."""
    return [k for e in pair.of("a", ChildSaUp) for k in (e.inbound_keymat, e.outbound_keymat)]


def assert_child_keys_fresh(pair):
    ups_a = pair.of("a", ChildSaUp)
    a_out = [e.outbound_keymat for e in ups_a]
    a_in = [e.inbound_keymat for e in ups_a]
    # one key per direction per SA: A's outbound keys are B's inbound ones and vice versa
    assert len(set(a_out + a_in)) == 2 * len(ups_a), "a CHILD SA key was used twice"
    for e in ups_a:
        assert e.inbound_keymat != e.outbound_keymat  # both directions start at sequence 1
    b_keys = {k for e in pair.of("b", ChildSaUp) for k in (e.inbound_keymat, e.outbound_keymat)}
    assert b_keys == set(a_out + a_in)


@pytest.mark.parametrize("esp", ["aes256gcm16", "chacha20poly1305-x25519"])
def test_child_rekeys_derive_new_keys(esp):
    a, b = mirrored(esp=esp, child_rekey_time=100.0, child_life_time=150.0,
                    rekey_time=350.0, b_rekey_time=500.0)
    pair = Pair([a], [b])
    pair.a.initiate("site", None, 0.0)
    pair.run()
    pair.advance(1500)
    ups = pair.of("a", ChildSaUp)
    assert len(ups) >= 12 and len(pair.of("a", IkeSaUp)) >= 3  # CHILD and IKE rekeys happened
    assert_child_keys_fresh(pair)


def test_restart_gives_new_nonces_and_keys():
    """A restarted gateway makes a new IKE SA: new nonces, so new IKE and CHILD keys, even with a
    peer whose own choices repeat exactly (same seeded rng on B before and after)."""
    keys, nonces = [], []

    def init_nonce(d):  # the SA forgets its nonces once IKE_AUTH is done: read them on the wire
        msg = codec.decode(d.data)
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            found.append(msg.get(NoncePayload).data)
        return d

    for seed_a in (11, 12):
        a, b = mirrored()
        found: list[bytes] = []
        pair = Pair([a], [b], seed=seed_a, wire=Wire(tamper=init_nonce))
        pair.b = pair.ips[B_IP] = IkeEndpoint([b], rng=seeded_rng(99))
        pair.a.initiate("site", None, 0.0)
        pair.run()
        (sa,) = pair.a.sas.values()
        nonces.append(tuple(found))
        keys += [sa.keys.sk_d, sa.keys.sk_ei, sa.keys.sk_er] + child_keys(pair)
    assert nonces[0][0] != nonces[1][0]
    assert nonces[0][1] == nonces[1][1]  # the responder's nonce repeated, by construction
    assert len(set(keys)) == len(keys)


# --- IKE: SK payload IVs never repeat under one key --------------------------------------------

def test_ike_sk_ivs_never_repeat_under_one_key():
    seen: dict[tuple, bytes] = {}  # (SPIs, sender is initiator, IV) -> the message it protected
    encrypted = 0

    def record(d):
        nonlocal encrypted
        msg = codec.decode(d.data)
        sk = codec.encrypted_payload(msg)
        if sk is None:
            return d
        encrypted += 1
        # one key per IKE SA and direction; the IV is the first 8 bytes of the SK/SKF body
        key = (msg.spi_i, msg.spi_r, msg.initiator == (not msg.response), sk.data[:8])
        previous = seen.setdefault(key, d.data)
        assert previous == d.data, "two different messages under one key with the same IV"
        return d

    a, b = mirrored(esp="aes128gcm16", child_rekey_time=60.0, child_life_time=90.0,
                    rekey_time=400.0, b_rekey_time=600.0, dpd_delay=5.0)
    pair = Pair([a], [b], wire=Wire(tamper=record, loss=0.05, seed=3))
    pair.a.initiate("site", None, 0.0)
    pair.run()
    pair.advance(1200)
    assert encrypted > 400
