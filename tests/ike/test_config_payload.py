"""The Configuration payload's attributes (ike.codec.config_payload): strict lengths, a bound."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from ike.codec.config_payload import (MAX_ATTRIBUTES, ConfigPayloadError, build_reply, build_request,
                                      parse_config)
from ike.codec.constants import CfgAttr, CfgType
from ike.codec.payloads import CpPayload

ip = ipaddress.ip_address


def test_request_and_reply_round_trip():
    request = build_request([ip("0.0.0.0"), ip("fd00::7")])
    assert request.cfg_type == CfgType.CFG_REQUEST
    got = parse_config(CpPayload.parse(request.body()))
    assert got.addresses == [ip("0.0.0.0"), ip("fd00::7")]
    assert got.wants == {CfgAttr.INTERNAL_IP4_DNS, CfgAttr.INTERNAL_IP6_DNS}
    reply = build_reply([ip("10.3.0.1"), ip("fd00:3::1")], [ip("10.3.0.53"), ip("fd00::53")],
                        [ipaddress.ip_network("10.2.0.0/16"), ipaddress.ip_network("fd00:2::/48")])
    got = parse_config(CpPayload.parse(reply.body()))
    assert got.cfg_type == CfgType.CFG_REPLY
    assert got.addresses == [ip("10.3.0.1"), ip("fd00:3::1")]
    assert got.dns == [ip("10.3.0.53"), ip("fd00::53")]
    assert [str(n) for n in got.subnets] == ["10.2.0.0/16", "fd00:2::/48"]


@pytest.mark.parametrize("attr, value", [
    (CfgAttr.INTERNAL_IP4_ADDRESS, b"\x0a\x03\x00"),
    (CfgAttr.INTERNAL_IP4_DNS, bytes(5)),
    (CfgAttr.INTERNAL_IP6_ADDRESS, bytes(16)),  # the prefix byte is missing
    (CfgAttr.INTERNAL_IP4_SUBNET, bytes(4)),
    (CfgAttr.INTERNAL_IP6_SUBNET, bytes(16) + b"\xff"),  # prefix length 255
    (CfgAttr.SUPPORTED_ATTRIBUTES, b"\x00"),
])
def test_wrong_lengths_are_malformed(attr, value):
    with pytest.raises(ConfigPayloadError):
        parse_config(CpPayload(CfgType.CFG_REQUEST, [(attr, value)]))


def test_unknown_attributes_are_kept_and_many_are_capped():
    got = parse_config(CpPayload(CfgType.CFG_REQUEST, [(16384, b"x"), (CfgAttr.INTERNAL_IP4_ADDRESS, b"")]))
    assert got.unknown == [(16384, b"x")] and got.addresses == [ip("0.0.0.0")]
    many = CpPayload(CfgType.CFG_REQUEST, [(CfgAttr.INTERNAL_IP4_DNS, b"")] * 1000)
    got = parse_config(CpPayload.parse(many.body()))
    assert got.dropped == 1000 - MAX_ATTRIBUTES


def test_reserved_fields_are_sent_as_zero_and_ignored_on_receipt():
    """RFC 7296 s3.15: the three RESERVED bytes after CFG Type and the attribute's reserved bit
    are set to zero when sent and ignored when received (strongSwan does not check them either)."""
    attr = struct.pack("!HH", 0x8000 | CfgAttr.INTERNAL_IP4_ADDRESS, 4) + bytes([10, 3, 0, 9])
    dns = struct.pack("!HH", 0x8000 | CfgAttr.INTERNAL_IP4_DNS, 0)
    body = bytes([CfgType.CFG_REQUEST, 0xAB, 0xCD, 0xEF]) + attr + dns
    cp = CpPayload.parse(body)
    assert cp.attributes == [(CfgAttr.INTERNAL_IP4_ADDRESS, bytes([10, 3, 0, 9])), (CfgAttr.INTERNAL_IP4_DNS, b"")]
    got = parse_config(cp)
    assert got.addresses == [ip("10.3.0.9")] and got.wants == {CfgAttr.INTERNAL_IP4_DNS}
    sent = cp.body()
    assert sent[1:4] == bytes(3) and not sent[4] & 0x80 and not sent[12] & 0x80
    # a hand-built attribute type with the bit set still goes out with it cleared
    assert not CpPayload(CfgType.CFG_REPLY, [(0x8000 | CfgAttr.INTERNAL_IP4_DNS, bytes(4))]).body()[4] & 0x80
