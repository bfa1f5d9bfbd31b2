"""Cookies under load (RFC 7296 s2.6): a request without a valid cookie is answered from a minimal
parse, never a full decode; everything else still takes the full path with its precise answers."""

from __future__ import annotations

import random
import struct

import pytest

from ike.codec import message as codec
from ike.codec.constants import ExchangeType, NotifyType
from ike.crypto.cookies import cookie_reply, init_request_fields
from ike.endpoint import IkeEndpoint
from ike.codec.payloads import NoncePayload, NotifyPayload, SaPayload
from tests.ike.test_handshake import assert_child_pair
from tests.ike.harness import IkeSaUp, Pair, mirrored, seeded_rng

SRC, DST = ("203.0.113.9", 500), ("198.51.100.2", 500)


def first_request(seed: int = 1) -> bytes:
    a = mirrored(b_remote_addrs=["%any"])[0]
    ini = IkeEndpoint([a], rng=seeded_rng(seed))
    ini.initiate("site", None, 0.0)
    (d,) = ini.datagrams_to_send(0.0)
    return d.data


def loaded_responder(threshold: int = 0) -> IkeEndpoint:
    return IkeEndpoint([mirrored(b_remote_addrs=["%any"])[1]], rng=seeded_rng(9), cookie_threshold=threshold)


def with_payloads(request: bytes, transform) -> bytes:
    msg = codec.decode(request)
    msg.payloads = transform(msg.payloads)
    return codec.encode(msg)


def test_fields_found_without_touching_sa_or_ke():
    request = first_request()
    msg = codec.decode(request)
    assert init_request_fields(request) == (msg.get(NoncePayload).data, None)
    cookie = bytes(range(33))
    with_cookie = with_payloads(request, lambda p: [NotifyPayload(NotifyType.COOKIE, cookie)] + p)
    assert init_request_fields(with_cookie) == (msg.get(NoncePayload).data, cookie)
    # a garbage SA and KE body is of no concern to the walk (the full decoder rejects it later)
    broken = bytearray(request)
    sa_len = struct.unpack_from("!H", request, 28 + 2)[0]
    broken[32:28 + sa_len] = bytes(sa_len - 4)
    assert init_request_fields(bytes(broken)) == (msg.get(NoncePayload).data, None)


@pytest.mark.parametrize("change", [
    lambda d: d[:8] + b"\1" * 8 + d[16:],  # SPIr set
    lambda d: d[:17] + b"\x10" + d[18:],  # major version 1
    lambda d: d[:18] + bytes([ExchangeType.IKE_AUTH]) + d[19:],
    lambda d: d[:19] + b"\x20" + d[20:],  # a response
    lambda d: d[:20] + b"\0\0\0\1" + d[24:],  # message ID 1
    lambda d: d + b"\0",  # header length disagrees
    lambda d: d[:-1],
    lambda d: d[:28],
    lambda d: d[:30] + b"\0\3" + d[32:],  # payload length below 4
])
def test_anything_unusual_is_left_to_the_full_decoder(change):
    assert init_request_fields(change(first_request())) is None


def test_no_or_bad_nonce_is_left_to_the_full_decoder():
    request = first_request()
    no_nonce = with_payloads(request, lambda p: [x for x in p if not isinstance(x, NoncePayload)])
    assert init_request_fields(no_nonce) is None
    short = with_payloads(request, lambda p: [NoncePayload(b"n" * 8) if isinstance(x, NoncePayload) else x for x in p])
    assert init_request_fields(short) is None  # RFC 7296 s3.9: 16 to 256 bytes


def test_reply_is_what_the_codec_encodes():
    spi, cookie = bytes(range(8)), b"\7" * 33
    expected = codec.Message(spi, bytes(8), ExchangeType.IKE_SA_INIT, 0, False, True,
                             [NotifyPayload(NotifyType.COOKIE, cookie)])
    assert cookie_reply(spi, cookie) == codec.encode(expected)


