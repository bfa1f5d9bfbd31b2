"""Round trips, tampering, padding, TFC, dummies, lifetimes, transform table."""

from __future__ import annotations

import gc
import os

import pytest
from hypothesis import given, settings, strategies as st

from esp.errors import Drop, DropReason, SAExpired
from esp.sa import InboundSA, Lifetime, OutboundSA
from esp.sadb import SADatabase
from esp.transforms import TRANSFORM_NAMES, transform_by_name

from tests.esp.helpers import ipv4_packet, ipv6_packet

NAMES = [n for n in TRANSFORM_NAMES if not n.endswith("gcm")]   # aliases tested separately


def pair(name: str, esn: bool = False, **kw):
    t = transform_by_name(name)
    km = bytes(range(t.keymat_len))
    return OutboundSA(0x1001, t, km, esn=esn, **kw), InboundSA(0x1001, t, km, esn=esn)


def test_transform_table():
    t = transform_by_name("aes256gcm16")
    assert (t.aead, t.enc_key_len, t.salt_len, t.icv_len, t.iv_len, t.align, t.keymat_len) == \
        (True, 32, 4, 16, 8, 4, 36)
    assert transform_by_name("aes256gcm") == t
    c = transform_by_name("aes128-sha256")
    assert (c.aead, c.enc_key_len, c.integ_key_len, c.icv_len, c.iv_len, c.align) == (False, 16, 32, 16, 16, 16)
    assert transform_by_name("aes256-sha1").icv_len == 12
    assert transform_by_name("aes128-sha384").icv_len == 24
    assert transform_by_name("aes128-sha512").icv_len == 32
    assert transform_by_name("chacha20poly1305").keymat_len == 36
    assert transform_by_name("aes128gmac").keymat_len == 20
    assert transform_by_name("aes192gcm8").icv_len == 8
    with pytest.raises(ValueError, match="unknown ESP transform"):
        transform_by_name("des-md5")
    with pytest.raises(ValueError, match="needs 36 bytes"):
        OutboundSA(1, "aes256gcm16", b"short")


def test_secrets_not_in_repr():
    key = bytes([0xAB]) * 36
    o = OutboundSA(7, "aes256gcm16", key)
    i = InboundSA(7, "aes256gcm16", key)
    for text in (repr(o), repr(i), str(dir(o))):
        assert "abab" not in text.lower() and "\\xab" not in text


def _holds_key_bytes(sa) -> bool:
    """Whether the SA itself still references its keys (``pair``'s keymat is bytes(range(n)))."""
    return any(isinstance(ref, bytes) and len(ref) >= 16 and ref in bytes(range(256)) for ref in gc.get_referents(sa))


@pytest.mark.parametrize("name", ["aes256gcm16", "chacha20poly1305", "aes128-sha256", "aes128gcm12"])
def test_cipher_built_by_first_packet_and_key_released(name):
    """Idle SAs hold no OpenSSL context and no ring; the first packet builds them and the SA
    lets go of the keying material."""
    out, inb = pair(name, False)
    assert _holds_key_bytes(out) and _holds_key_bytes(inb)
    assert type(inb.replay.seen) is bytes            # the shared empty ring
    esp = out.encapsulate(ipv4_packet(b"a" * 40))
    assert not _holds_key_bytes(out)
    assert inb.decapsulate(esp)[1] == ipv4_packet(b"a" * 40)
    assert not _holds_key_bytes(inb)
    assert type(inb.replay.seen) is bytearray and inb.replay.seen[1] == 1
    other = InboundSA(9, name, bytes(out.transform.keymat_len))
    assert other.replay.seen is not inb.replay.seen and not any(other.replay.seen)


def test_first_packet_forged_still_counted_and_window_unmoved():
    out, inb = pair("aes256gcm16", False)
    esp = bytearray(out.encapsulate(ipv4_packet(b"b" * 40)))
    esp[-1] ^= 1
    with pytest.raises(Drop) as err:
        inb.decapsulate(bytes(esp))
    assert err.value.reason is DropReason.AUTH_FAILED and inb.counters.drops[DropReason.AUTH_FAILED] == 1
    assert inb.replay.top == 0 and not any(inb.replay.seen)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("esn", [False, True])
