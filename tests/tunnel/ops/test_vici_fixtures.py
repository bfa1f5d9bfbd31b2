"""The packets the real swanctl (5.9.8, and 6.0.1 from the lab's trixie root) sent, recorded by
tunnel/ops/vici/record.py into tests/fixtures/vici/: each decodes, re-encodes byte for byte, and
carries what swanctl.conf said; the command sequences are the ones README.md documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunnel.ops.vici.codec import PacketType, StreamDecoder, decode_packet, encode_packet, frame
from tunnel.ops.vici.session import CommandRequest, EventSubscription, ViciSession
from tunnel.ops.vici.swanctl_conf import ViciConfig

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "vici"
FILES = sorted(FIXTURES.glob("swanctl-*.json"))
VERSIONS = sorted({json.loads(path.read_text())["swanctl_version"] for path in FILES})


def load(version: str, name: str) -> dict:
    return json.loads((FIXTURES / f"swanctl-{version}-{name}.json").read_text())


def packets(version: str, name: str) -> dict:
    return {p["name"]: decode_packet(bytes.fromhex(p["hex"])) for p in load(version, name)["packets"]}


def test_fixtures_exist_for_swanctl_5_9_8():
    assert "5.9.8" in VERSIONS
    assert len(FILES) >= 9


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_recorded_packet_decodes_and_reencodes_byte_for_byte(path):
    fixture = json.loads(path.read_text())
    for entry in fixture["packets"]:
        raw = bytes.fromhex(entry["hex"])
        packet = decode_packet(raw)
        assert packet.type.name == entry["type"] and packet.name == entry["name"]
        message = packet.message if packet.type == PacketType.CMD_REQUEST else None
        assert encode_packet(packet.type, packet.name, message) == raw
    stream = b"".join(frame(bytes.fromhex(entry["hex"])) for entry in fixture["packets"])
    assert len(StreamDecoder().feed(stream)) == len(fixture["packets"])


SEQUENCES = {
    "version": ["CMD_REQUEST version"],
    "stats": ["CMD_REQUEST stats"],
    "list-sas": ["EVENT_REGISTER list-sa", "CMD_REQUEST list-sas"],
    "list-conns": ["EVENT_REGISTER list-conn", "CMD_REQUEST list-conns"],
    "initiate": ["EVENT_REGISTER control-log", "CMD_REQUEST initiate"],
    "terminate": ["EVENT_REGISTER control-log", "CMD_REQUEST terminate"],
    "rekey": ["CMD_REQUEST rekey"],
    "load-all": ["CMD_REQUEST get-keys", "CMD_REQUEST get-shared", "CMD_REQUEST load-shared",
                 "CMD_REQUEST get-authorities", "CMD_REQUEST get-pools", "CMD_REQUEST load-pool",
                 "CMD_REQUEST get-conns", "CMD_REQUEST load-conn"],
    "load-all-stale": ["CMD_REQUEST get-keys", "CMD_REQUEST get-shared", "CMD_REQUEST load-shared",
                       "CMD_REQUEST unload-shared", "CMD_REQUEST get-authorities", "CMD_REQUEST get-pools",
                       "CMD_REQUEST load-pool", "CMD_REQUEST unload-pool", "CMD_REQUEST get-conns",
                       "CMD_REQUEST load-conn", "CMD_REQUEST unload-conn"],
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_command_sequences(version, name):
    fixture = load(version, name)
    assert fixture["commands"] == SEQUENCES[name]
    assert [f"{p['type']} {p['name']}" for p in fixture["packets"]] == SEQUENCES[name]


@pytest.mark.parametrize("version", VERSIONS)
def test_load_conn_carries_the_connection_with_lists(version):
    message = packets(version, "load-all")["load-conn"].message
    assert list(message) == ["office"]
    conn = message["office"]
    assert conn["local_addrs"] == [b"192.0.2.1"] and conn["remote_addrs"] == [b"192.0.2.2"]
    assert conn["proposals"] == [b"aes256gcm16-prfsha256-ecp256", b"aes128-sha256-modp2048"]
    assert conn["local"] == {"auth": b"psk", "id": b"gw-a.example.net"}
    assert list(conn["children"]) == ["office-lan", "office-dns"]
    lan = conn["children"]["office-lan"]
    assert lan["remote_ts"] == [b"10.0.5.0/24", b"10.0.6.0/24"]
    assert lan["esp_proposals"] == [b"aes256gcm16", b"aes128-sha256"]
    assert lan["start_action"] == b"trap"


@pytest.mark.parametrize("version", VERSIONS)
def test_load_shared_and_load_pool_messages(version):
    recorded = packets(version, "load-all")
    assert recorded["load-shared"].message == {
        "id": b"ike-office", "type": b"ike", "data": b"fake-fixture-secret-not-used-anywhere",
        "owners": [b"gw-a.example.net", b"gw-b.example.net"]}
    assert recorded["load-pool"].message == {"roadwarriors": {"addrs": b"10.3.0.0/28", "dns": [b"10.0.0.53"]}}
    stale = packets(version, "load-all-stale")
    assert stale["unload-conn"].message == {"name": b"old-conn"}
    assert stale["unload-shared"].message == {"id": b"ike-old"}
    assert stale["unload-pool"].message == {"name": b"old-pool"}


@pytest.mark.parametrize("version", VERSIONS)
def test_recorded_load_all_maps_to_espgw_configuration(version):
    recorded = packets(version, "load-all")
    config = ViciConfig()
    assert config.load_shared(recorded["load-shared"].message) == "ike-office"
    (pool,) = config.load_pool(recorded["load-pool"].message)
    assert (pool.name, pool.addrs, [str(d) for d in pool.dns]) == ("roadwarriors", "10.3.0.0/28", ["10.0.0.53"])
    conn = config.load_conn(recorded["load-conn"].message)
    assert conn.psk == b"fake-fixture-secret-not-used-anywhere"
    assert [child.name for child in conn.children] == ["office-lan", "office-dns"]
    dns = conn.children[1]
    assert (dns.remote_ts[0].protocol, dns.remote_ts[0].start_port) == (17, 53)


@pytest.mark.parametrize("version", VERSIONS)
def test_recorded_streams_drive_a_session(version):
    # a session fed swanctl's recorded bytes yields the same requests, in order
    fixture = load(version, "list-sas")
    session = ViciSession({"list-sa"})
    session.receive_data(b"".join(frame(bytes.fromhex(p["hex"])) for p in fixture["packets"]))
    first, second = session.next_event(), session.next_event()
    assert first == EventSubscription("list-sa", True, True)
    assert second == CommandRequest("list-sas", {})
