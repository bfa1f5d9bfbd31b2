"""Rekey, reauthentication and expiry times: the jitter never puts a rekey in the past (a rekey
storm) or after the hard lifetime, for CHILD and IKE SAs, as strongSwan's apply_jitter."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ike.config import ChildConfig, TrafficSelector
from ike.tasks.child_create import _lifetimes
from tests.ike.harness import ChildSaUp, IkeSaUp, Pair, mirrored, seeded_rng

NET = [TrafficSelector.from_cidr("10.0.0.0/24")]


def child_cfg(**kw) -> ChildConfig:
    return ChildConfig("net", NET, NET, **kw)


def rekey_offsets(cfg: ChildConfig, draws: int = 300, now: float = 1000.0) -> list[tuple[float, float]]:
    """(rekey_at - now, expire_at - now) for many random draws."""
    sa = SimpleNamespace(rng=seeded_rng(3))
    out = []
    for _ in range(draws):
        rekey_at, expire_at = _lifetimes(sa, cfg, now)
        out.append((rekey_at - now, expire_at - now))
    return out


@pytest.mark.parametrize("kw", [
    dict(rekey_time=10.0, life_time=100.0),  # rand_time default 90 s > rekey_time: was a rekey storm
    dict(rekey_time=10.0, life_time=0.0),  # no hard lifetime: the default jitter was infinite
    dict(rekey_time=10.0, life_time=30.0, rand_time=50.0),  # an explicit rand_time above rekey_time
])
def test_child_rekey_jitter_is_capped_at_rekey_time(kw):
    offsets = rekey_offsets(child_cfg(**kw))
    assert all(0.0 < rekey <= 10.0 for rekey, _ in offsets)
    assert all(rekey < expire for rekey, expire in offsets)
    assert max(r for r, _ in offsets) - min(r for r, _ in offsets) > 5.0  # still spread out


def test_child_rekey_jitter_defaults_and_explicit_values():
    default = rekey_offsets(child_cfg(rekey_time=100.0))  # life 110: rand_time 10
    assert all(90.0 < rekey <= 100.0 and expire == pytest.approx(110.0) for rekey, expire in default)
    assert {r for r, _ in rekey_offsets(child_cfg(rekey_time=100.0, rand_time=0.0))} == {100.0}
    explicit = rekey_offsets(child_cfg(rekey_time=100.0, life_time=300.0, rand_time=20.0))
    assert all(80.0 < rekey <= 100.0 and expire == 300.0 for rekey, expire in explicit)
    # a negative rand_time is treated as none, never pushing the rekey past rekey_time
    assert {r for r, _ in rekey_offsets(child_cfg(rekey_time=100.0, rand_time=-5.0))} == {100.0}


def test_child_zero_rekey_time_means_no_rekey():
    sa = SimpleNamespace(rng=seeded_rng(3))
    assert _lifetimes(sa, child_cfg(rekey_time=0.0, life_time=50.0), 5.0) == (None, 55.0)


def test_long_life_time_child_rekeys_at_a_steady_pace():
    """life_time well above 2 x rekey_time between two endpoints: about one rekey per rekey_time
    interval, not one per message round trip."""
    a, b = mirrored(child_rekey_time=10.0, child_life_time=100.0)
    pair = Pair([a], [b])
    pair.a.initiate("site", None, pair.now)
    pair.run()
    pair.advance(100.0)
    ups = pair.of("a", ChildSaUp)
    assert 10 <= len(ups) <= 45, len(ups)  # each side rekeys at 5 s on average: about 2 x 100 / 10 / 2
    assert all(0.0 < u.rekey_time <= 10.0 for u in ups)
    live = [c for sa in pair.a.sas.values() for c in sa.children.values() if c.state == "installed"]
    assert len(live) == 1


def ike_times(seed: int, **kw):
    a, b = mirrored(**kw)
    pair = Pair([a], [b], seed=seed)
    pair.a.initiate("site", None, pair.now)
    pair.run()
    assert pair.of("a", IkeSaUp)
    (sa,) = [s for s in pair.a.sas.values() if s.established]
    return sa.established_at, sa.rekey_at, sa.reauth_at, sa.expire_at


@pytest.mark.parametrize("seed", range(8))
def test_ike_rekey_jitter_within_ten_percent_and_before_expiry(seed):
    est, rekey, reauth, expire = ike_times(seed, rekey_time=1000.0)
    assert 900.0 <= rekey - est <= 1000.0 and reauth is None
    assert expire == pytest.approx(rekey + 100.0)  # over_time default: 10 % of rekey_time


@pytest.mark.parametrize("seed", range(8))
def test_ike_reauth_jitter_within_ten_percent_and_before_expiry(seed):
    est, rekey, reauth, expire = ike_times(seed, rekey_time=0.0, reauth_time=1000.0, over_time=30.0)
    assert rekey is None and 900.0 <= reauth - est <= 1000.0
    assert expire == pytest.approx(reauth + 30.0)
    est, rekey, reauth, expire = ike_times(seed, rekey_time=500.0, reauth_time=1000.0)
    assert 450.0 <= rekey - est <= 500.0 and 900.0 <= reauth - est <= 1000.0
    assert expire == pytest.approx(min(rekey + 50.0, reauth + 100.0))


def test_ike_short_rekey_time_rekeys_at_a_steady_pace():
    a, b = mirrored(rekey_time=20.0)
    pair = Pair([a], [b])
    pair.a.initiate("site", None, pair.now)
    pair.run()
    pair.advance(200.0)
    rekeys = [e for e in pair.of("a", IkeSaUp) if e.rekeyed_from is not None]
    assert 8 <= len(rekeys) <= 25, len(rekeys)
    assert len([sa for sa in pair.a.sas.values() if sa.established]) == 1


def test_retransmit_schedule_defaults_are_strongswans():
    from ike.endpoint import IkeEndpoint
    schedule = IkeEndpoint([], rng=seeded_rng(1)).retransmit_schedule
    assert (schedule.timeout, schedule.base, schedule.tries) == (4.0, 1.8, 5)
    assert schedule.total() == pytest.approx(165.0, abs=1.0)


@pytest.mark.parametrize("kw", [dict(retransmit_timeout=0.0), dict(retransmit_timeout=float("nan")),
                                dict(retransmit_base=0.5), dict(retransmit_tries=-1),
                                dict(retransmit_tries=1000), dict(retransmit_tries=2.5)])
def test_retransmit_schedule_rejects_nonsense(kw):
    from ike.endpoint import IkeEndpoint
    with pytest.raises(ValueError, match="retransmit"):
        IkeEndpoint([], rng=seeded_rng(1), **kw)


def test_short_retransmit_schedule_declares_a_dead_peer_in_seconds():
    """timeout 0.5 s, base 1, 2 tries: a peer that stops answering is dead 1.5 s after the
    liveness check is sent, with the check sent three times."""
    from tests.ike.harness import IkeSaDown, Wire

    a, b = mirrored(a_dpd_delay=5.0)
    wire = Wire()
    pair = Pair([a], [b], wire=wire, retransmit_timeout=0.5, retransmit_base=1.0, retransmit_tries=2)
    pair.a.initiate("site", None, pair.now)
    pair.run()
    assert pair.of("a", IkeSaUp)
    sent = []

    def blackhole(d):
        sent.append((pair.now, d.src[0]))
        return None

    wire.tamper = blackhole
    pair.advance(10.0)
    (down,) = pair.of("a", IkeSaDown)
    assert down.reason == "dead peer"
    checks = [t for t, src in sent if src == a.local_addrs[0]]
    assert len(checks) == 3 and checks[-1] - checks[0] == pytest.approx(1.0)
    assert not pair.a.sas


def test_short_retransmit_schedule_gives_up_an_unanswered_connect():
    from tests.ike.harness import NegotiationFailed, Wire

    a, b = mirrored()
    pair = Pair([a], [b], wire=Wire(loss=1.0), retransmit_timeout=0.25, retransmit_base=2.0, retransmit_tries=3)
    pair.a.initiate("site", None, pair.now)
    pair.advance(1.0)
    assert not pair.of("a", NegotiationFailed)
    pair.advance(3.0)  # 0.25 + 0.5 + 1 + 2 = 3.75 s
    (failed,) = pair.of("a", NegotiationFailed)
    assert failed.notify == "TIMEOUT" and pair.now < 4.5 and not pair.a.sas


def test_an_unanswered_ike_auth_ends_with_a_timeout_failure():
    """After IKE_SA_INIT the peer goes silent: the attempt ends with a reason (issue 18: never
    CONNECTING for good, and `espgw initiate` sees the failure instead of waiting for its timeout)."""
    from tests.ike.harness import NegotiationFailed

    a, b = mirrored()
    pair = Pair([a], [b], retransmit_timeout=0.25, retransmit_base=2.0, retransmit_tries=3)
    pair.wire.tamper = lambda d: None if d.data[18] == 35 else d  # every IKE_AUTH message lost
    pair.a.initiate("site", None, pair.now)
    pair.advance(5.0)
    (failed,) = pair.of("a", NegotiationFailed)
    assert (failed.stage, failed.notify) == ("IKE_AUTH", "TIMEOUT") and not pair.a.sas
