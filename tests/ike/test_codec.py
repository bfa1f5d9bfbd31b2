"""Message codec: every payload round-trips byte for byte; malformed input gives typed errors."""

from __future__ import annotations

import struct

import pytest

from ike.codec import message as m
from ike.codec import payloads as p
from ike.config import TrafficSelector
from ike.codec.constants import ExchangeType, NotifyType, ProtocolId
from ike.crypto.proposals import parse_proposals


def every_payload() -> list[p.Payload]:
    ike = parse_proposals(["aes256gcm16-prfsha256-ecp256", "aes128-sha256-modp2048"], ProtocolId.IKE)
    esp = parse_proposals(["aes256gcm16", "aes128-sha256-esn"], ProtocolId.ESP)
    for prop in esp:
        prop.spi = b"\x01\x02\x03\x04"
    return [
        p.NotifyPayload(NotifyType.COOKIE, b"c" * 33),
        p.SaPayload(ike), p.SaPayload(esp), p.KePayload(19, bytes(range(64))), p.NoncePayload(b"n" * 32),
        p.IdiPayload(1, bytes([192, 0, 2, 1])), p.IdrPayload(2, b"gw.example"),
        p.AuthPayload(2, b"a" * 32), p.CertPayload(12, b"h" * 20 + b"http://ca.example/gw.der"),
        p.CertReqPayload(4, b"h" * 20),
        p.NotifyPayload(NotifyType.REKEY_SA, b"", ProtocolId.ESP, b"\xca\xfe\xba\xbe"),
        p.DeletePayload(ProtocolId.ESP, [b"\x00\x00\x10\x00", b"\x00\x00\x20\x00"], 4),
        p.DeletePayload(ProtocolId.IKE, [], 0), p.VendorIdPayload(b"strongSwan"),
        p.TsiPayload([TrafficSelector.from_cidr("10.1.0.0/16"), TrafficSelector.from_cidr("fd00::/64", 6, 80, 443)]),
        p.TsrPayload([TrafficSelector.from_cidr("0.0.0.0/0")]),
        p.CpPayload(1, [(1, b""), (3, b""), (8, b"")]),
        p.UnknownPayload(200, b"opaque"),
    ]


def test_every_payload_round_trips():
    msg = m.Message(b"I" * 8, b"R" * 8, ExchangeType.IKE_AUTH, 7, True, False, every_payload())
    raw = m.encode(msg)
    back = m.decode(raw)
    assert m.encode(back) == raw
    assert [type(x) for x in back.payloads] == [type(x) for x in msg.payloads]
    assert back.payloads[1].proposals[1].transforms == msg.payloads[1].proposals[1].transforms
    assert back.payloads[14].selectors == msg.payloads[14].selectors


def test_critical_bit_and_unknown_attribute_round_trip():
    unknown = p.UnknownPayload(200, b"x", critical=False)
    msg = m.Message(b"I" * 8, bytes(8), ExchangeType.IKE_SA_INIT, 0, True, False, [unknown, p.NoncePayload(b"n" * 16)])
    raw = bytearray(m.encode(msg))
    # a transform with an extra TLV attribute: kept opaque and never selected
    tr = (struct.pack("!BBHBBH", 0, 0, 8 + 4 + 6, 1, 0, 12) + struct.pack("!HH", 0x800E, 128)
          + struct.pack("!HH", 99, 2) + b"zz")
    prop = struct.pack("!BBHBBBB", 0, 0, 8 + len(tr), 1, 1, 0, 1) + tr
    sa = p.SaPayload.parse(prop)
    assert isinstance(sa.proposals[0].transforms[0], p.OpaqueTransform)
    assert sa.body() == prop
    assert m.encode(m.decode(bytes(raw))) == bytes(raw)


def test_unknown_critical_payload_rejected():
    msg = m.Message(b"I" * 8, bytes(8), ExchangeType.IKE_SA_INIT, 0, True, False,
                    [p.UnknownPayload(200, b"x", critical=True)])
    with pytest.raises(m.UnsupportedCriticalPayload) as err:
        m.decode(m.encode(msg))
    assert err.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD and err.value.payload_type == 200


@pytest.mark.parametrize("raw", [
    b"", b"\x00" * 27,
    bytes(16) + bytes([33, 0x20, 34, 8]) + bytes(4) + struct.pack("!I", 28),  # SA payload missing
    bytes(16) + bytes([40, 0x20, 34, 8]) + bytes(4) + struct.pack("!I", 32) + b"\x00\x00\x00\x08",  # short nonce
    bytes(16) + bytes([0, 0x30, 34, 8]) + bytes(4) + struct.pack("!I", 28),  # major version 3
    bytes(16) + bytes([0, 0x20, 34, 8]) + bytes(4) + struct.pack("!I", 99),  # length mismatch
])
def test_malformed_messages_give_typed_errors(raw):
    with pytest.raises(m.MessageError):
        m.decode(raw)


