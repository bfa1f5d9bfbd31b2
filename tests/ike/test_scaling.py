"""The endpoint's indices (IKE SAs by connection and peer identity, timer heap) give the same
answers as a scan over all SAs, through handshakes, rekeys, deletes and expiries."""

from __future__ import annotations

import math
import os

import pytest

from ike.config import AuthConfig, ChildConfig, ConnectionConfig, TrafficSelector
from ike.endpoint import IkeEndpoint, filed
from tests.ike.harness import ChildSaUp, IkeSaDown, Pair, mirrored

RESPONDER = "198.51.100.2"
TS = TrafficSelector.from_cidr


def scan_timer(ep: IkeEndpoint) -> float | None:
    """The old get_timer: every deadline of every SA."""
    found = [d for sa in ep.sas.values() for d in sa.deadlines() if d != math.inf]
    return min(found) if found else None


def scan_duplicates(ep: IkeEndpoint, sa) -> set:
    return {o for o in ep.sas.values() if o is not sa and o.name == sa.name and o.remote_id == sa.remote_id
            and o.established_at is not None and o.state != "dead"}


def scan_first_contact(ep: IkeEndpoint, sa) -> bool:
    return not any(o is not sa and o.name == sa.name and o.remote[0] == sa.remote[0]
                   and o.established_at is not None and o.state != "dead" for o in ep.sas.values())


class CheckedPair(Pair):
    """A Pair whose every timer look-up is compared with a scan."""

    checks = 0

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        for ep in (self.a, self.b):
            ep.get_timer = self._checked(ep, ep.get_timer)

    def _checked(self, ep, get_timer):
        def checked():
            expected, got = scan_timer(ep), get_timer()
            assert got == expected, (got, expected, ep.status())
            self.checks += 1
            return got
        return checked


def checked_pair(**kw) -> CheckedPair:
    a, b = mirrored(**kw)
    pair = CheckedPair([a], [b])
    pair.a.initiate("site", None, pair.now)
    pair.run()
    assert pair.of("a", ChildSaUp) and pair.of("b", ChildSaUp)
    return pair


def test_timer_heap_matches_scan_through_child_and_ike_rekeys():
    pair = checked_pair(child_rekey_time=100.0, child_life_time=150.0, rekey_time=330.0, dpd_delay=45.0)
    pair.advance(1500)
    assert len(pair.of("a", ChildSaUp)) >= 10
    assert [d.reason for d in pair.of("a", IkeSaDown)].count("rekeyed") >= 3
    assert pair.checks > 50


def test_timer_heap_after_external_changes_and_deletes():
    pair = checked_pair(child_rekey_time=200.0, child_life_time=300.0)
    sa = next(iter(pair.b.sas.values()))
    sa.rekey_at = pair.now + 5  # set from outside, as a command or test would
    pair.b.reschedule(sa)  # and tells the endpoint, as it must
    assert pair.b.get_timer() == pair.now + 5
    pair.advance(20)
    pair.b.note_inbound_esp(next(iter(pair.b.child_index)), pair.now + 1)  # moves DPD later only
    pair.b.get_timer()
    pair.a.terminate_ike("site", pair.now)
    pair.advance(60)
    assert not pair.a.sas and not pair.b.sas
    assert pair.a.get_timer() is None and pair.b.get_timer() is None
    assert not pair.b._timers  # superseded entries are gone once looked at


def test_handle_timer_fires_only_due_sas_once():
    pair = checked_pair(child_rekey_time=100.0, child_life_time=150.0)
    deadline = pair.b.get_timer()
    pair.b.handle_timer(deadline - 1)  # nothing due: nothing sent
    assert not pair.b.datagrams_to_send(deadline - 1)
    pair.advance(400)
    assert len(pair.of("b", ChildSaUp)) >= 4


def _config(local: str, remote_any: bool, local_id: str | None = None, unique: str = "no") -> ConnectionConfig:
    if remote_any:
        child = ChildConfig("net", [TS("10.2.0.0/16")], [TS("10.1.0.0/16")], esp_proposals=["aes256gcm16"])
        return ConnectionConfig("site", [local], ["%any"], AuthConfig(), AuthConfig(), psk=b"scaling test key",
                                children=[child], proposals=["chacha20poly1305-prfsha256-x25519"], unique=unique)
    child = ChildConfig("net", [TS("10.1.0.0/16")], [TS("10.2.0.0/16")], esp_proposals=["aes256gcm16"])
    return ConnectionConfig("site", [local], [RESPONDER], AuthConfig(id=local_id) if local_id else AuthConfig(),
                            AuthConfig(), psk=b"scaling test key", children=[child],
                            proposals=["chacha20poly1305-prfsha256-x25519"])


def _connect(responder: IkeEndpoint, ip: str, local_id: str | None = None) -> IkeEndpoint:
    ini = IkeEndpoint([_config(ip, False, local_id)], rng=os.urandom)
    ini.initiate("site", None, 0.0)
    eps = {ip: ini, RESPONDER: responder}
    moving = True
    while moving:
        moving = False
        for ep in (ini, responder):
            for d in ep.datagrams_to_send(0.0):
                eps[d.dst[0]].receive_datagram(d.data, d.src, d.dst, 0.0)
                moving = True
    return ini


@pytest.mark.parametrize("unique", ["no", "never"])
def test_duplicates_via_index_equal_scan(unique):
    responder = IkeEndpoint([_config(RESPONDER, True, unique=unique)], rng=os.urandom, cookie_threshold=1 << 30)
    initiators = []
    for i in range(40):  # every fourth initiator uses one shared identity, the others their address
        initiators.append(_connect(responder, f"10.9.0.{i + 1}", "@shared" if i % 4 == 0 else None))
    for i in range(0, 40, 7):  # some go away
        for sa in list(initiators[i].sas.values()):
            sa.destroy("deleted", 0.0)
        other = [sa for sa in responder.sas.values() if sa.remote[0] == f"10.9.0.{i + 1}"]
        for sa in other:
            sa.destroy("deleted", 0.0)
    live = list(responder.sas.values())
    assert len(live) >= 25
    shared = 0
    for sa in live:
        assert set(responder.duplicates(sa)) == scan_duplicates(responder, sa)
        assert responder.first_contact(sa) == scan_first_contact(responder, sa)
        shared += bool(responder.duplicates(sa))
    if unique == "no":  # INITIAL_CONTACT replaced the earlier SAs of the shared identity
        assert shared == 0
    else:
        assert shared >= 2
    # an SA not (yet) registered is looked up by its own name and identity
    probe = live[0]
    assert set(responder.duplicates(probe)) == scan_duplicates(responder, probe)


def test_duplicates_after_ike_rekey_and_reauth():
    pair = checked_pair(rekey_time=100.0)
    pair.advance(350)
    for ep in (pair.a, pair.b):
        for sa in ep.sas.values():
            assert set(ep.duplicates(sa)) == scan_duplicates(ep, sa)
            assert ep.first_contact(sa) == scan_first_contact(ep, sa)
        assert sum(len(filed(ep._by_peer_id, k)) for k in ep._by_peer_id) == sum(
            1 for sa in ep.sas.values() if sa.established_at is not None and sa.state != "dead")
