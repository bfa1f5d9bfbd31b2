"""tunnel.ops.control: the JSON-lines control socket, driven by a selector loop in a thread here
(the daemon drives it from its own loop; the thread stands in for that loop only in tests)."""

from __future__ import annotations

import json
import os
import selectors
import socket
import stat
import threading
import time

import pytest

from tunnel.ops.control import (
    MAX_LINE,
    ControlError,
    ControlServer,
    DaemonUnreachable,
    control_request,
)


def handler(request: dict):
    cmd = request["cmd"]
    if cmd == "status":
        return {"pid": 1, "ike_sas": []}
    if cmd == "echo":
        return request
    if cmd == "big":
        return {"blob": "x" * 3_000_000}
    if cmd == "fail":
        raise ControlError("no child named 'nope'")
    if cmd == "bug":
        raise RuntimeError("secret-ish internals")
    if cmd == "unserialisable":
        return {"bytes": b"raw"}
    raise ControlError(f"unknown command {cmd!r}")


class Loop:
    """A tiny stand-in for the daemon's event loop."""

    def __init__(self, path: str):
        self.selector = selectors.DefaultSelector()
        self.server = ControlServer(path, handler, self.selector)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            for key, mask in self.selector.select(timeout=0.05):
                key.data(mask)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.server.close()
        self.selector.close()


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "run" / "espgw.sock")


def raw_exchange(path: str, payload: bytes, read_lines: int = 1, timeout: float = 5) -> list[dict]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(payload)
        data = b""
        while data.count(b"\n") < read_lines:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_request_response_and_socket_mode(sock_path):
    with Loop(sock_path):
        assert control_request(sock_path, {"cmd": "status"}) == {"pid": 1, "ike_sas": []}
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        with pytest.raises(ControlError, match="no child named 'nope'"):
            control_request(sock_path, {"cmd": "fail"})
    assert not os.path.exists(sock_path), "socket file removed on close"


def test_errors_are_replies_not_crashes(sock_path):
    with Loop(sock_path):
        lines = b'garbage\n[1,2]\n{"nocmd": 1}\n\n{"cmd": "bug"}\n{"cmd": "unserialisable"}\n\xff\xfe\n'
        replies = raw_exchange(sock_path, lines, 7)
        assert [reply["ok"] for reply in replies] == [False] * 7
        assert replies[0]["error"] == "bad request: not JSON"
        assert "expected an object" in replies[1]["error"] and "expected an object" in replies[2]["error"]
        assert "internal error" in replies[4]["error"] and "secret-ish" not in replies[4]["error"]
        assert "not serialisable" in replies[5]["error"]
        # and the server still serves
        assert control_request(sock_path, {"cmd": "status"})["pid"] == 1


def test_partial_lines_pipelining_and_unterminated_last_request(sock_path):
    with Loop(sock_path):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(sock_path)
            for piece in (b'{"cmd": "ec', b'ho", "n": 1}\n{"cmd": "echo", "n": 2}\n{"cmd": "echo", "n": 3}'):
                sock.sendall(piece)
                time.sleep(0.05)
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert [json.loads(line)["result"]["n"] for line in data.splitlines()] == [1, 2, 3]


def test_huge_line_is_refused_and_connection_closed(sock_path):
    with Loop(sock_path):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(sock_path)
            try:
                sock.sendall(b"x" * (MAX_LINE * 4))
            except OSError:
                pass  # the server may close before we finish: that is the point
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass
        assert b"longer than" in data
        assert control_request(sock_path, {"cmd": "status"})["pid"] == 1


def test_large_response_and_vanishing_clients(sock_path):
    with Loop(sock_path) as loop:
        assert len(control_request(sock_path, {"cmd": "big"})["blob"]) == 3_000_000
        for _ in range(5):  # ask for a big answer, then disappear without reading it
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(sock_path)
                sock.sendall(b'{"cmd": "big"}\n')
        for _ in range(40):  # connect and leave without a word
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(sock_path)
        assert control_request(sock_path, {"cmd": "status"})["pid"] == 1
        time.sleep(0.2)
        assert len(loop.server.clients) <= 32


def test_unreachable_daemon(tmp_path):
    path = str(tmp_path / "none.sock")
    with pytest.raises(DaemonUnreachable) as info:
        control_request(path, {"cmd": "status"})
    assert info.value.path == path
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # a socket file nobody listens on: what a crashed daemon leaves behind
    with pytest.raises(DaemonUnreachable, match="refused"):
        control_request(path, {"cmd": "status"})


def test_stale_socket_replaced_but_live_one_and_plain_files_kept(tmp_path, sock_path):
    os.makedirs(os.path.dirname(sock_path))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()
    with Loop(sock_path):
        assert control_request(sock_path, {"cmd": "status"})["pid"] == 1
        with pytest.raises(ControlError, match="already listening"):
            ControlServer(sock_path, handler)
    plain = tmp_path / "file"
    plain.write_text("not mine")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(str(plain), handler)
    assert plain.read_text() == "not mine"


def test_daemon_that_never_answers_times_out(tmp_path):
    path = str(tmp_path / "mute.sock")
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(path)
    mute.listen(1)
    try:
        with pytest.raises(ControlError, match="did not answer"):
            control_request(path, {"cmd": "status"}, timeout=0.3)
    finally:
        mute.close()


def test_polling_integration_without_selector(sock_path):
    server = ControlServer(sock_path, handler)
    result = {}

    def client():
        result["status"] = control_request(sock_path, {"cmd": "status"})

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 5
    import select
    while thread.is_alive() and time.monotonic() < deadline:
        readable, writable, _ = select.select(server.sockets(), server.sockets_to_write(), [], 0.05)
        for sock in readable:
            server.on_readable(sock)
        for sock in writable:
            server.on_writable(sock)
    thread.join(1)
    server.close()
    assert result["status"]["pid"] == 1