def test_sk_seal_open_and_fragments_round_trip():
    from ike.crypto.keys import derive_ike_keys
    from ike.crypto.proposals import negotiated
    from ike.crypto.skcipher import SkCipher
    import random
    rng = random.Random(1).randbytes
    neg = negotiated(parse_proposals("aes128-sha256-modp2048", ProtocolId.IKE)[0])
    keys = derive_ike_keys(neg, b"i" * 32, b"r" * 32, b"g" * 256, b"I" * 8, b"R" * 8)
    cipher = SkCipher(neg, keys.sk_ei, keys.sk_ai)
    inner = every_payload()[1:]
    msg = m.Message(b"I" * 8, b"R" * 8, ExchangeType.IKE_AUTH, 1, True, False, inner)
    raw = m.seal(msg, cipher, rng)
    outer = m.decode(raw)
    assert m.encode(outer) == raw
    plain = m.open_sk(raw, outer, cipher)
    assert m.encode_chain(m.decode_inner(outer, outer.payloads[-1].first_inner, plain).payloads)[1] == \
        m.encode_chain(inner)[1]
    frags = m.seal_fragments(msg, cipher, rng, 200)
    assert len(frags) > 3 and all(len(f) <= 200 for f in frags)
    pieces = []
    for f in frags:
        o = m.decode(f)
        assert m.encode(o) == f
        pieces.append(m.open_sk(f, o, cipher))
    first = m.decode(frags[0]).payloads[-1].first_inner
    assert m.encode_chain(m.decode_chain(first, b"".join(pieces)))[1] == m.encode_chain(inner)[1]
    tampered = bytearray(raw)
    tampered[-1] ^= 1
    with pytest.raises(m.DecryptionFailed):
        m.open_sk(bytes(tampered), m.decode(bytes(tampered)), cipher)


# --- property: any message built from valid payloads survives encode -> decode -> encode ------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ike.codec.constants import TransformType  # noqa: E402
from ike.crypto.proposals import Proposal, Transform  # noqa: E402

_bytes = st.binary(max_size=40)
_v4 = st.integers(0, 2**32 - 1).map(lambda n: __import__("ipaddress").IPv4Address(n))
_v6 = st.integers(0, 2**128 - 1).map(lambda n: __import__("ipaddress").IPv6Address(n))


@st.composite
def _selector(draw):
    a, b = sorted(draw(st.lists(st.one_of(_v4), min_size=2, max_size=2))) if draw(st.booleans()) else \
        sorted(draw(st.lists(_v6, min_size=2, max_size=2)))
    p1, p2 = sorted(draw(st.lists(st.integers(0, 65535), min_size=2, max_size=2)))
    return TrafficSelector(a, b, draw(st.integers(0, 255)), p1, p2)


_transform = st.builds(Transform, st.sampled_from(list(TransformType)), st.integers(0, 65535),
                       st.one_of(st.none(), st.integers(0, 65535)))
_proposal = st.builds(lambda proto, ts, n, spi: Proposal(proto, ts, n, spi), st.sampled_from(list(ProtocolId)),
                      st.lists(_transform, max_size=6), st.integers(0, 255),
                      st.sampled_from([b"", b"1234", b"12345678"]))
_payload = st.one_of(
    st.builds(lambda ps: p.SaPayload(ps), st.lists(_proposal, min_size=1, max_size=3)),
    st.builds(p.KePayload, st.integers(0, 65535), _bytes),
    st.builds(p.NoncePayload, st.binary(min_size=16, max_size=64)),
    st.builds(p.IdiPayload, st.integers(0, 255), _bytes), st.builds(p.IdrPayload, st.integers(0, 255), _bytes),
    st.builds(p.AuthPayload, st.integers(0, 255), _bytes),
    # X.509 (4) CERT and CERTREQ bodies are checked when parsed (tests/ike/test_cert_payloads.py)
    st.builds(p.CertPayload, st.integers(0, 255).filter(lambda e: e != 4), _bytes),
    st.builds(p.CertReqPayload, st.integers(0, 255).filter(lambda e: e != 4), _bytes),
    st.builds(p.CertReqPayload.for_authorities, st.lists(st.binary(min_size=20, max_size=20), max_size=3)),
    st.builds(p.NotifyPayload, st.integers(0, 65535), _bytes, st.integers(0, 255), st.sampled_from([b"", b"abcd"])),
    st.builds(lambda spis: p.DeletePayload(3, spis, 4), st.lists(st.binary(min_size=4, max_size=4), max_size=4)),
    st.builds(p.VendorIdPayload, _bytes),
    st.builds(p.TsiPayload, st.lists(_selector(), max_size=3)),
    st.builds(p.TsrPayload, st.lists(_selector(), max_size=3)),
    st.builds(p.CpPayload, st.integers(0, 255), st.lists(st.tuples(st.integers(0, 0x7FFF), _bytes), max_size=3)),
    st.builds(lambda t, d, c: p.UnknownPayload(t, d, critical=c), st.sampled_from([48, 49, 54, 99, 200]), _bytes,
              st.just(False)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_payload, max_size=8), st.booleans(), st.booleans(), st.integers(0, 2**32 - 1))
def test_property_encode_decode_encode(payloads, initiator, response, mid):
    msg = m.Message(b"I" * 8, b"R" * 8, ExchangeType.INFORMATIONAL, mid, initiator, response, payloads)
    raw = m.encode(msg)
    back = m.decode(raw)
    assert m.encode(back) == raw
    assert (back.initiator, back.response, back.message_id) == (initiator, response, mid)
    assert [x.type for x in back.payloads] == [x.type for x in payloads]
