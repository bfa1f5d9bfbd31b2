"""ViciServer in a selector loop, without the daemon: clients that lie about lengths, nest too deep,
send unknown packet types or never read are dropped alone; the others keep being served; the
socket is root's only."""

from __future__ import annotations

import os
import selectors
import socket
import stat
import struct
import threading
import time

import pytest

from tunnel.ops.vici.codec import PacketType, decode_packet, encode_packet, frame
from tunnel.ops.vici.server import ViciServer
from tunnel.ops.vici.session import CommandRequest, ViciSession


class Loop:
    def __init__(self, path: str):
        self.selector = selectors.DefaultSelector()
        self.later: list[ViciSession] = []
        self.calls: list = []  # run in the loop's thread
        self.server = ViciServer(path, self.dispatch, commands={"version", "list-sas", "slow", "boom", "stream"},
                                 events={"list-sa", "log"}, selector=self.selector)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def dispatch(self, session: ViciSession, request: CommandRequest) -> None:
        if request.command == "version":
            session.respond({"daemon": "test"})
        elif request.command == "list-sas":
            for i in range(200):
                session.emit_event("list-sa", {f"sa{i}": {"uniqueid": i, "pad": "x" * 1000}})
            session.respond({})
        elif request.command == "stream":  # 10 MB of events, more than a client may leave unread
            numbers = iter(range(10_000))

            def batch() -> None:
                while session.pending_size() < 256 * 1024:
                    i = next(numbers, None)
                    if i is None:
                        session.respond({"count": 10_000})
                        return
                    session.emit_event("list-sa", {f"sa{i}": {"pad": "x" * 1000}})
                self.server.when_drained(session, batch)

            batch()
        elif request.command == "slow":
            self.later.append(session)  # answered by finish() later
        else:
            raise RuntimeError("a bug")

    def run(self) -> None:
        while not self.stop.is_set():
            for key, mask in self.selector.select(0.05):
                key.data(mask)
            while self.later:
                self.server.finish(self.later.pop(), {"done": "yes"})
            while self.calls:
                self.calls.pop()()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.server.close()
        self.selector.close()


@pytest.fixture
def loop(tmp_path):
    loop = Loop(str(tmp_path / "charon.vici"))
    yield loop
    loop.close()


def connect(loop: Loop) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(loop.server.path)
    return sock


def request(sock: socket.socket, command: str, message: dict | None = None) -> bytes:
    sock.sendall(frame(encode_packet(PacketType.CMD_REQUEST, command, message or {})))
    return read_packet(sock)


def read_packet(sock: socket.socket) -> bytes:
    header = recv_exactly(sock, 4)
    return recv_exactly(sock, struct.unpack("!I", header)[0])


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def assert_dropped(sock: socket.socket) -> None:
    assert sock.recv(100) == b""


def test_socket_is_root_only(loop):
    assert stat.S_IMODE(os.stat(loop.server.path).st_mode) == 0o600


def test_command_and_unknown_command(loop):
    sock = connect(loop)
    assert decode_packet(request(sock, "version")).message == {"daemon": b"test"}
    assert decode_packet(request(sock, "nope")).type == PacketType.CMD_UNKNOWN


@pytest.mark.parametrize("bad", [
    struct.pack("!I", 100 * 1024 * 1024),  # a 100 MB length
    frame(bytes([42, 1]) + b"x"),  # unknown packet type
    frame(bytes([PacketType.CMD_REQUEST, 7]) + b"version" + (bytes([1, 1]) + b"a") * 17 + bytes([2]) * 17),
    frame(bytes([PacketType.CMD_REQUEST, 7]) + b"version" + bytes([3, 1]) + b"k" + b"\x00\xff"),  # lying length
    frame(bytes([PacketType.CMD_RESPONSE])),  # only a server sends this
], ids=["100MB", "unknown-type", "too-deep", "lying-length", "server-packet"])
def test_malformed_input_drops_that_client_only(loop, bad):
    good = connect(loop)
    sock = connect(loop)
    sock.sendall(bad)
    assert_dropped(sock)
    assert decode_packet(request(good, "version")).message == {"daemon": b"test"}


def test_a_client_that_never_reads_blocks_nobody(loop):
    stuck = connect(loop)
    stuck.sendall(frame(encode_packet(PacketType.EVENT_REGISTER, "list-sa")))
    for _ in range(20):  # ~200 KB of events each; the client reads none
        stuck.sendall(frame(encode_packet(PacketType.CMD_REQUEST, "list-sas", {})))
    time.sleep(0.3)
    other = connect(loop)
    assert decode_packet(request(other, "version")).message == {"daemon": b"test"}
    stuck.close()


def test_a_late_answer_and_what_queued_behind_it(loop):
    sock = connect(loop)
    sock.sendall(frame(encode_packet(PacketType.CMD_REQUEST, "slow", {}))
                 + frame(encode_packet(PacketType.CMD_REQUEST, "version", {})))
    assert decode_packet(read_packet(sock)).message == {"done": b"yes"}
    assert decode_packet(read_packet(sock)).message == {"daemon": b"test"}


def test_a_failing_command_answers_and_the_server_lives_on(loop):
    sock = connect(loop)
    answer = decode_packet(request(sock, "boom")).message
    assert answer["success"] == b"no" and b"internal error" in answer["errmsg"]  # type: ignore[operator]
    assert decode_packet(request(sock, "version")).message == {"daemon": b"test"}


def test_events_reach_registered_clients(loop):
    sock = connect(loop)
    sock.sendall(frame(encode_packet(PacketType.EVENT_REGISTER, "log")))
    assert decode_packet(read_packet(sock)).type == PacketType.EVENT_CONFIRM
    loop.calls.append(lambda: loop.server.emit("log", {"msg": "hello"}))
    packet = decode_packet(read_packet(sock))
    assert (packet.type, packet.name, packet.message) == (PacketType.EVENT, "log", {"msg": b"hello"})


def test_a_streaming_command_waits_for_its_reader(loop):
    sock = connect(loop)
    sock.sendall(frame(encode_packet(PacketType.EVENT_REGISTER, "list-sa")))
    assert decode_packet(read_packet(sock)).type == PacketType.EVENT_CONFIRM
    sock.sendall(frame(encode_packet(PacketType.CMD_REQUEST, "stream", {})))
    time.sleep(0.3)  # the client reads nothing for a while: the server must not give up on it
    events = 0
    while (packet := decode_packet(read_packet(sock))).type == PacketType.EVENT:
        events += 1
    assert (events, packet.message) == (10_000, {"count": b"10000"})
