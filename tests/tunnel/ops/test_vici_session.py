"""tunnel.ops.vici.session: one client connection, driven as the daemon will drive it."""

from __future__ import annotations

import pytest

from tunnel.ops.vici.codec import PacketType, StreamDecoder, encode_packet, frame
from tunnel.ops.vici.session import CommandRequest, EventSubscription, SessionClosed, ViciSession

EVENTS = frozenset({"list-sa", "list-conn", "control-log", "ike-updown"})


def request(command: str, message: dict | None = None) -> bytes:
    return frame(encode_packet(PacketType.CMD_REQUEST, command, message or {}))


def register(event: str, on: bool = True) -> bytes:
    return frame(encode_packet(PacketType.EVENT_REGISTER if on else PacketType.EVENT_UNREGISTER, event))


def drain(session: ViciSession) -> list:
    """What the client receives: the session's output, decoded, and marked as taken."""
    data = session.pending_output()
    session.output_sent(len(data))
    return StreamDecoder().feed(data)


def events(session: ViciSession) -> list:
    out = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


def test_a_command_and_its_response():
    session = ViciSession(EVENTS)
    session.receive_data(request("version"))
    assert events(session) == [CommandRequest("version", {})]
    assert session.active_command == "version"
    session.respond({"daemon": "espgw", "version": "0.1.0"})
    [packet] = drain(session)
    assert packet.type == PacketType.CMD_RESPONSE
    assert packet.message == {"daemon": b"espgw", "version": b"0.1.0"}
    assert session.active_command is None


def test_list_sas_stream_as_swanctl_drives_it():
    # swanctl --list-sas: register list-sa, request list-sas, receive list-sa events, then the response
    session = ViciSession(EVENTS)
    session.receive_data(register("list-sa"))
    assert events(session) == [EventSubscription("list-sa", True, True)]
    assert [p.type for p in drain(session)] == [PacketType.EVENT_CONFIRM]
    session.receive_data(request("list-sas"))
    assert events(session) == [CommandRequest("list-sas", {})]
    for name in ("office", "lab"):
        assert session.emit_event("list-sa", {name: {"state": "ESTABLISHED"}})
    session.respond({})
    packets = drain(session)
    assert [(p.type, p.name) for p in packets] == [(PacketType.EVENT, "list-sa"), (PacketType.EVENT, "list-sa"),
                                                   (PacketType.CMD_RESPONSE, None)]
    assert packets[1].message == {"lab": {"state": b"ESTABLISHED"}}
    session.receive_data(register("list-sa", on=False))
    assert events(session) == [EventSubscription("list-sa", False, True)]
    assert not session.emit_event("list-sa", {"x": b"y"})


def test_events_reach_only_registered_clients_and_unknown_events_are_refused():
    session = ViciSession(EVENTS)
    assert not session.emit_event("ike-updown", {"up": True})
    assert session.pending_output() == b""
    session.receive_data(register("no-such-event"))
    assert events(session) == [EventSubscription("no-such-event", True, False)]
    assert [p.type for p in drain(session)] == [PacketType.EVENT_UNKNOWN]
    assert "no-such-event" not in session.registered


def test_packets_wait_behind_an_active_command_in_order():
    session = ViciSession(EVENTS)
    session.receive_data(request("initiate", {"child": "a"}) + register("ike-updown") + request("stats"))
    assert events(session) == [CommandRequest("initiate", {"child": b"a"})]
    assert session.pending_output() == b""  # the registration waits for initiate's response
    session.emit_event("control-log", {"msg": "not registered"})
    session.respond({"success": "yes"})
    assert events(session) == [EventSubscription("ike-updown", True, True), CommandRequest("stats", {})]
    session.respond({})
    assert [p.type for p in drain(session)] == [PacketType.CMD_RESPONSE, PacketType.EVENT_CONFIRM,
                                                PacketType.CMD_RESPONSE]


def test_unknown_commands_answered_here_when_the_command_set_is_given():
    session = ViciSession(EVENTS, commands={"version"})
    session.receive_data(request("reload-settings") + request("version"))
    assert events(session) == [CommandRequest("version", {})]
    assert [p.type for p in drain(session)] == [PacketType.CMD_UNKNOWN]
    session.respond_unknown()
    assert [p.type for p in drain(session)] == [PacketType.CMD_UNKNOWN]


def test_respond_without_a_command_is_a_programming_error():
    with pytest.raises(RuntimeError):
        ViciSession(EVENTS).respond({})


def test_byte_by_byte_input():
    session = ViciSession(EVENTS)
    data = register("list-conn") + request("list-conns", {"ike": "office"})
    got = []
    for i in range(len(data)):
        session.receive_data(data[i:i + 1])
        got += events(session)
    assert got == [EventSubscription("list-conn", True, True), CommandRequest("list-conns", {"ike": b"office"})]


@pytest.mark.parametrize("data, reason", [
    (b"\x06\x40\x00\x00", "too-long"),  # 100 MiB announced
    (frame(b"\x00\x07version\x02"), "unbalanced"),
    (frame(b"\x09"), "unknown-packet-type"),
    (frame(encode_packet(PacketType.CMD_RESPONSE, message={})), "unexpected-packet"),  # only servers respond
    (frame(encode_packet(PacketType.EVENT, "list-sa", {})), "unexpected-packet"),
    (frame(encode_packet(PacketType.EVENT_CONFIRM)), "unexpected-packet"),
])
def test_a_protocol_violation_closes_the_session_with_a_reason(data, reason):
    session = ViciSession(EVENTS)
    session.receive_data(data)
    assert session.closed
    [event] = events(session)
    assert isinstance(event, SessionClosed) and event.reason == reason
    assert session.next_event() is None  # reported once
    session.receive_data(request("version"))  # ignored from now on
    assert session.next_event() is None and session.pending_output() == b""


def test_too_many_pipelined_requests_close_the_session():
    session = ViciSession(EVENTS, max_queued=4)
    session.receive_data(request("initiate"))
    assert events(session) == [CommandRequest("initiate", {})]
    session.receive_data(request("stats") * 4)
    assert not session.closed
    session.receive_data(request("stats"))
    assert session.close_reason == SessionClosed("too-many-requests", session.close_reason.detail)
    session.respond({})  # the daemon's late answer to a dead session is harmless
    assert session.pending_output() == b""


def test_a_client_that_does_not_read_is_disconnected_not_buffered():
    session = ViciSession(EVENTS, output_limit=64 * 1024)
    session.receive_data(register("list-sa") + request("list-sas"))
    events(session)
    big = {"sa": {"note": "x" * 1000}}
    sent = 0
    while session.emit_event("list-sa", big):
        sent += 1
        assert len(session.pending_output()) <= 64 * 1024
    assert 50 < sent < 70
    assert session.close_reason is not None and session.close_reason.reason == "output-overflow"
    assert session.pending_output() == b""
    assert isinstance(session.next_event(), SessionClosed)


def test_a_client_that_reads_keeps_going():
    session = ViciSession(EVENTS, output_limit=64 * 1024)
    session.receive_data(register("list-sa") + request("list-sas"))
    events(session)
    for _ in range(500):  # ~500 kB in total, never more than one event unread
        assert session.emit_event("list-sa", {"sa": {"note": "x" * 1000}})
        drain(session)
    session.respond({})
    assert not session.closed


def test_partial_writes():
    session = ViciSession(EVENTS)
    session.receive_data(request("version"))
    events(session)
    session.respond({"version": "1"})
    whole = session.pending_output()
    session.output_sent(3)
    assert session.pending_output() == whole[3:]
    session.output_sent(len(whole) - 3)
    assert session.pending_output() == b""
