"""What a Configuration payload (RFC 7296 s2.19, s3.15) says: virtual IPs, DNS servers, subnets.

``ike.codec.payloads.CpPayload`` is the wire container (CFG type and raw attributes, lenient so
that any payload re-encodes as it came); this module reads its attributes strictly and builds the
CFG_REQUEST a client sends and the CFG_REPLY a gateway answers with.

RESERVED fields are sent as zero and ignored on receipt (RFC 7296 s3.15): the CFG Type's three
bytes and the attribute type's top bit are dropped by ``CpPayload.parse``.

Every attribute of RFC 7296 s3.15.1 has fixed lengths (0 = "give me one", else the value): a
known attribute with another length makes the payload malformed (``ConfigPayloadError``, answered
with INVALID_SYNTAX as strongSwan does when it parses one). Unknown attributes are kept in
``unknown`` and otherwise ignored. At most ``MAX_ATTRIBUTES`` are read: a peer asking for a
thousand gets an answer to the first ones, and ``dropped`` says how many were left unread (the
caller logs it), so the size of an answer never follows the size of a request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from ike.codec.constants import CfgAttr, CfgType
from ike.codec.payloads import CpPayload

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_ATTRIBUTES = 64  # strongSwan clients send fewer than 10; more is a broken or hostile peer

# allowed value lengths per attribute (RFC 7296 s3.15.1); IP6_ADDRESS and IP6_SUBNET carry a
# prefix length byte after the address
_LENGTHS: dict[int, tuple[int, ...]] = {
    CfgAttr.INTERNAL_IP4_ADDRESS: (0, 4), CfgAttr.INTERNAL_IP4_NETMASK: (0, 4),
    CfgAttr.INTERNAL_IP4_DNS: (0, 4), CfgAttr.INTERNAL_IP4_NBNS: (0, 4), CfgAttr.INTERNAL_IP4_DHCP: (0, 4),
    CfgAttr.INTERNAL_IP6_ADDRESS: (0, 17), CfgAttr.INTERNAL_IP6_DNS: (0, 16),
    CfgAttr.INTERNAL_IP6_DHCP: (0, 16), CfgAttr.INTERNAL_IP4_SUBNET: (0, 8), CfgAttr.INTERNAL_IP6_SUBNET: (0, 17),
}
_ANY: dict[int, IPAddress] = {4: ipaddress.IPv4Address(0), 6: ipaddress.IPv6Address(0)}


class ConfigPayloadError(ValueError):
    """A CP payload whose attributes do not parse (INVALID_SYNTAX)."""


@dataclass
class ConfigAttributes:
    """A CP payload read: for a request, ``addresses`` holds 0.0.0.0/:: for "any" and the
    addresses a client asks for again; ``wants`` the attribute types sent empty."""

    cfg_type: int
    addresses: list[IPAddress] = field(default_factory=list)
    netmask: ipaddress.IPv4Address | None = None
    dns: list[IPAddress] = field(default_factory=list)
    nbns: list[IPAddress] = field(default_factory=list)
    subnets: list[IPNetwork] = field(default_factory=list)
    wants: set[int] = field(default_factory=set)
    unknown: list[tuple[int, bytes]] = field(default_factory=list)
    dropped: int = 0  # attributes past MAX_ATTRIBUTES, not read


def cfg_type_name(cfg_type: int) -> str:
    try:
        return CfgType(cfg_type).name
    except ValueError:
        return str(cfg_type)


def _check_length(attr: int, value: bytes) -> None:
    allowed = _LENGTHS.get(attr)
    if attr == CfgAttr.SUPPORTED_ATTRIBUTES:
        if len(value) % 2:
            raise ConfigPayloadError(f"SUPPORTED_ATTRIBUTES of odd length {len(value)}")
    elif allowed is not None and len(value) not in allowed:
        raise ConfigPayloadError(f"{CfgAttr(attr).name} of {len(value)} bytes (allowed: {allowed})")


def _address(value: bytes) -> IPAddress:
    return ipaddress.ip_address(value[:16] if len(value) >= 16 else value)


def _subnet(attr: int, value: bytes) -> IPNetwork:
    try:
        if attr == CfgAttr.INTERNAL_IP4_SUBNET:
            mask = ipaddress.IPv4Address(value[4:8])
            return ipaddress.IPv4Network(f"{ipaddress.IPv4Address(value[:4])}/{mask}", strict=False)
        if value[16] > 128:
            raise ValueError(f"prefix length {value[16]}")
        return ipaddress.IPv6Network((ipaddress.IPv6Address(value[:16]), value[16]), strict=False)
    except ValueError as exc:
        raise ConfigPayloadError(f"{CfgAttr(attr).name}: {exc}") from None


def parse_config(cp: CpPayload) -> ConfigAttributes:
    """The attributes of ``cp``, checked; ConfigPayloadError when one is malformed."""
    out = ConfigAttributes(cp.cfg_type)
    attrs = cp.attributes
    if len(attrs) > MAX_ATTRIBUTES:
        out.dropped, attrs = len(attrs) - MAX_ATTRIBUTES, attrs[:MAX_ATTRIBUTES]
    for attr, value in attrs:
        attr &= 0x7FFF  # the reserved bit is ignored on receipt (RFC 7296 s3.15.1)
        _check_length(attr, value)
        if attr not in _LENGTHS:
            if attr != CfgAttr.SUPPORTED_ATTRIBUTES and attr != CfgAttr.APPLICATION_VERSION:
                out.unknown.append((attr, value))
            continue
        if attr in (CfgAttr.INTERNAL_IP4_ADDRESS, CfgAttr.INTERNAL_IP6_ADDRESS):
            version = 4 if attr == CfgAttr.INTERNAL_IP4_ADDRESS else 6
            out.addresses.append(_address(value) if value else _ANY[version])
        elif not value:
            out.wants.add(attr)
        elif attr == CfgAttr.INTERNAL_IP4_NETMASK:
            out.netmask = ipaddress.IPv4Address(value)
        elif attr in (CfgAttr.INTERNAL_IP4_DNS, CfgAttr.INTERNAL_IP6_DNS):
            out.dns.append(_address(value))
        elif attr == CfgAttr.INTERNAL_IP4_NBNS:
            out.nbns.append(_address(value))
        elif attr in (CfgAttr.INTERNAL_IP4_SUBNET, CfgAttr.INTERNAL_IP6_SUBNET):
            out.subnets.append(_subnet(attr, value))
    return out


def _address_attribute(address: IPAddress, prefix: int = 64) -> tuple[int, bytes]:
    """INTERNAL_IP4/6_ADDRESS; 0.0.0.0/:: asks for any (an empty value). strongSwan sends an
    IPv6 address with prefix length 64, RFC 7296 says the prefix is informational."""
    if address.version == 4:
        return CfgAttr.INTERNAL_IP4_ADDRESS, b"" if int(address) == 0 else address.packed
    return CfgAttr.INTERNAL_IP6_ADDRESS, b"" if int(address) == 0 else address.packed + bytes([prefix])


def build_request(vips: list[IPAddress]) -> CpPayload:
    """A client's CFG_REQUEST: one address per entry of ``vips`` (any or a wish), and DNS servers
    of the families asked for."""
    attrs = [_address_attribute(v) for v in vips]
    for version, dns in ((4, CfgAttr.INTERNAL_IP4_DNS), (6, CfgAttr.INTERNAL_IP6_DNS)):
        if any(v.version == version for v in vips):
            attrs.append((dns, b""))
    return CpPayload(CfgType.CFG_REQUEST, attrs)


def build_reply(addresses: list[IPAddress], dns: list[IPAddress], subnets: list[IPNetwork],
                nbns: Sequence[IPAddress] = (), netmask: ipaddress.IPv4Address | None = None) -> CpPayload:
    """A gateway's CFG_REPLY: the assigned addresses, the IPv4 netmask (only beside an IPv4
    address, RFC 7296 s3.15.1), then the pool's DNS servers, subnets and NetBIOS name servers."""
    attrs = [_address_attribute(a) for a in addresses]
    if netmask is not None and any(a.version == 4 for a in addresses):
        attrs.append((CfgAttr.INTERNAL_IP4_NETMASK, netmask.packed))
    for server in dns:
        attrs.append((CfgAttr.INTERNAL_IP4_DNS if server.version == 4 else CfgAttr.INTERNAL_IP6_DNS, server.packed))
    for net in subnets:
        if net.version == 4:
            attrs.append((CfgAttr.INTERNAL_IP4_SUBNET, net.network_address.packed + net.netmask.packed))
        else:
            attrs.append((CfgAttr.INTERNAL_IP6_SUBNET, net.network_address.packed + bytes([net.prefixlen])))
    attrs += [(CfgAttr.INTERNAL_IP4_NBNS, server.packed) for server in nbns if server.version == 4]
    return CpPayload(CfgType.CFG_REPLY, attrs)
