"""Hostile initiators against the responder's half-open state (issue #19, RFC 8019): the exact
cases the issue found, replayed. A replayed cookie makes one SA however it is varied; half-open
SAs are capped per address and in all; oversized or over-long IKE_SA_INIT requests are refused
before any parsing work."""

from __future__ import annotations

import struct

import pytest

from ike.codec import message as codec
from ike.codec import payloads
from ike.codec.constants import NotifyType
from ike.codec.payloads import MalformedPayload, NotifyPayload, SaPayload, VendorIdPayload
from ike.endpoint import IkeEndpoint
from tests.ike.harness import A_IP, B_IP, IkeSaUp, Pair, mirrored, seeded_rng

DST = ("198.51.100.2", 500)


def request(seed: int = 1) -> bytes:
    ini = IkeEndpoint([mirrored(b_remote_addrs=["%any"])[0]], rng=seeded_rng(seed))
    ini.initiate("site", None, 0.0)
    (d,) = ini.datagrams_to_send(0.0)
    return d.data


def responder(**kw) -> IkeEndpoint:
    return IkeEndpoint([mirrored(b_remote_addrs=["%any"])[1]], rng=seeded_rng(9), **kw)


def edited(data: bytes, change) -> bytes:
    msg = codec.decode(data)
    msg.payloads = change(msg.payloads)
    return codec.encode(msg)


def with_cookie(ep: IkeEndpoint, data: bytes, src) -> bytes:
    """The request as the initiator sends it again after the cookie round trip."""
    ep.receive_datagram(data, src, DST, 0.0)
    (reply,) = ep.datagrams_to_send(0.0)
    cookie = codec.decode(reply.data).notifies()[NotifyType.COOKIE].data
    return edited(data, lambda p: [NotifyPayload(NotifyType.COOKIE, cookie)] + p)


def test_one_cookie_from_2000_source_ports_makes_one_half_open_sa():
    ep = responder(cookie_threshold=0)
    cookied = with_cookie(ep, request(), ("203.0.113.9", 500))
    for port in range(1024, 3024):
        ep.receive_datagram(cookied, ("203.0.113.9", port), DST, 1.0)
    assert ep.half_open_count() == 1
    assert ep.drops["IKE_SA_INIT replayed"] == 1999
    answers = ep.datagrams_to_send(1.0)
    assert len(answers) == 1  # only the first got an IKE_SA_INIT response (a DH computed once)


def test_one_cookie_with_varied_vendor_ids_from_one_port_makes_one_half_open_sa():
    ep = responder(cookie_threshold=0)
    src = ("203.0.113.9", 500)
    cookied = with_cookie(ep, request(), src)
    for i in range(2000):
        variant = edited(cookied, lambda p, i=i: p + [VendorIdPayload(struct.pack("!I", i))])
        ep.receive_datagram(variant, src, DST, 1.0)
    assert ep.half_open_count() == 1
    assert ep.drops["IKE_SA_INIT replayed"] == 1999


def test_an_identical_retransmission_is_still_answered():
    ep = responder()
    data, src = request(), ("203.0.113.9", 500)
    ep.receive_datagram(data, src, DST, 0.0)
    first = ep.datagrams_to_send(0.0)
    ep.receive_datagram(data, src, DST, 0.5)
    assert ep.datagrams_to_send(0.5) == first and ep.half_open_count() == 1


def test_half_open_sas_per_address_are_capped():
    ep = responder(half_open_per_ip=5)
    for seed in range(1, 9):
        ep.receive_datagram(request(seed), ("203.0.113.9", 500 + seed), DST, 0.0)
    assert ep.half_open_count() == 5
    assert ep.drops["half-open limit per address"] == 3
    ep.receive_datagram(request(20), ("203.0.113.10", 500), DST, 0.0)  # another address still gets in
    assert ep.half_open_count() == 6


