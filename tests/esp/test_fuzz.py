"""100,000+ random and mutated inputs to decapsulation: only typed drops."""

from __future__ import annotations

import random

from esp.errors import Drop
from esp.outer import parse_outer
from esp.sa import InboundSA, OutboundSA
from esp.sadb import SADatabase
from esp.transforms import transform_by_name

from tests.esp.helpers import ipv4_packet


def test_fuzz_decapsulation_only_typed_drops():
    rnd = random.Random(4303)
    db = SADatabase()
    seeds = []
    for i, name in enumerate(["aes128gcm16", "aes128-sha1", "chacha20poly1305", "aes128gmac"]):
        t = transform_by_name(name)
        km = bytes([i]) * t.keymat_len
        out = OutboundSA(0x100 + i, t, km, esn=bool(i % 2))
        db.add_inbound(InboundSA(0x100 + i, t, km, esn=bool(i % 2), replay_window=0))
        seeds += [out.encapsulate(ipv4_packet(b"f" * n)) for n in (0, 7, 64, 300)]
    spis = [(0x100 + i).to_bytes(4, "big") for i in range(4)]
    accepted = drops = 0
    for n in range(100_000):
        kind = n % 4
        if kind == 0:            # random bytes
            data = rnd.randbytes(rnd.randrange(0, 120))
        elif kind == 1:          # random bytes behind a known SPI
            data = rnd.choice(spis) + rnd.randbytes(rnd.randrange(0, 200))
        elif kind == 2:          # mutated genuine packet
            b = bytearray(rnd.choice(seeds))
            for _ in range(rnd.randrange(1, 4)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
            data = bytes(b)
        else:                    # truncated / extended genuine packet
            s = rnd.choice(seeds)
            data = s[:rnd.randrange(len(s))] if n % 8 == 3 else s + rnd.randbytes(rnd.randrange(1, 20))
        try:
            db.decapsulate(data)
            assert data in seeds     # only a "mutation" that rewrote the same bytes gets through
            accepted += 1
        except Drop:
            drops += 1
        if n % 10 == 0:
            try:
                parse_outer(data)
            except Drop:
                pass
    assert drops + accepted == 100_000
    assert accepted < 200