def test_loaded_responder_answers_without_a_full_decode(monkeypatch):
    responder = loaded_responder()
    request = first_request()

    def no_decode(data):
        raise AssertionError("full decode under cookie load")

    monkeypatch.setattr(codec, "decode", no_decode)
    responder.receive_datagram(request, SRC, DST, 0.0)
    (reply,) = responder.datagrams_to_send(0.0)
    monkeypatch.undo()
    assert (reply.src, reply.dst) == (DST, SRC)
    msg = codec.decode(reply.data)
    assert msg.response and msg.spi_i == request[:8] and msg.spi_r == bytes(8)
    (notify,) = msg.payloads
    assert notify.notify_type == NotifyType.COOKIE
    nonce = codec.decode(request).get(NoncePayload).data
    assert responder.cookies.verify(notify.data, nonce, SRC[0], request[:8], 0.0)
    assert responder.drops == {"cookie required": 1} and not responder.sas


def test_wrong_cookie_gets_a_fresh_one_and_the_right_one_gets_in():
    responder = loaded_responder()
    request = first_request()
    wrong = with_payloads(request, lambda p: [NotifyPayload(NotifyType.COOKIE, b"\0" * 33)] + p)
    responder.receive_datagram(wrong, SRC, DST, 0.0)
    (reply,) = responder.datagrams_to_send(0.0)
    cookie = codec.decode(reply.data).payloads[0].data
    assert cookie != b"\0" * 33 and not responder.sas
    right = with_payloads(request, lambda p: [NotifyPayload(NotifyType.COOKIE, cookie)] + p)
    responder.receive_datagram(right, SRC, DST, 0.0)
    (reply,) = responder.datagrams_to_send(0.0)
    assert codec.decode(reply.data).get(SaPayload) is not None and responder.half_open_count() == 1
    # the same cookie from another address is worthless
    responder.receive_datagram(right, ("203.0.113.10", 500), DST, 0.0)
    (reply,) = responder.datagrams_to_send(0.0)
    assert codec.decode(reply.data).payloads[0].notify_type == NotifyType.COOKIE


def test_retransmitted_request_of_a_half_open_sa_gets_its_cached_answer():
    responder = loaded_responder(threshold=1)
    request = first_request()
    responder.receive_datagram(request, SRC, DST, 0.0)  # below the threshold: a half-open SA
    (answer,) = responder.datagrams_to_send(0.0)
    assert responder.half_open_count() == 1
    responder.receive_datagram(request, SRC, DST, 1.0)  # now at the threshold
    (again,) = responder.datagrams_to_send(1.0)
    assert again.data == answer.data
    responder.receive_datagram(first_request(seed=2), SRC, DST, 1.0)
    (cookie,) = responder.datagrams_to_send(1.0)
    assert codec.decode(cookie.data).payloads[0].notify_type == NotifyType.COOKIE


def test_full_path_answers_stay_for_malformed_requests_under_load():
    responder = loaded_responder()
    request = first_request()
    no_nonce = with_payloads(request, lambda p: [x for x in p if not isinstance(x, NoncePayload)])
    responder.receive_datagram(no_nonce, SRC, DST, 0.0)
    (reply,) = responder.datagrams_to_send(0.0)
    assert codec.decode(reply.data).payloads[0].notify_type == NotifyType.INVALID_SYNTAX
    responder.receive_datagram(request[:-3], SRC, DST, 0.0)
    assert not responder.datagrams_to_send(0.0) and responder.drops["MalformedMessage"] == 1


def test_handshake_through_cookies_end_to_end():
    """Above the threshold (0 here) the first request gets a COOKIE, the second one carries it."""
    a, b = mirrored()
    pair = Pair([a], [b], cookie_threshold=0)
    pair.a.initiate("site", None, 0.0)
    pair.run()
    assert pair.b.drops.get("cookie required") == 1
    assert pair.of("a", IkeSaUp) and pair.of("b", IkeSaUp)
    assert_child_pair(pair)


def test_mutated_requests_under_load_never_crash():
    r = random.Random(4)
    responder = loaded_responder()
    base = first_request()
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(r.randrange(1, 4)):
            data[r.randrange(len(data))] = r.randrange(256)
        if r.random() < 0.2:
            data = data[:r.randrange(len(data))]
        responder.receive_datagram(bytes(data), SRC, DST, 0.0)
        responder.datagrams_to_send(0.0)
    assert "internal error" not in responder.drops
    assert not responder.sas