def test_a_full_table_evicts_the_oldest_and_a_real_peer_still_connects():
    a_conn, b_conn = mirrored(b_remote_addrs=["%any"])
    pair = Pair([a_conn], [b_conn], half_open_limit=4)
    for i in range(4):  # a flood fills the table with initiators that never authenticate
        pair.b.receive_datagram(request(100 + i), (f"192.0.2.{i + 1}", 500), (B_IP, 500), 0.0)
    assert pair.b.half_open_count() == 4
    pair.b.datagrams_to_send(0.0)
    pair.a.initiate("site", None, 0.0)
    pair.run()
    assert pair.of("a", IkeSaUp) and pair.of("b", IkeSaUp)
    assert pair.b.drops["half-open SA evicted"] == 1
    assert pair.b.half_open_count() == 3  # the real peer's SA is established, no longer half-open
    assert A_IP not in pair.b._half_open_by_ip


def test_eviction_leaves_nothing_behind():
    ep = responder(half_open_limit=10, half_open_per_ip=1)
    for i in range(100):
        ep.receive_datagram(request(i + 1), (f"192.0.2.{i + 1}", 500), DST, 0.0)
    assert ep.half_open_count() == len(ep.half_open) == 10 == sum(ep._half_open_by_ip.values())
    assert len(ep.sas) == 10  # evicted SAs are gone from every index once settled
    ep.handle_timer(100.0)  # the survivors expire
    assert ep.half_open_count() == len(ep.sas) == len(ep._half_open_by_ip) == 0


def _no_decode(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setattr(codec, "decode", lambda data: calls.append(data) or pytest.fail("decoded"))
    return calls


def test_a_60kB_ike_sa_init_is_refused_before_parsing(monkeypatch):
    big = edited(request(), lambda p: p + [VendorIdPayload(bytes(60_000))])
    assert len(big) > 60_000
    ep = responder()
    calls = _no_decode(monkeypatch)
    ep.receive_datagram(big, ("203.0.113.9", 500), DST, 0.0)
    assert not calls and ep.drops == {"IKE_SA_INIT too large": 1} and ep.half_open_count() == 0


def _empty_proposals(n: int) -> bytes:
    """An SA payload body of n proposals without transforms (8 bytes each)."""
    return b"".join(struct.pack("!BBHBBBB", 0 if i == n - 1 else 2, 0, 8, (i + 1) % 256, 1, 0, 0) for i in range(n))


def test_8000_empty_proposals_are_refused_before_parsing(monkeypatch):
    body = _empty_proposals(8000)
    data = request()
    msg = codec.decode(data)
    msg.payloads = [payloads.UnknownPayload(33, body) if isinstance(p, SaPayload) else p for p in msg.payloads]
    flood = codec.encode(msg)  # the SA payload carried as raw bytes: 64 kB of proposals
    assert len(flood) > 64_000
    ep = responder()
    calls = _no_decode(monkeypatch)
    ep.receive_datagram(flood, ("203.0.113.9", 500), DST, 0.0)
    assert not calls and ep.drops == {"IKE_SA_INIT too large": 1}


def test_the_sa_payload_parser_stops_at_the_proposal_and_transform_bounds(monkeypatch):
    parsed: list = []
    real = payloads._parse_proposal
    monkeypatch.setattr(payloads, "_parse_proposal", lambda d: parsed.append(1) or real(d))
    with pytest.raises(MalformedPayload, match="proposals"):
        SaPayload.parse(_empty_proposals(300))  # 2.4 kB: under the size bound, over the count
    assert len(parsed) == payloads.MAX_PROPOSALS
    parsed.clear()
    # one proposal header announcing 255 transforms is refused before any transform is read
    with pytest.raises(MalformedPayload, match="transforms"):
        SaPayload.parse(struct.pack("!BBHBBBB", 0, 0, 8, 1, 1, 0, 255))
    assert not parsed


def test_only_an_accepted_request_evicts():
    ep = responder(half_open_limit=2)
    for i in range(2):
        ep.receive_datagram(request(i + 1), (f"192.0.2.{i + 1}", 500), DST, 0.0)
    unacceptable = IkeEndpoint([mirrored(b_remote_addrs=["%any"], a_ike="aes128-sha256-modp2048")[0]],
                               rng=seeded_rng(5))
    unacceptable.initiate("site", None, 0.0)
    (d,) = unacceptable.datagrams_to_send(0.0)
    ep.receive_datagram(d.data, ("192.0.2.9", 500), DST, 0.0)  # answered NO_PROPOSAL_CHOSEN
    assert ep.half_open_count() == 2 and "half-open SA evicted" not in ep.drops
