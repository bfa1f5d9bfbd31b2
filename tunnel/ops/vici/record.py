"""Record what the real ``swanctl`` sends over vici, for tests/fixtures/vici/.

``python -m tunnel.ops.vici.record [--out DIR] [--chroot ROOT]`` listens on a temporary unix
socket, runs each swanctl invocation below against it (``--uri unix://...``), answers just enough
for swanctl to go on (a version, empty lists, success for loads and actions), and writes one JSON
file per invocation: the command line, swanctl's version, and every packet swanctl sent, in order,
as hex with its decoded form. ``--chroot`` runs a swanctl installed in another root (strongSwan 6
in the lab's Debian trixie tree); the socket and swanctl.conf are then placed inside that root.

This is the only part of tunnel/ops/vici that does I/O; it is a development tool, not the daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from .codec import PacketType, decode_packet
from .session import CommandRequest, SessionClosed, ViciSession

# An example site: one PSK connection with two children, its secret and an address pool. The
# secret is a made-up placeholder; it never protected anything.
SWANCTL_CONF = """\
connections {
    office {
        version = 2
        local_addrs = 192.0.2.1
        remote_addrs = 192.0.2.2
        proposals = aes256gcm16-prfsha256-ecp256, aes128-sha256-modp2048
        dpd_delay = 30s
        rekey_time = 4h
        local {
            auth = psk
            id = gw-a.example.net
        }
        remote {
            auth = psk
            id = gw-b.example.net
        }
        children {
            office-lan {
                local_ts = 10.0.0.0/24
                remote_ts = 10.0.5.0/24, 10.0.6.0/24
                esp_proposals = aes256gcm16, aes128-sha256
                start_action = trap
                rekey_time = 1h
            }
            office-dns {
                local_ts = 10.0.0.0/24[udp]
                remote_ts = 10.0.5.53/32[udp/53]
                esp_proposals = chacha20poly1305
                start_action = none
            }
        }
    }
}
secrets {
    ike-office {
        id-a = gw-a.example.net
        id-b = gw-b.example.net
        secret = "fake-fixture-secret-not-used-anywhere"
    }
}
pools {
    roadwarriors {
        addrs = 10.3.0.0/28
        dns = 10.0.0.53
    }
}
"""

# (fixture name, swanctl arguments); {conf} is replaced by the swanctl.conf path
INVOCATIONS: list[tuple[str, list[str]]] = [
    ("version", ["--version", "--daemon"]),
    ("stats", ["--stats"]),
    ("list-sas", ["--list-sas"]),
    ("list-conns", ["--list-conns"]),
    ("initiate", ["--initiate", "--child", "office-lan"]),
    ("terminate", ["--terminate", "--ike", "office"]),
    ("rekey", ["--rekey", "--child", "office-lan"]),
    ("load-all", ["--load-all", "--file", "{conf}"]),
    # the daemon already holds a connection, secret and pool the file no longer has: swanctl unloads them
    ("load-all-stale", ["--load-all", "--file", "{conf}"]),
]
STALE: dict[str, dict[str, Any]] = {"get-conns": {"conns": ["old-conn"]}, "get-shared": {"keys": ["ike-old"]},
         "get-pools": {"old-pool": {"base": "10.9.0.1", "size": "14", "online": "0", "offline": "0"}}}


def _answer(command: str, version: str, stale: bool = False) -> dict[str, Any]:
    """The least each command needs for swanctl to carry on as with a daemon with nothing loaded
    (``stale``: holding what STALE lists)."""
    if stale and command in STALE:
        return dict(STALE[command])
    if command == "version":
        return {"daemon": "charon", "version": version, "sysname": "Linux", "release": "recording",
                "machine": "x86_64"}
    if command == "stats":
        return {"uptime": {"running": "1 second", "since": "Dec 04 00:00:00 2026"},
                "workers": {"total": "16", "idle": "16", "active": {"critical": "0", "high": "0", "medium": "0",
                                                                    "low": "0"}},
                "queues": {"critical": "0", "high": "0", "medium": "0", "low": "0"}, "scheduled": "0",
                "ikesas": {"total": "0", "half-open": "0"}, "plugins": []}
    if command.startswith("get-"):  # get-conns, get-shared, get-keys, get-pools, get-authorities...
        return {"conns": [], "keys": [], "authorities": []} if command != "get-pools" else {}
    if command.startswith("list-"):
        return {}  # a streamed listing with nothing to stream
    return {"success": "yes"}


def record_invocation(argv: list[str], workdir: Path, uri_path: str, swanctl: list[str], version: str,
                      stale: bool = False, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Run one swanctl invocation against a recording server; return the packets it sent."""
    sock_path = workdir / "vici.sock"
    if sock_path.exists():
        sock_path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(1)
    server.settimeout(timeout)
    packets: list[dict[str, Any]] = []
    proc = subprocess.Popen(swanctl + argv + ["--uri", f"unix://{uri_path}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(proc.stdout.read() if proc.stdout else b""))
    reader.start()
    try:
        conn, _ = server.accept()
        conn.settimeout(timeout)
        _serve(conn, packets, version, stale)
        conn.close()
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join()
        server.close()
        sock_path.unlink(missing_ok=True)
    if proc.returncode != 0:
        said = b"".join(output).decode(errors="replace")
        raise RuntimeError(f"swanctl {' '.join(argv)} exited {proc.returncode}: {said}")
    return packets


def _serve(conn: socket.socket, packets: list[dict[str, Any]], version: str, stale: bool) -> None:
    # Raw packets are kept for the fixture; a session tracks registrations and answers
    session = ViciSession(events=_AnyName())
    raw = _RawTap()
    while True:
        data = conn.recv(65536)
        if not data:
            return
        for body in raw.feed(data):
            packets.append(_describe(body))
        session.receive_data(data)
        while (event := session.next_event()) is not None:
            if isinstance(event, SessionClosed):
                raise RuntimeError(f"swanctl broke the protocol? {event}")
            if isinstance(event, CommandRequest):  # streamed listings stream nothing: no SAs, no conns
                session.respond(_answer(event.command, version, stale))
        conn.sendall(session.pending_output())
        session.output_sent(len(session.pending_output()))


class _AnyName:
    def __contains__(self, name: object) -> bool:
        return True


class _RawTap:
    """Splits the stream into packet bodies without decoding, for the hex in the fixtures."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        bodies = []
        while len(self.buffer) >= 4:
            length = int.from_bytes(self.buffer[:4], "big")
            if len(self.buffer) < 4 + length:
                break
            bodies.append(self.buffer[4:4 + length])
            self.buffer = self.buffer[4 + length:]
        return bodies


def _describe(body: bytes) -> dict[str, Any]:
    packet = decode_packet(body)
    entry: dict[str, Any] = {"type": packet.type.name, "name": packet.name, "hex": body.hex()}
    if packet.type == PacketType.CMD_REQUEST:
        entry["message"] = _jsonable(packet.message)
    return entry


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value.decode("utf-8", errors="backslashreplace")


def swanctl_version(swanctl: list[str]) -> str:
    result = subprocess.run(swanctl + ["--version"], capture_output=True, text=True, timeout=30)
    match = re.search(r"strongSwan (\S+) swanctl", result.stdout + result.stderr)
    if not match:
        raise RuntimeError(f"cannot tell swanctl's version from: {result.stdout!r}")
    return match.group(1)


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tests/fixtures/vici", help="directory for the JSON fixtures")
    parser.add_argument("--chroot", help="run the swanctl installed in this root directory")
    opts = parser.parse_args(args)
    root = Path(opts.chroot) if opts.chroot else Path("/")
    swanctl = ["chroot", str(root), "swanctl"] if opts.chroot else ["swanctl"]
    version = swanctl_version(swanctl)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vici-record-", dir=root / "tmp") as tmp:
        workdir = Path(tmp)
        inside = "/" + str(workdir.relative_to(root))  # the path as swanctl sees it
        (workdir / "swanctl.conf").write_text(SWANCTL_CONF)
        os.chmod(workdir, 0o755)
        for name, argv in INVOCATIONS:
            argv = [arg.replace("{conf}", f"{inside}/swanctl.conf") for arg in argv]
            packets = record_invocation(argv, workdir, f"{inside}/vici.sock", swanctl, version,
                                        stale=name.endswith("-stale"))
            commands = [f"{p['type']} {p['name']}" for p in packets]
            fixture = {"swanctl_version": version, "invocation": ["swanctl"] + argv, "commands": commands,
                       "packets": packets}
            path = out / f"swanctl-{version}-{name}.json"
            path.write_text(json.dumps(fixture, indent=1) + "\n")
            print(f"{path}: {len(packets)} packets: {', '.join(commands)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
