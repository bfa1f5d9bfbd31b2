"""INVALID_IKE_SPI (RFC 7296 s1.5, s2.21.4): an encrypted request for an IKE SA the endpoint does
not know gets an unprotected answer, rate-limited; the peer ignores such answers."""

from __future__ import annotations

from ike.codec import message as codec
from ike.codec.constants import ExchangeType, NotifyType
from ike.endpoint import INVALID_IKE_SPI_PER_SECOND, IkeEndpoint
from ike.codec.payloads import NotifyPayload, SkPayload
from tests.ike.harness import B_IP, IkeSaDown, IkeSaUp, Pair, mirrored, seeded_rng


def restarted_responder():
    """A and B up, then B restarts and forgets everything; A sends a liveness check."""
    a, b = mirrored(a_dpd_delay=10.0)
    pair = Pair([a], [b])
    pair.a.initiate("site", None, pair.now)
    pair.run()
    assert pair.of("a", IkeSaUp)
    pair.b = pair.ips[B_IP] = IkeEndpoint([b], rng=seeded_rng(77))
    return pair


def test_request_to_an_unknown_spi_gets_an_unprotected_invalid_ike_spi():
    pair = restarted_responder()
    pair.now = 10.0
    pair.a.handle_timer(pair.now)
    (dpd,) = pair.a.datagrams_to_send(pair.now)
    request = codec.decode(dpd.data)
    pair.b.receive_datagram(dpd.data, dpd.src, dpd.dst, pair.now)
    (reply,) = pair.b.datagrams_to_send(pair.now)
    assert (reply.src, reply.dst) == (dpd.dst, dpd.src)
    msg = codec.decode(reply.data)
    assert (msg.spi_i, msg.spi_r, msg.message_id) == (request.spi_i, request.spi_r, request.message_id)
    assert msg.response and not msg.initiator and msg.exchange == ExchangeType.INFORMATIONAL
    assert msg.payloads == [NotifyPayload(NotifyType.INVALID_IKE_SPI)]
    assert pair.b.drops == {"unknown IKE SPI": 1}
    # A must not change any state for an unauthenticated notify: it drops it and keeps retrying
    (sa,) = pair.a.sas.values()
    pair.a.receive_datagram(reply.data, reply.dst, reply.src, pair.now)
    assert sa.active is not None and sa.state == "established"
    assert pair.a.drops.get("unencrypted message after IKE_SA_INIT") == 1
    pair.advance(200.0)
    assert [d.reason for d in pair.of("a", IkeSaDown)] == ["dead peer"]


def test_no_answer_to_responses_or_unencrypted_requests():
    pair = restarted_responder()
    (sa,) = pair.a.sas.values()
    spi_i, spi_r = sa.spi_i, sa.spi_r
    for response, payloads in ((True, [sk_payload()]), (False, [])):
        msg = codec.Message(spi_i, spi_r, ExchangeType.INFORMATIONAL, 5, True, response, payloads)
        pair.b.receive_datagram(codec.encode(msg), ("192.0.2.1", 500), (B_IP, 500), 0.0)
    assert not pair.b.datagrams_to_send(0.0)
    assert pair.b.drops == {"unknown IKE SPI": 2}


def sk_payload():
    return SkPayload(b"\0" * 48)


def test_invalid_ike_spi_answers_are_rate_limited():
    pair = restarted_responder()
    (sa,) = pair.a.sas.values()
    msg = codec.Message(sa.spi_i, sa.spi_r, ExchangeType.INFORMATIONAL, 9, True, False, [sk_payload()])
    data = codec.encode(msg)
    for i in range(3 * INVALID_IKE_SPI_PER_SECOND):
        pair.b.receive_datagram(data, (f"203.0.113.{i + 1}", 500), (B_IP, 500), 50.0 + i * 0.01)
    assert len(pair.b.datagrams_to_send(51.0)) == INVALID_IKE_SPI_PER_SECOND
    assert pair.b.drops["INVALID_IKE_SPI rate limit"] == 2 * INVALID_IKE_SPI_PER_SECOND
    pair.b.receive_datagram(data, ("203.0.113.99", 500), (B_IP, 500), 51.5)
    assert len(pair.b.datagrams_to_send(51.5)) == 1
