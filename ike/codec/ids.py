"""IKE identities (RFC 7296 s3.5) in strongSwan's text syntax.

``192.0.2.1`` / ``2001:db8::1`` -> ID_IPV4_ADDR / ID_IPV6_ADDR, ``@#0a0b`` -> ID_KEY_ID (hex),
``@host.example`` or ``host.example`` -> ID_FQDN, ``user@host`` -> ID_RFC822_ADDR, ``%any`` matches
everything, text with ``=`` -> ID_DER_ASN1_DN written as strongSwan does: RDNs in DER order,
``C=CH, O=strongSwan, CN=moon.strongswan.org``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID, ObjectIdentifier

from ike.codec.constants import IdType

ANY_ID = "%any"  # a configured identity that accepts every peer

# strongSwan's RDN keywords (identification.c x501rdns); the first name of an OID is the one
# printed. Values go out as PrintableString, or UTF8String when not printable, like strongSwan's
# atodn; E and UN are IA5String.
_RDN_NAMES: dict[str, ObjectIdentifier] = {
    "C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME, "L": NameOID.LOCALITY_NAME,
    "STREET": NameOID.STREET_ADDRESS, "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME, "S": NameOID.SURNAME, "serialNumber": NameOID.SERIAL_NUMBER,
    "SN": NameOID.SERIAL_NUMBER, "T": NameOID.TITLE, "D": ObjectIdentifier("2.5.4.13"),
    "N": ObjectIdentifier("2.5.4.41"), "G": NameOID.GIVEN_NAME, "I": NameOID.INITIALS,
    "dnQualifier": NameOID.DN_QUALIFIER, "pseudonym": NameOID.PSEUDONYM, "ID": NameOID.X500_UNIQUE_IDENTIFIER,
    "E": NameOID.EMAIL_ADDRESS, "Email": NameOID.EMAIL_ADDRESS, "emailAddress": NameOID.EMAIL_ADDRESS,
    "UN": NameOID.UNSTRUCTURED_NAME, "unstructuredName": NameOID.UNSTRUCTURED_NAME,
    "DC": NameOID.DOMAIN_COMPONENT, "UID": NameOID.USER_ID, "postalCode": NameOID.POSTAL_CODE,
}
_RDN_KEYWORDS = {name.lower(): oid for name, oid in _RDN_NAMES.items()}
_OID_NAMES: dict[ObjectIdentifier, str] = {}
for _name, _oid in _RDN_NAMES.items():
    _OID_NAMES.setdefault(_oid, _name)
_IA5_OIDS = (NameOID.EMAIL_ADDRESS, NameOID.UNSTRUCTURED_NAME)
_PRINTABLE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?")


def dn_from_text(text: str) -> x509.Name:
    """``C=CH, O=strongSwan, CN=moon`` (or ``/C=CH/O=...``) -> a Name with the RDNs in that order."""
    sep = "/" if text.startswith("/") else ","
    attributes = []
    for part in text.strip(sep).split(sep):
        keyword, eq, value = part.partition("=")
        oid = _RDN_KEYWORDS.get(keyword.strip().lower())
        if not eq or oid is None:
            raise ValueError(f"not a distinguished name part: {part.strip()!r}")
        value = value.strip()
        if oid in _IA5_OIDS:
            kind = _ASN1Type.IA5String
        else:
            kind = _ASN1Type.PrintableString if set(value) <= _PRINTABLE else _ASN1Type.UTF8String
        attributes.append(x509.RelativeDistinguishedName([x509.NameAttribute(oid, value, _type=kind)]))
    if not attributes:
        raise ValueError("an empty distinguished name")
    return x509.Name(attributes)


def dn_to_text(name: x509.Name) -> str:
    """A Name as strongSwan prints it: RDNs in DER order, ``, `` between them."""
    parts = []
    for attribute in name:
        key = _OID_NAMES.get(attribute.oid, attribute.oid.dotted_string)
        value = attribute.value if isinstance(attribute.value, str) else attribute.value.hex()
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def _value_bytes(attribute: x509.NameAttribute) -> bytes:
    value = attribute.value
    return value.encode() if isinstance(value, str) else bytes(value)


def dn_matches(have: x509.Name, want: x509.Name, wildcards: bool = False) -> bool:
    """strongSwan's DN comparison (identification.c compare_dn): the same OIDs in the same order;
    values equal, ignoring case when both are PrintableString (or IA5String e-mail); with
    ``wildcards`` a wanted value ``*`` matches any value of its OID. String types may differ."""
    have_attrs, want_attrs = list(have), list(want)
    if len(have_attrs) != len(want_attrs):
        return False
    for h, w in zip(have_attrs, want_attrs, strict=True):
        if h.oid != w.oid:
            return False
        h_value, w_value = _value_bytes(h), _value_bytes(w)
        if wildcards and w_value == b"*":
            continue
        fold = h._type == w._type and (h._type == _ASN1Type.PrintableString
                                       or (h._type == _ASN1Type.IA5String and h.oid == NameOID.EMAIL_ADDRESS))
        if fold and h_value.lower() != w_value.lower() or not fold and h_value != w_value:
            return False
    return True


@dataclass(frozen=True)
class Identity:
    id_type: int
    data: bytes

    @classmethod
    def parse(cls, text: str) -> Identity:
        if "=" in text:  # strongSwan tries a DN first whenever there is an '='
            return cls(IdType.ID_DER_ASN1_DN, dn_from_text(text).public_bytes())
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            return cls(IdType.ID_IPV4_ADDR if addr.version == 4 else IdType.ID_IPV6_ADDR, addr.packed)
        if text.startswith("@#"):
            return cls(IdType.ID_KEY_ID, bytes.fromhex(text[2:]))
        if text.startswith("@"):
            return cls(IdType.ID_FQDN, text[1:].encode())
        if "@" in text:
            return cls(IdType.ID_RFC822_ADDR, text.encode())
        return cls(IdType.ID_FQDN, text.encode())

    @classmethod
    def of_address(cls, address: str) -> Identity:
        return cls.parse(str(ipaddress.ip_address(address)))

    @classmethod
    def of_name(cls, name: x509.Name) -> Identity:
        """The ID_DER_ASN1_DN of a certificate's subject, its DER as in the certificate."""
        return cls(IdType.ID_DER_ASN1_DN, name.public_bytes())

    def dn(self) -> x509.Name:
        """The distinguished name of an ID_DER_ASN1_DN; ValueError for garbage or another type."""
        if self.id_type != IdType.ID_DER_ASN1_DN:
            raise ValueError("not an ID_DER_ASN1_DN identity")
        return x509.Name.from_bytes(self.data)

    def __str__(self) -> str:
        try:
            if self.id_type == IdType.ID_DER_ASN1_DN:
                return dn_to_text(self.dn())
            if self.id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
                return str(ipaddress.ip_address(self.data))
            if self.id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
                return self.data.decode("ascii", "replace")
            if self.id_type == IdType.ID_KEY_ID:
                return "@#" + self.data.hex()
        except ValueError:
            pass
        return f"{self.id_type}:{self.data.hex()}"


def id_matches(configured: str | None, peer: Identity) -> bool:
    """Whether the peer's identity satisfies a configured one (None or %any accept all)."""
    if configured is None or configured == ANY_ID:
        return True
    try:
        want = Identity.parse(configured)
        if want.id_type == IdType.ID_DER_ASN1_DN and peer.id_type == IdType.ID_DER_ASN1_DN:
            return dn_matches(peer.dn(), want.dn(), wildcards=True)
        return want == peer
    except ValueError:
        return False
