"""tunnel.ops.vici.codec: vici messages, packets and the stream decoder, against strongSwan's README."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.ops.vici.codec import (
    MAX_DEPTH,
    VICI_MESSAGE_SIZE_MAX,
    Packet,
    PacketType,
    StreamDecoder,
    ViciError,
    decode_message,
    decode_packet,
    encode_message,
    encode_packet,
    frame,
)

# The encoding example of strongSwan's src/libcharon/plugins/vici/README.md, byte for byte
README_EXAMPLE = (
    bytes([3, 4]) + b"key1" + bytes([0, 6]) + b"value1"
    + bytes([1, 8]) + b"section1"
    + bytes([1, 11]) + b"sub-section"
    + bytes([3, 4]) + b"key2" + bytes([0, 6]) + b"value2"
    + bytes([2])
    + bytes([4, 5]) + b"list1"
    + bytes([5, 0, 5]) + b"item1"
    + bytes([5, 0, 5]) + b"item2"
    + bytes([6])
    + bytes([2])
)
README_TREE = {"key1": b"value1", "section1": {"sub-section": {"key2": b"value2"}, "list1": [b"item1", b"item2"]}}


def test_readme_example_decodes_and_encodes_byte_for_byte():
    assert decode_message(README_EXAMPLE) == README_TREE
    assert encode_message(README_TREE) == README_EXAMPLE


def test_text_numbers_and_booleans_encode_as_strongswan_strings():
    assert decode_message(encode_message({"a": "x", "n": 42, "yes": True, "no": False, "l": ["p", 1]})) == {
        "a": b"x", "n": b"42", "yes": b"yes", "no": b"no", "l": [b"p", b"1"]}


def test_empty_message_and_empty_list():
    assert decode_message(b"") == {}
    assert decode_message(encode_message({"l": [], "s": {}})) == {"l": [], "s": {}}


def test_encoder_refuses_what_the_format_cannot_carry():
    with pytest.raises(ValueError):
        encode_message({"k" * 256: b"v"})
    with pytest.raises(ValueError):
        encode_message({"k": b"v" * 65536})
    with pytest.raises(TypeError):
        encode_message({"k": 1.5})  # type: ignore[dict-item]
    deep: dict = {}
    node = deep
    for _ in range(MAX_DEPTH + 2):
        node["s"] = {}
        node = node["s"]
    with pytest.raises(ValueError):
        encode_message(deep)


# ----------------------------------------------------------------------------- strict decoding


def _reason(data: bytes) -> str:
    with pytest.raises(ViciError) as info:
        decode_message(data)
    return info.value.reason


@pytest.mark.parametrize("data, reason", [
    (bytes([3, 4]) + b"key1" + bytes([0, 9]) + b"value1", "truncated"),  # value length lies
    (bytes([3, 9]) + b"key1", "truncated"),  # name length lies
    (bytes([3, 4]) + b"key1" + bytes([0]), "truncated"),  # half a value length
    (bytes([3]), "truncated"),
    (bytes([1, 1]) + b"s", "unbalanced"),  # section never closed
    (bytes([2]), "unbalanced"),  # section end at the top
    (bytes([4, 1]) + b"l" + bytes([5, 0, 1]) + b"x", "unbalanced"),  # list never closed
    (bytes([5, 0, 1]) + b"x", "bad-list"),  # item outside a list
    (bytes([6]), "bad-list"),  # list end outside a list
    (bytes([4, 1]) + b"l" + bytes([3, 1]) + b"k" + bytes([0, 0]), "bad-list"),  # key/value inside a list
    (bytes([4, 1]) + b"l" + bytes([4, 1]) + b"m", "bad-list"),  # nested list
    (bytes([0]), "unknown-element"),
    (bytes([7]), "unknown-element"),
    (bytes([0xFF]), "unknown-element"),
    (bytes([3, 1]) + b"k" + bytes([0, 0]) + bytes([3, 1]) + b"k" + bytes([0, 0]), "duplicate-key"),
    (bytes([3, 1, 0xFF, 0, 0]), "bad-name"),
])
def test_malformed_messages_raise_the_typed_error(data, reason):
    assert _reason(data) == reason


def test_nesting_beyond_the_limit_is_refused():
    ok = b"".join(bytes([1, 1]) + b"s" for _ in range(MAX_DEPTH)) + bytes([2]) * MAX_DEPTH
    assert decode_message(ok)
    too_deep = b"".join(bytes([1, 1]) + b"s" for _ in range(MAX_DEPTH + 1)) + bytes([2]) * (MAX_DEPTH + 1)
    assert _reason(too_deep) == "too-deep"
    # a megabyte of section starts fails fast at the limit, not by recursion
    assert _reason(bytes([1, 1]) + b"s" * 1) == "unbalanced"
    assert _reason((bytes([1, 1]) + b"s") * 300_000) == "too-deep"


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_vici_error(data):
    try:
        message = decode_message(data)
    except ViciError:
        return
    assert encode_message(message) == data  # a message that decodes has exactly one encoding


_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8).filter(
    lambda s: len(s.encode()) <= 255)
_trees = st.recursive(
    st.binary(max_size=20) | st.lists(st.binary(max_size=10), max_size=3),
    lambda inner: st.dictionaries(_names, inner, max_size=4), max_leaves=20)


@given(st.dictionaries(_names, _trees, max_size=5))
def test_round_trip(tree):
    assert decode_message(encode_message(tree)) == tree


# ----------------------------------------------------------------------------- packets


def test_packets_round_trip():
    for packet_type, name, message in [
        (PacketType.CMD_REQUEST, "list-sas", {"noblock": b"yes"}),
        (PacketType.CMD_RESPONSE, None, {"success": b"yes"}),
        (PacketType.CMD_UNKNOWN, None, None),
        (PacketType.EVENT_REGISTER, "list-sa", None),
        (PacketType.EVENT_UNREGISTER, "list-sa", None),
        (PacketType.EVENT_CONFIRM, None, None),
        (PacketType.EVENT_UNKNOWN, None, None),
        (PacketType.EVENT, "ike-updown", {"up": b"yes"}),
    ]:
        raw = encode_packet(packet_type, name, message)
        assert decode_packet(raw) == Packet(packet_type, name, message or {})


def test_packet_layout():
    assert encode_packet(PacketType.EVENT_REGISTER, "list-sa") == b"\x03\x07list-sa"
    assert frame(b"\x05") == b"\x00\x00\x00\x01\x05"
    assert encode_packet(PacketType.CMD_REQUEST, "version", {}) == b"\x00\x07version"


@pytest.mark.parametrize("raw, reason", [
    (b"", "empty-packet"),
    (b"\x08", "unknown-packet-type"),
    (b"\xff\x01a", "unknown-packet-type"),
    (b"\x00", "truncated"),  # request without a name length
    (b"\x00\x09version", "truncated"),  # name length lies
    (b"\x03\x00", "truncated"),  # empty name
    (b"\x03\x02\xc3\xa9", "bad-name"),  # not ASCII
    (b"\x05\x00", "trailing-bytes"),  # EVENT_CONFIRM carries nothing
    (b"\x03\x07list-sax", "trailing-bytes"),
    (b"\x00\x07version\x02", "unbalanced"),  # the message is checked too
])
def test_malformed_packets(raw, reason):
    with pytest.raises(ViciError) as info:
        decode_packet(raw)
    assert info.value.reason == reason


def test_encode_packet_checks_names_and_messages():
    with pytest.raises(ValueError):
        encode_packet(PacketType.CMD_REQUEST)
    with pytest.raises(ValueError):
        encode_packet(PacketType.CMD_RESPONSE, "x")
    with pytest.raises(ValueError):
        encode_packet(PacketType.EVENT_CONFIRM, message={})
    with pytest.raises(ValueError):  # over strongSwan's 512 KiB
        encode_packet(PacketType.CMD_RESPONSE, message={f"k{i}": b"v" * 60000 for i in range(9)})


# ----------------------------------------------------------------------------- stream decoder


def _stream() -> tuple[bytes, list[Packet]]:
    packets = [Packet(PacketType.EVENT_REGISTER, "list-sa"),
               Packet(PacketType.CMD_REQUEST, "list-sas", {"ike": b"office"}),
               Packet(PacketType.CMD_REQUEST, "load-conn", decode_message(README_EXAMPLE)),
               Packet(PacketType.EVENT_UNREGISTER, "list-sa")]
    data = b"".join(frame(encode_packet(p.type, p.name, p.message if p.type == PacketType.CMD_REQUEST else None))
                    for p in packets)
    return data, packets


def test_stream_decoder_byte_by_byte():
    data, packets = _stream()
    decoder = StreamDecoder()
    got = []
    for i in range(len(data)):
        got += decoder.feed(data[i:i + 1])
    assert got == packets
    assert decoder.buffered == 0


def test_stream_decoder_all_at_once_and_in_odd_pieces():
    data, packets = _stream()
    assert StreamDecoder().feed(data) == packets
    decoder = StreamDecoder()
    got = []
    for start in range(0, len(data), 7):
        got += decoder.feed(memoryview(data)[start:start + 7])
    assert got == packets


def test_a_100_megabyte_length_is_refused_before_buffering():
    decoder = StreamDecoder()
    assert decoder.feed(struct.pack("!I", 100 * 1024 * 1024)[:3]) == []
    with pytest.raises(ViciError) as info:
        decoder.feed(struct.pack("!I", 100 * 1024 * 1024)[3:])
    assert info.value.reason == "too-long"
    assert decoder.buffered == 0
    with pytest.raises(ViciError):  # the stream's framing is lost: the decoder stays failed
        decoder.feed(frame(b"\x05"))


def test_the_largest_allowed_packet_passes_and_one_more_byte_does_not():
    decoder = StreamDecoder()
    body = encode_packet(PacketType.CMD_REQUEST, "x", {})
    big = body + encode_message({f"k{i}": b"v" * 65000 for i in range(8)})
    pad = VICI_MESSAGE_SIZE_MAX - len(big) - 5
    big += bytes([3, 1]) + b"z" + pad.to_bytes(2, "big") + b"p" * pad
    assert len(big) == VICI_MESSAGE_SIZE_MAX
    assert decoder.feed(frame(big))[0].name == "x"
    with pytest.raises(ViciError):
        StreamDecoder().feed(struct.pack("!I", VICI_MESSAGE_SIZE_MAX + 1))


def test_zero_length_frame_is_an_error():
    with pytest.raises(ViciError) as info:
        StreamDecoder().feed(b"\x00\x00\x00\x00")
    assert info.value.reason == "empty-packet"
