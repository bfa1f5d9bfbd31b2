"""Random operations from both sides (CHILD rekeys, simultaneous rekeys, IKE rekeys, deletes,
new CHILD SAs) over a network that loses, duplicates and reorders 10% each; once it calms down
both endpoints must agree on every installed CHILD SA and its keys."""

from __future__ import annotations

import logging
import random

import pytest
import structlog

from ike.config import ChildConfig, TrafficSelector
from tests.ike.harness import ChildSaDown, ChildSaUp, Pair, Wire, mirrored
from tests.ike.test_lifecycle import installed, keymat_pairs_match


def chaos(seed: int, steps: int = 25) -> None:
    r = random.Random(seed)
    a, b = mirrored(esp=r.choice(["aes256gcm16", "aes256gcm16-ecp256"]), dpd_delay=r.choice([0.0, 20.0]))
    for cfg, local, remote in ((a, "10.11.0.0/16", "10.12.0.0/16"), (b, "10.12.0.0/16", "10.11.0.0/16")):
        cfg.children.append(ChildConfig("web", [TrafficSelector.from_cidr(local)], [TrafficSelector.from_cidr(remote)],
                                        esp_proposals=["aes128-sha256"]))
    pair = Pair([a], [b], wire=Wire(loss=0.1, dup=0.1, reorder=0.1, seed=seed), seed=seed)
    eps = {"a": pair.a, "b": pair.b}
    pair.a.initiate("site", None, 0.0)
    pair.advance(300)
    for _ in range(steps):
        side = r.choice("ab")
        ep, other = eps[side], eps["b" if side == "a" else "a"]
        kids = [c for sa in ep.sas.values() for c in sa.children.values() if c.state == "installed"]
        op = r.randrange(6)
        if op == 0 and kids:
            ep.rekey_child(r.choice(kids).inbound_spi, pair.now)
        elif op == 1:
            for sa in ep.sas.values():
                if sa.state == "established":
                    sa.rekey_at = pair.now
                    ep.reschedule(sa)
            ep.handle_timer(pair.now)
        elif op == 2 and kids:
            ep.terminate_child(r.choice(kids).name, pair.now)
        elif op == 3:
            ep.initiate("site", r.choice(["net", "web"]), pair.now)
        elif op == 4 and kids:  # both ends rekey the same pair at once
            kid = r.choice(kids)
            ep.rekey_child(kid.inbound_spi, pair.now)
            other.rekey_child(kid.outbound_spi, pair.now)
        pair.advance(r.choice([0.5, 5, 60]))
    pair.wire.loss = pair.wire.dup = pair.wire.reorder = 0.0
    pair.advance(400)
    ia, ib = installed(pair.a), installed(pair.b)
    assert {v: k for k, v in ia.items()} == ib
    for side, ep in eps.items():
        ups = {e.inbound_spi for e in pair.of(side, ChildSaUp)}
        downs = {e.inbound_spi for e in pair.of(side, ChildSaDown)}
        assert set(installed(ep)) == ups - downs
        assert ep.drops.get("internal error", 0) == 0
    keymat_pairs_match(pair, live_only=True)
    assert len(pair.a.sas) == len(pair.b.sas) <= 1


@pytest.fixture
def quiet_logs():
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    yield
    structlog.reset_defaults()


@pytest.mark.parametrize("block", range(4))
def test_chaos(block, quiet_logs):
    for seed in range(block * 50, block * 50 + 50):
        chaos(seed)
