"""A scaled-down run of bench/reliability_half_open.py (issue #19): spoofed initiators that answer
the cookie fill the half-open table; the caps hold, a replayed cookie from other ports or with
other payloads makes no second SA, memory stays bounded and a real peer still connects."""

from __future__ import annotations

from bench.reliability_half_open import REPLAY_EVERY, REPLAY_PORTS, flood, worst_case


def test_5000_cookie_answering_initiators_leave_a_bounded_table_and_a_real_peer_connects():
    r = flood(5000, 20.0, half_open_limit=1000)
    assert r["half_open_peak"] == 1000 and r["half_open_at_end"] <= 1000
    assert r["drops"]["half-open SA evicted"] >= 5000 - 1000 - 10
    replayers = len(range(0, 5000, REPLAY_EVERY)) - 1  # the first came before the cookie threshold
    assert r["drops"]["IKE_SA_INIT replayed"] == replayers * (REPLAY_PORTS + 1)
    assert r["real_peer_connect_seconds"] is not None and r["real_peer_connect_seconds"] < 2.0
    assert r["rss_growth_mb"] < 20


def test_refused_datagrams_cost_far_less_than_accepted_ones():
    r = worst_case(runs=20)
    accepted = r["ike_sa_init_accepted"]["median_us"]
    for refused in ("oversized_64kB", "8000_empty_proposals", "cookie_demanded_under_load"):
        assert r[refused]["median_us"] < accepted / 4, refused