def test_roundtrip_alignment_and_layout(name, esn):
    out, inb = pair(name, esn)
    t = out.transform
    for size in (0, 1, 3, 20, 21, 100, 1400):
        inner = ipv4_packet(b"z" * size)
        esp = out.encapsulate(inner)
        assert esp[:4] == (0x1001).to_bytes(4, "big")
        assert int.from_bytes(esp[4:8], "big") == out.seq & 0xFFFFFFFF
        ct_len = len(esp) - 8 - t.iv_len - t.icv_len
        assert ct_len % t.align == 0
        # padding is minimal: fewer than `align` pad bytes
        assert ct_len - len(inner) - 2 < t.align
        if t.kind != "cbc":   # IV is the counter: never repeats under one key
            assert esp[8:16] == out.seq.to_bytes(8, "big")
        assert inb.decapsulate(esp) == (4, inner)
    assert inb.counters.packets == 7 and not inb.counters.drops


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(NAMES), size=st.integers(0, 1500), v6=st.booleans(), esn=st.booleans())
def test_roundtrip_any_size(name, size, v6, esn):
    out, inb = pair(name, esn)
    inner = ipv6_packet(b"p" * max(0, size - 40)) if v6 else ipv4_packet(b"p" * max(0, size - 20))
    nh = 41 if v6 else 4
    assert inb.decapsulate(out.encapsulate(inner, nh)) == (nh, inner)
    raw = os.urandom(size)     # non-IP next header: returned as is
    assert inb.decapsulate(out.encapsulate(raw, 6)) == (6, raw)


@pytest.mark.parametrize("name", ["aes128gcm16", "aes256gcm8", "aes192gcm12", "aes128gmac",
                                  "chacha20poly1305", "aes128-sha1", "aes256-sha256",
                                  "aes192-sha384", "aes256-sha512"])
def test_every_single_byte_change_is_an_auth_failure(name):
    out, inb = pair(name, esn=True)
    esp = out.encapsulate(ipv4_packet(b"q" * 30))
    for i in range(8, len(esp)):     # SPI/seq changes are other drops, tested below
        for flip in (0x01, 0x80):
            bad = bytearray(esp)
            bad[i] ^= flip
            with pytest.raises(Drop) as e:
                inb.decapsulate(bytes(bad))
            assert e.value.reason is DropReason.AUTH_FAILED, (i, flip)
    # a changed sequence number is a different (replay-checked) number: still auth failure
    bad = bytearray(esp)
    bad[7] ^= 0x02
    with pytest.raises(Drop) as e:
        inb.decapsulate(bytes(bad))
    assert e.value.reason is DropReason.AUTH_FAILED
    bad = bytearray(esp)
    bad[0] ^= 1
    with pytest.raises(Drop) as e:
        inb.decapsulate(bytes(bad))
    assert e.value.reason is DropReason.UNKNOWN_SPI
    # failures did not move the window: the genuine packet is still accepted
    assert inb.decapsulate(esp)[0] == 4
    assert inb.counters.drops[DropReason.AUTH_FAILED] == 2 * (len(esp) - 8) + 1


def test_bad_padding_is_rejected():
    from esp.crypto import make_sealer
    t = transform_by_name("aes128gcm16")
    km = bytes(20)
    seal = make_sealer(t, km, 5, False)
    inb = InboundSA(5, t, km)
    good = ipv4_packet(b"") + b"\x01\x02\x02\x04"        # 20 + trailer, pad 1,2
    assert inb.decapsulate(seal(1, (1).to_bytes(8, "big"), good))[0] == 4
    for seq, pt in enumerate([ipv4_packet(b"") + b"\x01\x03\x02\x04",     # wrong pad byte
                              ipv4_packet(b"") + b"\x01\x02\x09\x04",     # pad length too long
                              b"\x07\x04"], start=2):                      # pad longer than payload
        with pytest.raises(Drop) as e:
            inb.decapsulate(seal(seq, seq.to_bytes(8, "big"), pt))
        assert e.value.reason is DropReason.BAD_PADDING


def test_tfc_padding_and_dummy_packets():
    out, inb = pair("aes256gcm16", tfc_pad_to=1200)
    inner = ipv4_packet(b"a" * 10)
    esp = out.encapsulate(inner)
    assert len(esp) >= 8 + 8 + 1200 + 16
    assert inb.decapsulate(esp) == (4, inner)            # stripped by the inner length
    v6 = ipv6_packet(b"b" * 3)
    assert inb.decapsulate(out.encapsulate(v6, 41)) == (41, v6)
    with pytest.raises(Drop) as e:
        inb.decapsulate(out.encapsulate_dummy(64))
    assert e.value.reason is DropReason.DUMMY
    assert inb.counters.drops[DropReason.DUMMY] == 1


