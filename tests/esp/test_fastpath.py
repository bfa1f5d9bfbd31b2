"""The inlined branches of InboundSA.decapsulate against plain reference models:
in-order packets, out-of-order within the window, the window edge, jumps across
the replay ring, ESN epoch inference, the one-compare lifetime check, expiry."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from esp.crypto import make_sealer
from esp.errors import Drop, DropReason
from esp.replay import ReplayWindow
from esp.sa import InboundSA, Lifetime, OutboundSA
from esp.transforms import transform_by_name

from tests.esp.helpers import ipv4_packet

SPI = 0x4242
PAYLOAD = b"data\x01\x02\x02\x06"          # next header 6, two pad bytes


class Peer:
    """Seals arbitrary (full) sequence numbers for one inbound SA."""

    def __init__(self, name: str = "aes256gcm16", *, esn: bool = False, window: int = 1024) -> None:
        t = transform_by_name(name)
        km = bytes(range(t.keymat_len))
        self.iv_len = t.iv_len
        self.seal = make_sealer(t, km, SPI, esn)
        self.sa = InboundSA(SPI, t, km, esn=esn, replay_window=window)

    def packet(self, seq: int) -> bytes:
        return self.seal(seq, seq.to_bytes(self.iv_len, "big"), PAYLOAD)

    def accept(self, seq: int) -> bool:
        try:
            assert self.sa.decapsulate(self.packet(seq)) == (6, b"data")
            return True
        except Drop as d:
            # ESN: a number below the window reads as the next epoch and fails the ICV
            # (RFC 4303 A2.2); either way it is refused and the window stays put
            too_old = self.sa.esn and seq < self.sa.replay.top - self.sa.replay.size + 1
            assert d.reason is DropReason.REPLAY or (too_old and d.reason is DropReason.AUTH_FAILED), d
            return False


class ReferenceWindow:
    """RFC 4303 s3.4.3 in its plainest form: a set of everything seen."""

    def __init__(self, size: int, top: int = 0) -> None:
        self.size, self.top, self.seen = size, top, set()

    def accept(self, seq: int) -> bool:
        if seq <= 0:
            return False
        if self.size and seq <= self.top and (self.top - seq >= self.size or seq in self.seen):
            return False
        self.seen.add(seq)
        self.top = max(self.top, seq)
        return True


def test_in_order_stream_across_many_ring_turns():
    p = Peer(window=64)                        # ring of 64 slots: turns every 64 packets
    assert all(p.accept(s) for s in range(1, 1000))
    assert p.sa.replay.top == 999
    assert not any(p.accept(s) for s in range(936, 1000))     # every one still in the window
    assert not p.accept(935)                                  # just below the window
    assert p.sa.counters.packets == 999
    assert p.sa.counters.drops[DropReason.REPLAY] == 65


def test_out_of_order_within_the_window():
    p = Peer(window=1024)
    assert p.accept(2000)
    holes = [1999, 1500, 977, 1990, 1024]
    assert all(p.accept(s) for s in holes)                     # each once ...
    assert not any(p.accept(s) for s in holes)                 # ... never twice
    assert p.accept(977 + 1) and not p.accept(976)             # 976 == top - window
    assert p.sa.replay.top == 2000


@pytest.mark.parametrize("window", [1, 63, 64, 65, 1000, 1024])
@pytest.mark.parametrize("jump", [1, 2, 63, 64, 65, 1023, 1024, 1025, 5000])
def test_jumps_clear_exactly_the_slots_passed(window, jump):
    p = Peer(window=window)
    ref = ReferenceWindow(window)
    base = 3000
    for s in range(base - 70, base + 1):
        assert p.accept(s) == ref.accept(s)
    assert p.accept(base + jump) == ref.accept(base + jump)
    for s in range(base + jump - window - 3, base + jump + 2):
        assert p.accept(s) == ref.accept(s), s


@settings(max_examples=60, deadline=None)
@given(window=st.sampled_from([0, 32, 64, 100, 1024]),
       steps=st.lists(st.integers(min_value=-1200, max_value=1300), min_size=1, max_size=120))
def test_matches_the_reference_window(window, steps):
    """Random walks with repeats, late packets and jumps: same verdicts as the model."""
    p, ref = Peer(window=window), ReferenceWindow(window)
    seq = 1
    for step in steps:
        seq = max(0, seq + step)
        assert p.accept(seq) == ref.accept(seq), (seq, ref.top)
    assert p.sa.replay.top == ref.top


@settings(max_examples=40, deadline=None)
@given(window=st.sampled_from([64, 1024]),
       start=st.sampled_from([(1 << 32) - 300, (5 << 32) - 2, (7 << 32) + 10, 1 << 33]),
       steps=st.lists(st.integers(min_value=-900, max_value=900), min_size=1, max_size=60))
def test_esn_matches_the_reference_window(window, start, steps):
    """ESN: the fast same-epoch guess and ReplayWindow.infer give one consistent window."""
    p, ref = Peer(esn=True, window=window), ReferenceWindow(window, start)
    p.sa.replay.reset(start)
    seq = start
    for step in steps:
        seq = max(start - window + 1, seq + step)
        assert p.accept(seq) == ref.accept(seq), (seq, ref.top)
    assert p.sa.replay.top == ref.top


@pytest.mark.parametrize("window", [0, 1, 64, 1024])
def test_esn_fast_guess_agrees_with_appendix_a2(window):
    sa = InboundSA(SPI, "aes128gcm16", bytes(20), esn=True, replay_window=window)
    w = ReplayWindow(window, esn=True)
    lows = [0, 1, window - 2, window - 1, window, window + 1, 5000, 0xFFFFFFFF - window,
            0xFFFFFFFE, 0xFFFFFFFF]
    for top in [0, 1, window, 5000, (3 << 32) + 2, (3 << 32) + window - 1, (4 << 32) - 1]:
        w.reset(top)
        sa.replay.reset(top)
        for low in lows:
            for seq_lo in {max(0, min(0xFFFFFFFF, low + d)) for d in (-window - 1, -window, -1, 0, 1)}:
                assert sa._full_seq(seq_lo, top) == w.infer(seq_lo), (top, seq_lo)


def test_memoryview_input_takes_the_same_path():
    p = Peer()
    packet = p.packet(1)
    assert p.sa.decapsulate(memoryview(packet)) == (6, b"data")
    with pytest.raises(Drop) as e:
        p.sa.decapsulate(memoryview(packet))
    assert e.value.reason is DropReason.REPLAY


@pytest.mark.parametrize("name", ["aes256gcm16", "chacha20poly1305", "aes128gmac", "aes256gcm8",
                                  "aes128-sha1"])
def test_byte_lifetime_fires_on_the_crossing_packet(name):
    """Lifetime checks are planned ahead; the soft and hard byte limits still fire exactly."""
    t = transform_by_name(name)
    km = bytes(range(t.keymat_len))
    inner = ipv4_packet(bytes(1380))                     # 1400 bytes
    soft, hard = 300 * 1400 + 1, 400 * 1400
    out = OutboundSA(1, t, km)
    inb = InboundSA(1, t, km, lifetime=Lifetime(soft_bytes=soft, hard_bytes=hard))
    for i in range(1, 401):
        inb.decapsulate(out.encapsulate(inner))
        assert inb.rekey_needed == (i * 1400 >= soft), i
        assert inb.expired == (i * 1400 >= hard), i
    with pytest.raises(Drop) as e:
        inb.decapsulate(out.encapsulate(inner))
    assert e.value.reason is DropReason.SA_EXPIRED
    assert inb.counters.packets == 400


def test_packet_lifetime_after_large_byte_budget():
    t = transform_by_name("aes128gcm16")
    out, inb = OutboundSA(1, t, bytes(20)), InboundSA(
        1, t, bytes(20), lifetime=Lifetime(soft_packets=70, hard_packets=90, hard_bytes=1 << 40))
    for i in range(1, 91):
        inb.decapsulate(out.encapsulate(b"z", 6))
        assert (inb.rekey_needed, inb.expired) == (i >= 70, i >= 90), i


def test_expired_flag_refuses_every_packet_first():
    p = Peer()
    assert p.accept(1)
    p.sa.expired = True                                  # e.g. the caller's time-based hard limit
    for packet in (p.packet(2), b"", b"\x00" * 7, p.packet(2)[:20]):
        with pytest.raises(Drop) as e:
            p.sa.decapsulate(packet)
        assert e.value.reason is DropReason.SA_EXPIRED
    p.sa.expired = False
    assert p.accept(2)
