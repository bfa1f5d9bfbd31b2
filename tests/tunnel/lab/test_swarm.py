"""The swarm's pieces that need no namespaces: its ICMP echo packets and its client configs."""

from __future__ import annotations

import ipaddress
import struct

import dpkt

from ike.codec.constants import NAT_T_PORT
from tunnel.lab.swarm import client_config, echo_request, office_connection, parse_echo_reply


def _as_reply(request: bytes) -> bytes:
    """What the dashboard's kernel answers: addresses swapped, type 0, checksums redone."""
    header, icmp = bytearray(request[:20]), bytearray(request[20:])
    header[12:16], header[16:20] = request[16:20], request[12:16]
    icmp[0] = 0
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", dpkt.in_cksum(bytes(icmp)))
    return bytes(header) + bytes(icmp)


def test_echo_request_checksums_verify():
    packet = echo_request("10.3.0.7", "10.0.5.9", 0x5007, 3)
    assert dpkt.in_cksum(packet[:20]) == 0 and dpkt.in_cksum(packet[20:]) == 0  # a valid sum folds to zero
    assert ipaddress.IPv4Address(packet[12:16]) == ipaddress.IPv4Address("10.3.0.7")
    assert struct.unpack("!H", packet[2:4])[0] == len(packet)


def test_echo_reply_is_parsed_and_anything_else_is_not():
    request = echo_request("10.3.0.7", "10.0.5.9", 0x5007, 3)
    assert parse_echo_reply(_as_reply(request)) == ("10.0.5.9", "10.3.0.7", 0x5007, 3)
    assert parse_echo_reply(request) is None  # a request, not a reply
    assert parse_echo_reply(b"") is None and parse_echo_reply(request[:27]) is None
    assert parse_echo_reply(b"\x60" + request[1:]) is None  # not IPv4


def test_client_asks_for_a_virtual_ip_on_port_4500_and_the_office_lends_to_any_identity():
    client = client_config("swarm001.lab", "192.168.1.7", "192.0.2.2", "10.0.5.0/24")
    assert client.vips == ["0.0.0.0"] and client.children[0].local_dynamic
    assert client.local_port == client.remote_port == NAT_T_PORT
    office = office_connection("192.0.2.2")
    assert office.remote.id == "%any" and office.pools == ["rw"] and office.children[0].remote_dynamic
