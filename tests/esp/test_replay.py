"""Anti-replay, following the plan of VPP's template_ipsec anti-replay test:
in-window, duplicate, too old, far-ahead jump, ESN wrap around 2^32."""

from __future__ import annotations

import pytest

from esp.crypto import make_sealer
from esp.errors import Drop, DropReason
from esp.replay import ReplayWindow
from esp.sa import InboundSA
from esp.transforms import transform_by_name

T = transform_by_name("aes128gcm16")
KM = bytes(range(20))


class Peer:
    """Sends arbitrary sequence numbers, as a test harness would."""

    def __init__(self, esn: bool = False, window: int = 1024) -> None:
        self.seal = make_sealer(T, KM, 0x77, esn)
        self.sa = InboundSA(0x77, T, KM, esn=esn, replay_window=window)

    def packet(self, seq: int) -> bytes:
        return self.seal(seq, seq.to_bytes(8, "big"), b"data\x01\x02\x02\x06")

    def accept(self, seq: int) -> bool:
        try:
            self.sa.decapsulate(self.packet(seq))
            return True
        except Drop as d:
            assert d.reason is DropReason.REPLAY, d
            return False


@pytest.mark.parametrize("window", [64, 1024, 4096])
def test_window_plan(window):
    p = Peer(window=window)
    assert all(p.accept(s) for s in range(1, 11))
    assert not any(p.accept(s) for s in range(1, 11))          # duplicates
    top = window + 100
    assert p.accept(top)
    assert p.accept(top - window + 1)                             # oldest in-window
    assert not p.accept(top - window + 1)
    assert not p.accept(top - window)                             # just too old
    assert not p.accept(5)
    far = top + 50 * window                                       # far-ahead jump
    assert p.accept(far)
    assert not p.accept(top)
    assert p.accept(far - 1) and p.accept(far - window + 1)
    assert not p.accept(far - window)
    assert not p.accept(0)                                        # never valid
    assert p.sa.counters.drops[DropReason.REPLAY] == 10 + 6


def test_forged_packets_do_not_move_the_window():
    p = Peer(window=64)
    assert p.accept(100)
    forged = bytearray(p.packet(5000))
    forged[-1] ^= 1
    with pytest.raises(Drop) as e:
        p.sa.decapsulate(bytes(forged))
    assert e.value.reason is DropReason.AUTH_FAILED
    assert p.sa.replay.top == 100
    assert p.accept(50)                    # still in the window


def test_window_off_accepts_replays():
    p = Peer(window=0)
    assert p.accept(7) and p.accept(7) and p.accept(3)


def test_window_size_bounds():
    ReplayWindow(0)
    ReplayWindow(4096)
    with pytest.raises(ValueError):
        ReplayWindow(-1)


def test_esn_wrap_around_2_32():
    p = Peer(esn=True, window=1024)
    base = (1 << 32) - 10
    p.sa.replay.reset(base - 1)
    assert all(p.accept(s) for s in range(base, base + 10))        # up to 2^32 - 1
    assert p.accept((1 << 32) + 5)                                  # wire seq 5, high bits 1
    assert p.sa.replay.top == (1 << 32) + 5
    assert p.accept((1 << 32) - 20)                                 # old epoch, still in window
    assert not p.accept((1 << 32) - 20)
    assert not p.accept((1 << 32) + 5)
    assert p.accept((1 << 32) + 1)
    # a wire number far below the window is read as the next epoch: it fails the ICV,
    # it is never accepted as a replay of the old epoch
    with pytest.raises(Drop) as e:
        p.sa.decapsulate(p.packet((1 << 32) - 5000))
    assert e.value.reason is DropReason.AUTH_FAILED


def test_esn_inference_cases():
    w = ReplayWindow(64, esn=True)
    w.reset((3 << 32) | 1000)                 # Case A: window inside one subspace
    assert w.infer(990) == (3 << 32) | 990
    assert w.infer(5) == (4 << 32) | 5
    w.reset((3 << 32) | 10)                   # Case B: window straddles subspaces
    assert w.infer(0xFFFFFFF0) == (2 << 32) | 0xFFFFFFF0
    assert w.infer(20) == (3 << 32) | 20
    w.reset(10)                               # no epoch before 0
    assert w.infer(0xFFFFFFF0) == -1
    assert not w.check(-1)
