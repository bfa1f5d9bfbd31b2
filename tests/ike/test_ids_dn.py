"""ID_DER_ASN1_DN in ike.codec.ids: strongSwan's text form and its RDN-by-RDN comparison."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from ike.codec.constants import IdType
from ike.codec.ids import Identity, dn_from_text, dn_matches, dn_to_text, id_matches


def test_text_round_trip_in_der_order():
    text = "C=CH, O=strongSwan, OU=Lab, CN=moon.strongswan.org, E=moon@strongswan.org"
    ident = Identity.parse(text)
    assert ident.id_type == IdType.ID_DER_ASN1_DN
    assert str(ident) == text
    first = ident.dn().rdns[0].get_attributes_for_oid(NameOID.COUNTRY_NAME)
    assert first and first[0].value == "CH"  # C comes first in the DER, as written


def test_slash_form_and_spacing():
    assert Identity.parse("/C=CH/O=strongSwan/CN=moon") == Identity.parse("C=CH,O=strongSwan ,  CN=moon")


def test_string_types_like_strongswan():
    name = dn_from_text("C=CH, O=Zürich AG, CN=gw, E=a@b.example")
    kinds = [a._type for a in name]
    assert kinds == [_ASN1Type.PrintableString, _ASN1Type.UTF8String, _ASN1Type.PrintableString, _ASN1Type.IA5String]


@pytest.mark.parametrize("text", ["C=CH, XX=foo", "C=CH, CN", "=foo", "C=CHE, CN=x"])
def test_bad_dns(text):
    with pytest.raises(ValueError):
        Identity.parse(text)


def test_unknown_oid_and_garbage_format():
    odd = x509.Name([x509.NameAttribute(x509.ObjectIdentifier("1.2.3.4"), "v")])
    assert dn_to_text(odd) == "1.2.3.4=v"
    assert str(Identity(IdType.ID_DER_ASN1_DN, b"\x30\x05junk")) == "9:30056a756e6b"


def _name(*attrs):
    return x509.Name([x509.NameAttribute(oid, value, _type=kind) for oid, value, kind in attrs])


def test_comparison_rules():
    printable = _name((NameOID.COUNTRY_NAME, "CH", _ASN1Type.PrintableString),
                      (NameOID.COMMON_NAME, "Moon", _ASN1Type.PrintableString))
    lower = _name((NameOID.COUNTRY_NAME, "ch", _ASN1Type.PrintableString),
                  (NameOID.COMMON_NAME, "moon", _ASN1Type.PrintableString))
    utf8 = _name((NameOID.COUNTRY_NAME, "CH", _ASN1Type.PrintableString),
                 (NameOID.COMMON_NAME, "Moon", _ASN1Type.UTF8String))
    utf8_lower = _name((NameOID.COUNTRY_NAME, "CH", _ASN1Type.PrintableString),
                       (NameOID.COMMON_NAME, "moon", _ASN1Type.UTF8String))
    assert dn_matches(printable, lower)  # PrintableString ignores case
    assert dn_matches(printable, utf8)  # other string type, same bytes
    assert not dn_matches(utf8, utf8_lower)  # UTF8String respects case
    reordered = _name((NameOID.COMMON_NAME, "Moon", _ASN1Type.PrintableString),
                      (NameOID.COUNTRY_NAME, "CH", _ASN1Type.PrintableString))
    assert not dn_matches(printable, reordered)
    wildcard = _name((NameOID.COUNTRY_NAME, "CH", _ASN1Type.PrintableString),
                     (NameOID.COMMON_NAME, "*", _ASN1Type.PrintableString))
    assert dn_matches(printable, wildcard, wildcards=True) and not dn_matches(printable, wildcard)


def test_id_matches_for_dns():
    peer = Identity.parse("C=CH, O=strongSwan, CN=moon")
    assert id_matches("C=CH, O=strongSwan, CN=moon", peer)
    assert id_matches("c=ch, o=STRONGSWAN, cn=MOON", peer)
    assert id_matches("%any", peer) and id_matches(None, peer)
    assert not id_matches("moon", peer)
    assert not id_matches("C=CH, O=strongSwan, CN=sun", peer)
    assert not id_matches("C=CH, O=x", Identity(IdType.ID_DER_ASN1_DN, b"garbage"))


def test_other_id_types_unchanged():
    assert Identity.parse("moon@strongswan.org").id_type == IdType.ID_RFC822_ADDR
    assert Identity.parse("moon.strongswan.org").id_type == IdType.ID_FQDN
    assert Identity.parse("192.0.2.1").id_type == IdType.ID_IPV4_ADDR