def test_inner_header_mismatch_is_bad_inner():
    out, inb = pair("aes128gcm16")
    with pytest.raises(Drop) as e:
        inb.decapsulate(out.encapsulate(b"\x60" + bytes(50), 4))   # IPv6 bytes labelled IPv4
    assert e.value.reason is DropReason.BAD_INNER
    bogus = bytearray(ipv4_packet(b"c" * 10))
    bogus[2:4] = (500).to_bytes(2, "big")
    with pytest.raises(Drop) as e:
        inb.decapsulate(out.encapsulate(bytes(bogus), 4))
    assert e.value.reason is DropReason.BAD_INNER


def test_truncated_and_unknown_spi():
    db = SADatabase()
    out, inb = pair("aes128-sha1")
    db.add_inbound(inb)
    esp = out.encapsulate(ipv4_packet())
    for cut in (0, 3, 7):
        with pytest.raises(Drop) as e:
            db.decapsulate(esp[:cut])
        assert e.value.reason is DropReason.TRUNCATED
    for cut in (8, 30, len(esp) - 1):
        with pytest.raises(Drop) as e:
            db.decapsulate(esp[:cut])
        assert e.value.reason in (DropReason.TRUNCATED, DropReason.AUTH_FAILED)
    with pytest.raises(Drop) as e:
        db.decapsulate(b"\x00\x00\x99\x99" + esp[4:])
    assert e.value.reason is DropReason.UNKNOWN_SPI
    sa, nh, inner = db.decapsulate(esp)
    assert sa is inb and nh == 4
    db.remove_inbound(0x1001)
    assert db.lookup(0x1001) is None
    assert db.counters.drops[DropReason.UNKNOWN_SPI] == 1
    assert db.counters.drops[DropReason.TRUNCATED] == 3


def test_packet_and_byte_lifetimes():
    out, inb = pair("aes128gcm16", lifetime=Lifetime(soft_packets=3, hard_packets=5))
    for i in range(1, 6):
        out.encapsulate(b"x", 6)
        assert out.rekey_needed == (i >= 3)
    with pytest.raises(SAExpired):
        out.encapsulate(b"x", 6)
    assert out.expired and out.seq == 5
    with pytest.raises(SAExpired):
        out.encapsulate(b"", 6)

    out, _ = pair("aes128gcm16", lifetime=Lifetime(soft_bytes=100, hard_bytes=150))
    out.encapsulate(bytes(60), 6)
    assert not out.rekey_needed
    out.encapsulate(bytes(60), 6)
    assert out.rekey_needed and not out.expired
    with pytest.raises(SAExpired):
        out.encapsulate(bytes(60), 6)
    with pytest.raises(SAExpired):      # once expired, even a small packet is refused
        out.encapsulate(b"", 6)

    t = transform_by_name("aes128gcm16")
    o = OutboundSA(9, t, bytes(20))
    i = InboundSA(9, t, bytes(20), lifetime=Lifetime(soft_packets=1, hard_packets=2))
    i.decapsulate(o.encapsulate(b"a", 6))
    assert i.rekey_needed and not i.expired
    i.decapsulate(o.encapsulate(b"a", 6))
    assert i.expired
    with pytest.raises(Drop) as e:
        i.decapsulate(o.encapsulate(b"a", 6))
    assert e.value.reason is DropReason.SA_EXPIRED


@pytest.mark.parametrize("esn,span", [(False, 1 << 32), (True, 1 << 64)])
def test_sequence_counter_never_wraps(esn, span):
    t = transform_by_name("aes128gcm16")
    near_soft = OutboundSA(1, t, bytes(20), esn=esn, initial_seq=span - (1 << 16) - 2)
    near_soft.encapsulate(b"", 6)
    assert not near_soft.rekey_needed
    near_soft.encapsulate(b"", 6)
    assert near_soft.rekey_needed and not near_soft.expired
    o = OutboundSA(1, t, bytes(20), esn=esn, initial_seq=span - 3)
    assert o.rekey_needed
    inb = InboundSA(1, t, bytes(20), esn=esn)
    inb.replay.reset(span - 3)
    for _ in range(2):
        assert inb.decapsulate(o.encapsulate(b"k", 6)) == (6, b"k")
    assert o.seq == span - 1
    with pytest.raises(SAExpired):
        o.encapsulate(b"k", 6)
    assert o.seq == span - 1 and o.expired
