"""ESP receive path: esp.outer.parse_outer, esp.sadb.SADatabase and esp.sa.InboundSA with real SAs.

Input: a mode byte, then
  mode 0: one ESP packet for the SADatabase;
  mode 1: a sequence of ESP packets, each prefixed by a 2-byte length (exercises the replay
          window across packets);
  mode 2: a whole IPv4/IPv6 packet (raw ESP or ESP-in-UDP) for parse_outer, then the database,
          then the RFC 6040 ECN egress step.
Invariants: only esp.errors.Drop escapes; an accepted packet's replay is dropped as REPLAY; the
inner packet is no longer than the ESP payload; every rejection is counted.
"""

if __name__ == "__main__":
    import fuzzlib
    fuzzlib.main("fuzz_esp")

import struct

from esp.errors import Drop, DropReason
from esp.outer import OuterIPv4, OuterIPv6, ecn_decapsulate, parse_outer
from esp.sa import NH_IPV6, InboundSA, OutboundSA
from esp.sadb import SADatabase
from esp.transforms import transform_by_name

# (transform, ESN): every cipher family, with and without extended sequence numbers
SUITES = [("aes128gcm16", False), ("aes256-sha256", True), ("chacha20poly1305", False),
          ("aes128gmac", True), ("aes192gcm8", False), ("aes128-sha1", False)]
REPLAY_WINDOW = 64
OUTER_V4 = (b"\xc0\x00\x02\x01", b"\xc6\x33\x64\x02")
OUTER_V6 = (b"\x20\x01\x0d\xb8" + bytes(11) + b"\x01", b"\x20\x01\x0d\xb8" + bytes(11) + b"\x02")


def spi_of(index: int) -> int:
    return 0x1000 + index


def keymat_of(index: int, name: str) -> bytes:
    n = transform_by_name(name).keymat_len
    return bytes((index * 37 + j * 11) & 0xFF for j in range(n))


def fresh_database() -> SADatabase:
    db = SADatabase()
    for i, (name, esn) in enumerate(SUITES):
        db.add_inbound(InboundSA(spi_of(i), name, keymat_of(i, name), esn=esn, replay_window=REPLAY_WINDOW))
    return db


def _drops(db: SADatabase) -> int:
    total = sum(db.counters.drops.values())
    for i in range(len(SUITES)):
        sa = db.lookup(spi_of(i))
        total += sum(sa.counters.drops.values())
    return total


def _decap(db: SADatabase, esp: bytes) -> tuple[int, bytes] | None:
    before = _drops(db)
    try:
        sa, nh, inner = db.decapsulate(esp)
    except Drop:
        assert _drops(db) == before + 1, "a drop that was not counted exactly once"
        return None
    assert 0 <= nh <= 255 and isinstance(inner, bytes)
    assert len(inner) <= len(esp), "inner packet longer than the ESP payload"
    if sa.replay.size:
        try:
            db.decapsulate(esp)
        except Drop as d:
            assert d.reason == DropReason.REPLAY, f"replayed packet dropped as {d.reason}, not REPLAY"
        else:
            raise AssertionError("a replayed packet was accepted")
    return nh, inner


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    db = fresh_database()
    if mode == 0:
        _decap(db, body)
    elif mode == 1:
        pos = 0
        while pos + 2 <= len(body):
            (n,) = struct.unpack_from("!H", body, pos)
            pos += 2
            _decap(db, body[pos:pos + n])
            pos += n
    else:
        try:
            outer = parse_outer(body)
        except Drop:
            return
        assert len(outer.esp) <= len(body)
        got = _decap(db, bytes(outer.esp))
        if got is not None:
            try:
                ecn_decapsulate(got[1], outer.ecn)
            except Drop as d:
                assert d.reason == DropReason.ECN_DROP


def _inner_v4(size: int, tos: int = 0) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + size, 1, 0x4000, 64, 17, 0,
                         b"\x0a\x01\x00\x01", b"\x0a\x02\x00\x01")
    return header + bytes(range(size % 256)) + bytes(max(0, size - 256))


def _inner_v6(size: int, tc: int = 0) -> bytes:
    first = (6 << 28) | (tc << 20)
    return (struct.pack("!IHBB", first, size, 17, 64) + b"\xfd" + bytes(14) + b"\x01"
            + b"\xfd" + bytes(14) + b"\x02" + bytes(size))


def seeds() -> dict[str, bytes]:
    """Genuine packets from OutboundSAs keyed like the database's SAs."""
    out: dict[str, bytes] = {}
    for i, (name, esn) in enumerate(SUITES):
        sa = OutboundSA(spi_of(i), name, keymat_of(i, name), esn=esn,
                        rng=lambda n: bytes(n))
        v4 = sa.encapsulate(_inner_v4(40, tos=2))
        v6 = sa.encapsulate(_inner_v6(24, tc=1), NH_IPV6)
        dummy = sa.encapsulate_dummy(8)
        out[f"single-{name}"] = b"\x00" + v4
        seq = b"".join(struct.pack("!H", len(p)) + p for p in (v4, v6, dummy, v4))
        out[f"sequence-{name}"] = b"\x01" + seq
        o4 = OuterIPv4(*OUTER_V4, protocol=50)
        out[f"outer4-{name}"] = b"\x02" + o4.build(len(v6), b"") + v6
        o6 = OuterIPv6(*OUTER_V6, next_header=17)
        udp = struct.pack("!HHHH", 4500, 4500, 8 + len(v4), 0) + v4
        out[f"outer6-udp-{name}"] = b"\x02" + o6.build(len(udp), b"") + udp
    return out
