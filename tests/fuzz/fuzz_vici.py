"""The vici server side (tunnel/ops/vici/codec.py and session.py): what a local client may send.

Input: a mode byte, a chunk-size byte, then
  mode 0: one message for decode_message; what decodes re-encodes to exactly the input;
  mode 1: a byte stream for StreamDecoder, fed in chunks of the given size; it yields the same
          packets (or the same error) as when fed at once, and each packet re-encodes to its bytes;
  mode 2: a byte stream for a ViciSession driven like the daemon will (every command answered
          with its own message, events raised to registered names, output taken a chunk at a
          time); the session's output is always a valid stream of server packets within its bound.
Invariants: only codec.ViciError escapes the decoders; the session never raises and closes with
a reason instead.
"""

if __name__ == "__main__":
    import fuzzlib
    fuzzlib.main("fuzz_vici")

from tunnel.ops.vici.codec import (
    PacketType,
    StreamDecoder,
    ViciError,
    decode_message,
    encode_message,
    encode_packet,
    frame,
)
from tunnel.ops.vici.session import CommandRequest, SessionClosed, ViciSession

EVENTS = frozenset({"list-sa", "list-conn", "control-log", "ike-updown"})
SERVER_TYPES = {PacketType.CMD_RESPONSE, PacketType.CMD_UNKNOWN, PacketType.EVENT_CONFIRM,
                PacketType.EVENT_UNKNOWN, PacketType.EVENT}
OUTPUT_LIMIT = 16 * 1024  # small, so the bound is reached within libFuzzer's input sizes


def _decode_all(data: bytes, chunk: int) -> tuple[list, str | None]:
    decoder = StreamDecoder()
    packets: list = []
    try:
        for start in range(0, len(data), chunk):
            packets += decoder.feed(data[start:start + chunk])
    except ViciError as exc:
        return packets, exc.reason
    return packets, None


def _stream(data: bytes, chunk: int) -> None:
    whole, whole_error = _decode_all(data, len(data) or 1)
    pieces, pieces_error = _decode_all(data, chunk)
    assert whole_error == pieces_error
    if whole_error is None:
        assert whole == pieces
        again = b"".join(frame(encode_packet(p.type, p.name, p.message if p.type in (
            PacketType.CMD_REQUEST, PacketType.CMD_RESPONSE, PacketType.EVENT) else None)) for p in whole)
        assert again == data[:len(again)] and len(data) - len(again) < 4 + 512 * 1024


def _session(data: bytes, chunk: int) -> None:
    session = ViciSession(EVENTS, output_limit=OUTPUT_LIMIT, max_queued=8)
    client = StreamDecoder()
    for start in range(0, len(data), chunk):
        session.receive_data(data[start:start + chunk])
        while (event := session.next_event()) is not None:
            if isinstance(event, SessionClosed):
                assert session.closed and event.reason
                break
            if isinstance(event, CommandRequest):
                for name in sorted(session.registered):
                    session.emit_event(name, event.message)
                if event.command.startswith("x"):
                    session.respond_unknown()
                else:
                    session.respond(event.message)
        output = session.pending_output()
        assert len(output) <= OUTPUT_LIMIT
        taken = output[:chunk * 3]  # a client reading slower than it writes, now and then
        session.output_sent(len(taken))
        for packet in client.feed(taken):
            assert packet.type in SERVER_TYPES


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    mode, chunk, body = data[0] % 3, data[1] or 1, data[2:]
    if mode == 0:
        try:
            message = decode_message(body)
        except ViciError:
            return
        assert encode_message(message) == body
    elif mode == 1:
        _stream(body, chunk)
    else:
        _session(body, chunk)


def seeds() -> dict[str, bytes]:
    import json
    from pathlib import Path

    out: dict[str, bytes] = {}
    fixtures = Path(__file__).resolve().parent.parent / "fixtures" / "vici"
    for path in sorted(fixtures.glob("swanctl-5.9.8-*.json")):
        fixture = json.loads(path.read_text())
        stream = b"".join(frame(bytes.fromhex(p["hex"])) for p in fixture["packets"])
        name = path.stem.removeprefix("swanctl-5.9.8-")
        out[f"session-{name}"] = b"\x02\x10" + stream
        if name == "load-all":
            out[f"stream-{name}"] = b"\x01\x07" + stream
            for packet in fixture["packets"]:
                if packet["name"] == "load-conn":
                    raw = bytes.fromhex(packet["hex"])
                    out["message-load-conn"] = b"\x00\x00" + raw[2 + raw[1]:]
    out["session-pipelined"] = b"\x02\x03" + b"".join(
        frame(encode_packet(PacketType.EVENT_REGISTER, "list-sa")) + frame(encode_packet(
            PacketType.CMD_REQUEST, "list-sas", {"ike": "office"})) for _ in range(3))
    out["stream-too-long"] = b"\x01\x01" + b"\x06\x40\x00\x00"
    return out
