"""ike.crypto.certs: loading, chain validation (each failure), identities and CERTREQ choices.

The strongSwan-made fixtures (tests/fixtures/certs, made by strongSwan's pki) cross-check parsing,
DN handling and signatures against an independent implementation; the failure cases build
their PKIs with tunnel.ops.pki (cryptography).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from ike.codec.constants import IdType
from ike.crypto import certs as C
from ike.codec.ids import Identity, id_matches
from tests.ike.certs_helpers import FIXTURES, NOW, cert, crl, fixture
from tunnel.ops import pki

# --- strongSwan-made fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def swan_store():
    return C.TrustStore(cas=[cert("ca.crt")], crls=[crl("ca.crl")])


def test_strongswan_rsa_certificate_validates(swan_store):
    moon = cert("moon.crt")
    chain = C.validate_chain(moon, [], swan_store, NOW)
    assert [c.subject for c in chain] == [moon.subject, cert("ca.crt").subject]


def test_strongswan_ecdsa_der_certificate_validates(swan_store):
    sun = C.parse_certificate(fixture("sun.der"))
    assert len(C.validate_chain(sun, [], swan_store, NOW)) == 2


def test_strongswan_rsa_pss_signed_certificate_validates(swan_store):
    pss = C.parse_certificate(fixture("moon-pss.der"))
    assert pss.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSASSA_PSS
    assert len(C.validate_chain(pss, [], swan_store, NOW)) == 2


def test_strongswan_intermediate_chain_sent_by_peer(swan_store):
    carol, ica = cert("carol.crt"), cert("ica.crt")
    chain = C.validate_chain(carol, [ica], swan_store, NOW)
    assert [c.subject for c in chain] == [carol.subject, ica.subject, cert("ca.crt").subject]


def test_strongswan_intermediate_known_locally():
    store = C.TrustStore(cas=[cert("ca.crt")], intermediates=[cert("ica.crt")])
    assert len(C.validate_chain(cert("carol.crt"), [], store, NOW)) == 3


def test_missing_intermediate_is_untrusted(swan_store):
    with pytest.raises(C.CertificateUntrusted, match="Intermediate CA"):
        C.validate_chain(cert("carol.crt"), [], swan_store, NOW)


def test_strongswan_crl_revokes(swan_store):
    with pytest.raises(C.CertificateRevoked, match="dave.strongswan.org") as exc:
        C.validate_chain(cert("dave.crt"), [], swan_store, NOW)
    assert exc.value.reason == "revoked"


def test_strongswan_dn_text_and_der_agree_with_ours():
    """pki encoded the subject from the same text with strongSwan's atodn: same DER as ours."""
    moon = cert("moon.crt")
    ident = Identity.parse("C=CH, O=strongSwan, CN=moon.strongswan.org")
    assert ident.id_type == IdType.ID_DER_ASN1_DN
    assert ident.data == moon.subject.public_bytes()
    assert str(Identity.of_name(moon.subject)) == "C=CH, O=strongSwan, CN=moon.strongswan.org"
    carol = cert("carol.crt")
    carol_id = Identity.parse("C=CH, O=strongSwan, OU=Research, CN=carol@strongswan.org")
    assert carol_id.data == carol.subject.public_bytes()


def test_strongswan_string_types_in_dns():
    """PrintableString, UTF8String for non-printable text, IA5String for E=: the DER strongSwan's
    atodn wrote from the same text, byte for byte; and printed back as strongSwan prints it."""
    text = "C=CH, ST=Zürich, L=Zürich, O=Lab AG, OU=Ops, CN=gw.example, E=ops@lab.example"
    subject = C.parse_certificate(fixture("dn-types.der")).subject
    assert Identity.parse(text).data == subject.public_bytes()
    assert str(Identity.of_name(subject)) == text


def test_ca_key_hash_is_sha1_of_the_spki():
    ca = cert("ca.crt")
    spki = ca.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA1())
    digest.update(spki)
    assert C.spki_sha1(ca) == digest.finalize()
    store = C.TrustStore(cas=[ca, ca, cert("ica.crt")])
    assert store.ca_key_hashes() == [C.spki_sha1(ca), C.spki_sha1(cert("ica.crt"))]


# --- key loading ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, kind", [("moon.key", rsa.RSAPrivateKey), ("rsa-pkcs1.key.der", rsa.RSAPrivateKey),
                                        ("sun.key", ec.EllipticCurvePrivateKey),
                                        ("ec-sec1.key.der", ec.EllipticCurvePrivateKey),
                                        ("carol.key", ec.EllipticCurvePrivateKey)])
def test_strongswan_private_keys_load(name, kind):
    key = C.load_private_key(FIXTURES / name)
    assert isinstance(key, kind)
    assert (FIXTURES / name).read_bytes().startswith(b"-----BEGIN") == (not name.endswith(".der"))


def _generated_keys():
    return {"rsa": rsa.generate_private_key(65537, 2048), "p256": ec.generate_private_key(ec.SECP256R1()),
            "p384": ec.generate_private_key(ec.SECP384R1()), "p521": ec.generate_private_key(ec.SECP521R1()),
            "ed25519": ed25519.Ed25519PrivateKey.generate()}


KEYS = _generated_keys()
_FORMATS = [(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8),
            (serialization.Encoding.DER, serialization.PrivateFormat.PKCS8),
            (serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL),
            (serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL)]


@pytest.mark.parametrize("kind, encoding, fmt", [
    (kind, encoding, fmt) for kind in KEYS for encoding, fmt in _FORMATS
    if not (kind == "ed25519" and fmt == serialization.PrivateFormat.TraditionalOpenSSL)  # PKCS#8 only
], ids=lambda v: getattr(v, "name", str(v)))
def test_every_key_type_in_every_format(kind, encoding, fmt):
    key = KEYS[kind]
    data = key.private_bytes(encoding, fmt, serialization.NoEncryption())
    loaded = C.parse_private_key(data)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert loaded.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


PASSPHRASE = b"correct horse battery staple"


@pytest.mark.parametrize("encoding, fmt", [_FORMATS[0], _FORMATS[1], _FORMATS[2]])
def test_encrypted_keys(encoding, fmt):
    key = KEYS["p256"]
    data = key.private_bytes(encoding, fmt, serialization.BestAvailableEncryption(PASSPHRASE))
    assert isinstance(C.parse_private_key(data, PASSPHRASE), ec.EllipticCurvePrivateKey)
    with pytest.raises(C.KeyFileError, match="passphrase"):
        C.parse_private_key(data)
    with pytest.raises(C.KeyFileError) as exc:
        C.parse_private_key(data, b"wrong")
    assert "wrong" not in str(exc.value).replace("wrong passphrase", "")


def test_passphrase_for_a_plain_key_is_reported():
    data = KEYS["p256"].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    with pytest.raises(C.KeyFileError, match="not encrypted"):
        C.parse_private_key(data, PASSPHRASE)


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                                  b"\x30\x82\x01\x00" + b"\x00" * 40])
def test_garbage_keys(data):
    with pytest.raises(C.KeyFileError, match="not a private key"):
        C.parse_private_key(data)


def test_unsupported_keys():
    dsa_key = dsa.generate_private_key(2048)
    with pytest.raises(C.UnsupportedKey, match="DSA"):
        C.parse_private_key(dsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    small = rsa.generate_private_key(65537, 1024)
    with pytest.raises(C.UnsupportedKey, match="1024"):
        C.parse_private_key(small.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    k1 = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(C.UnsupportedKey, match="secp256k1"):
        C.parse_private_key(k1.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))


def test_world_readable_key_file_draws_a_warning(tmp_path):
    path = tmp_path / "gw.key"
    path.write_bytes(KEYS["p256"].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    path.chmod(0o644)
    with structlog.testing.capture_logs() as logs:
        C.load_private_key(path)
    assert [e["event"] for e in logs] == ["key_file_permissions"]
    assert "0644" in logs[0]["problem"] and logs[0]["log_level"] == "warning"
    assert C.key_file_warning(path)
    path.chmod(0o600)
    with structlog.testing.capture_logs() as logs:
        C.load_private_key(path)
    assert logs == [] and C.key_file_warning(path) is None


def test_missing_files_are_one_clear_error(tmp_path):
    with pytest.raises(C.CertError, match="cannot read private key .*nope.key"):
        C.load_private_key(tmp_path / "nope.key")
    with pytest.raises(C.CertError, match="cannot read certificate"):
        C.load_certificate(tmp_path / "nope.crt")


def test_ca_folder_like_swanctl_x509ca(tmp_path):
    (tmp_path / "a.pem").write_bytes(fixture("ca.crt"))
    (tmp_path / "b.der").write_bytes(cert("ica.crt").public_bytes(serialization.Encoding.DER))
    cas = C.load_certificates([tmp_path])
    assert [c.subject for c in cas] == [cert("ca.crt").subject, cert("ica.crt").subject]
    (tmp_path / "c.pem").write_bytes(b"not a certificate")
    with pytest.raises(C.CertificateGarbage, match="c.pem"):
        C.load_certificates([tmp_path])


def test_crl_loading(tmp_path):
    (tmp_path / "ca.crl").write_bytes(fixture("ca.crl"))
    assert len(C.load_crls([tmp_path])) == 1
    (tmp_path / "junk.crl").write_bytes(b"\x30\x03\x01\x01\xff")
    with pytest.raises(C.CertificateGarbage, match="junk.crl"):
        C.load_crls([tmp_path / "junk.crl"])


@pytest.mark.parametrize("data", [b"", b"\x30", b"\x30\x03\x02\x01\x00", b"-----BEGIN CERTIFICATE-----\nx\n",
                                  os.urandom(300)])
def test_garbage_certificate(data):
    with pytest.raises(C.CertificateGarbage) as exc:
        C.parse_certificate(data)
    assert exc.value.reason == "garbage"


# --- secrets --------------------------------------------------------------------------------

def test_private_key_never_in_repr_str_or_errors(tmp_path):
    key = KEYS["rsa"]
    numbers = key.private_numbers()
    secrets = [format(numbers.d, "x"), format(numbers.p, "x"), str(numbers.d)[:40], PASSPHRASE.decode()]
    own, _ = pki.issue(*pki.make_ca("CN=Secret CA", NOW), "CN=gw", NOW, key=key)
    cred = C.LocalCredential(own, key)
    texts = [repr(cred), str(cred), repr(key)]
    enc = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(PASSPHRASE))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    for attempt in (lambda: C.parse_private_key(enc, b"wrong " + PASSPHRASE),
                    lambda: C.parse_private_key(enc),
                    lambda: C.parse_private_key(pem, PASSPHRASE),
                    lambda: C.parse_private_key(pem[:-200]),
                    lambda: C.LocalCredential(own, KEYS["p256"])):
        with pytest.raises(C.CertError) as exc:
            attempt()
        texts += [str(exc.value), repr(exc.value)]
    blob = "\n".join(texts)
    body = "".join(pem.decode().splitlines()[1:-1])
    for secret in secrets + [body[40:80]]:
        assert secret not in blob


def test_local_credential_checks_key_and_gives_subject_identity():
    ca_cert, ca_key = pki.make_ca("C=CH, O=Lab, CN=Lab CA", NOW)
    own, key = pki.issue(ca_cert, ca_key, "C=CH, O=Lab, CN=gw1.lab", NOW)
    cred = C.LocalCredential(own, key)
    assert str(cred.identity) == "C=CH, O=Lab, CN=gw1.lab"
    assert cred.identity.id_type == IdType.ID_DER_ASN1_DN
    with pytest.raises(C.KeyFileError, match="does not belong"):
        C.LocalCredential(own, KEYS["p256"])


# --- chain failures (PKIs made with cryptography) -------------------------------------------

class Lab:
    def __init__(self):
        self.ca, self.ca_key = pki.make_ca("C=CH, O=Lab, CN=Lab Root", NOW - timedelta(days=30))
        self.ica, self.ica_key = pki.make_intermediate(self.ca, self.ca_key, "C=CH, O=Lab, CN=Lab Intermediate",
                                                       NOW - timedelta(days=30))
        self.store = C.TrustStore(cas=[self.ca])

    def leaf(self, issuer=None, key=None, when=None, days=365, sans=("gw1.lab",), **kw):
        issuer_cert, issuer_key = issuer or (self.ca, self.ca_key)
        return pki.issue(issuer_cert, issuer_key, "C=CH, O=Lab, CN=gw1.lab", when or NOW - timedelta(days=1), sans,
                         days=days, key=key, **kw)[0]


@pytest.fixture(scope="module")
def lab():
    return Lab()


def _raw_leaf(lab, builder_changes, sign_key=None, issuer_name=None, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(pki.parse_name("CN=gw1.lab"))
               .issuer_name(issuer_name or lab.ca.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=1))
               .not_valid_after(NOW + timedelta(days=1)))
    for change in builder_changes:
        builder = change(builder)
    return builder.sign(sign_key or lab.ca_key, hashes.SHA256())


def test_valid_direct_and_intermediate(lab):
    assert len(C.validate_chain(lab.leaf(), [], lab.store, NOW)) == 2
    leaf = lab.leaf(issuer=(lab.ica, lab.ica_key))
    assert len(C.validate_chain(leaf, [lab.ica], lab.store, NOW)) == 3


def test_expired(lab):
    leaf = lab.leaf(when=NOW - timedelta(days=20), days=10)
    with pytest.raises(C.CertificateExpired, match="expired at") as exc:
        C.validate_chain(leaf, [], lab.store, NOW)
    assert exc.value.reason == "expired"


def test_not_yet_valid(lab):
    leaf = lab.leaf(when=NOW + timedelta(days=2))
    with pytest.raises(C.CertificateNotYetValid, match="not valid before"):
        C.validate_chain(leaf, [], lab.store, NOW)


def test_naive_clock_is_refused(lab):
    with pytest.raises(ValueError, match="timezone-aware"):
        C.validate_chain(lab.leaf(), [], lab.store, NOW.replace(tzinfo=None))


def test_validity_uses_the_injected_clock_only(lab):
    leaf = lab.leaf(days=10)
    C.validate_chain(leaf, [], lab.store, NOW)
    with pytest.raises(C.CertificateExpired):
        C.validate_chain(leaf, [], lab.store, NOW + timedelta(days=11))


def test_expired_intermediate(lab):
    ica, ica_key = pki.make_intermediate(lab.ca, lab.ca_key, "CN=Old Intermediate", NOW - timedelta(days=30), days=10)
    leaf = lab.leaf(issuer=(ica, ica_key), when=NOW - timedelta(days=25), days=100)
    with pytest.raises(C.CertificateExpired, match="Old Intermediate"):
        C.validate_chain(leaf, [ica], lab.store, NOW)


def test_untrusted(lab):
    other_ca, other_key = pki.make_ca("C=CH, O=Other, CN=Other CA", NOW - timedelta(days=1))
    leaf = lab.leaf(issuer=(other_ca, other_key))
    with pytest.raises(C.CertificateUntrusted, match="self-signed .*Other CA.* not a configured CA") as exc:
        C.validate_chain(leaf, [other_ca], lab.store, NOW)  # sending the CA along does not make it trusted
    assert exc.value.reason == "untrusted"
    with pytest.raises(C.CertificateUntrusted):
        C.validate_chain(leaf, [], C.TrustStore(), NOW)


def test_bad_signature_same_issuer_name(lab):
    impostor_key = ec.generate_private_key(ec.SECP256R1())
    forged = _raw_leaf(lab, [], sign_key=impostor_key)
    with pytest.raises(C.BadCertificateSignature, match="does not verify") as exc:
        C.validate_chain(forged, [], lab.store, NOW)
    assert exc.value.reason == "bad-signature"


def test_tampered_certificate_bytes(lab):
    der = bytearray(lab.leaf().public_bytes(serialization.Encoding.DER))
    index = der.find(b"gw1.lab")
    der[index] ^= 0x01  # the subject changes, the signature no longer covers it
    with pytest.raises(C.BadCertificateSignature):
        C.validate_chain(C.parse_certificate(bytes(der)), [], lab.store, NOW)


def test_revoked_by_our_crl_and_crl_signature_checked(lab):
    leaf = lab.leaf(serial=0x1234)
    revoking = pki.make_crl(lab.ca, lab.ca_key, [0x1234], NOW - timedelta(hours=1))
    store = C.TrustStore(cas=[lab.ca], crls=[revoking])
    with pytest.raises(C.CertificateRevoked, match="serial 1234"):
        C.validate_chain(leaf, [], store, NOW)
    # a CRL under the same name signed by another key is ignored (and logged)
    forger_ca, forger_key = pki.make_ca("C=CH, O=Lab, CN=Lab Root", NOW)
    forged = pki.make_crl(forger_ca, forger_key, [0x1234], NOW - timedelta(hours=1))
    with structlog.testing.capture_logs() as logs:
        assert len(C.validate_chain(leaf, [], C.TrustStore(cas=[lab.ca], crls=[forged]), NOW)) == 2
    assert [e["event"] for e in logs] == ["crl_signature_invalid"]
    # a CRL of another CA does not revoke our serial
    assert C.validate_chain(leaf, [], C.TrustStore(cas=[lab.ca], crls=[crl("ca.crl")]), NOW)


def test_revoked_intermediate(lab):
    ica, ica_key = pki.make_intermediate(lab.ca, lab.ca_key, "CN=Revoked Intermediate", NOW - timedelta(days=1))
    leaf = lab.leaf(issuer=(ica, ica_key))
    store = C.TrustStore(cas=[lab.ca], crls=[pki.make_crl(lab.ca, lab.ca_key, [ica.serial_number], NOW)])
    with pytest.raises(C.CertificateRevoked, match="Revoked Intermediate"):
        C.validate_chain(leaf, [ica], store, NOW + timedelta(minutes=1))


def test_unsupported_end_entity_key(lab):
    small = rsa.generate_private_key(65537, 1024)
    leaf = _raw_leaf(lab, [], key=small)
    with pytest.raises(C.UnsupportedKey, match="1024") as exc:
        C.validate_chain(leaf, [], lab.store, NOW)
    assert exc.value.reason == "unsupported-key"


def test_issuer_that_is_not_a_ca(lab):
    not_ca_leaf, not_ca_key = pki.issue(lab.ca, lab.ca_key, "CN=Just A Gateway", NOW - timedelta(days=1))
    leaf = lab.leaf(issuer=(not_ca_leaf, not_ca_key))
    with pytest.raises(C.ConstraintViolation, match="not a CA"):
        C.validate_chain(leaf, [not_ca_leaf], lab.store, NOW)


def test_path_length(lab):
    # the root allows no intermediate below it
    root, root_key = pki.make_ca("CN=Strict Root", NOW - timedelta(days=1), path_length=0)
    ica, ica_key = pki.make_intermediate(root, root_key, "CN=Sub", NOW - timedelta(days=1))
    leaf = lab.leaf(issuer=(ica, ica_key))
    with pytest.raises(C.ConstraintViolation, match="allows 0 intermediate"):
        C.validate_chain(leaf, [ica], C.TrustStore(cas=[root]), NOW)
    # an intermediate with path length 0 cannot have another intermediate below it
    sub, sub_key = pki.make_intermediate(lab.ica, lab.ica_key, "CN=Sub Sub", NOW - timedelta(days=1))
    leaf = lab.leaf(issuer=(sub, sub_key))
    with pytest.raises(C.ConstraintViolation, match="Lab Intermediate.*allows 0"):
        C.validate_chain(leaf, [sub, lab.ica], lab.store, NOW)


def test_end_entity_key_usage_needs_digital_signature(lab):
    usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=True,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    leaf = _raw_leaf(lab, [lambda b: b.add_extension(usage, critical=True)])
    with pytest.raises(C.ConstraintViolation, match="digitalSignature"):
        C.validate_chain(leaf, [], lab.store, NOW)
    no_usage = _raw_leaf(lab, [])  # no keyUsage at all is fine
    assert C.validate_chain(no_usage, [], lab.store, NOW)


def test_ca_key_usage_needs_key_cert_sign(lab):
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=True,
                          encipher_only=False, decipher_only=False)
    name = pki.parse_name("CN=No Cert Sign CA")
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(1).not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(usage, critical=True).sign(key, hashes.SHA256()))
    leaf = lab.leaf(issuer=(ca, key))
    with pytest.raises(C.ConstraintViolation, match="keyCertSign"):
        C.validate_chain(leaf, [], C.TrustStore(cas=[ca]), NOW)


def test_trust_anchor_itself_expired(lab):
    old_root, old_key = pki.make_ca("CN=Old Root", NOW - timedelta(days=30), days=10)
    leaf = lab.leaf(issuer=(old_root, old_key), when=NOW - timedelta(days=25), days=100)
    with pytest.raises(C.CertificateExpired, match="Old Root"):
        C.validate_chain(leaf, [], C.TrustStore(cas=[old_root]), NOW)


def test_every_key_type_validates(lab):
    for key_type in ("rsa2048", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "ed25519"):
        root, root_key = pki.make_ca(f"CN={key_type} root", NOW - timedelta(days=1), key_type=key_type)
        leaf, _ = pki.issue(root, root_key, "CN=gw", NOW - timedelta(days=1), key_type=key_type)
        assert len(C.validate_chain(leaf, [], C.TrustStore(cas=[root]), NOW)) == 2, key_type


def test_chain_loop_terminates(lab):
    """Two intermediates that name each other as issuer: untrusted, not a hang."""
    key_a, key_b = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    name_a, name_b = pki.parse_name("CN=A"), pki.parse_name("CN=B")

    def ca(subject, issuer, key, signer):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=1))
                .not_valid_after(NOW + timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(signer, hashes.SHA256()))
    a, b = ca(name_a, name_b, key_a, key_b), ca(name_b, name_a, key_b, key_a)
    leaf = lab.leaf(issuer=(a, key_a))
    with pytest.raises(C.CertificateUntrusted):
        C.validate_chain(leaf, [a, b], lab.store, NOW)


# --- identities -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gw(lab):
    return lab.leaf(sans=("gw1.lab", "GW1.example.org", "admin@lab.example", "192.0.2.1", "2001:db8::1"))


@pytest.mark.parametrize("text", ["C=CH, O=Lab, CN=gw1.lab", "c=ch, o=lab, cn=GW1.LAB", "gw1.lab", "@gw1.example.org",
                                  "admin@lab.example", "ADMIN@LAB.EXAMPLE", "192.0.2.1", "2001:db8::1"])
def test_identity_in_certificate(gw, text):
    C.check_identity(gw, Identity.parse(text))


@pytest.mark.parametrize("text", ["C=CH, O=Lab, CN=gw2.lab", "O=Lab, C=CH, CN=gw1.lab", "C=CH, O=Lab", "gw2.lab",
                                  "other@lab.example", "192.0.2.2", "2001:db8::2", "@#0102"])
def test_identity_not_in_certificate(gw, text):
    with pytest.raises(C.IdentityMismatch, match="not in") as exc:
        C.check_identity(gw, Identity.parse(text))
    assert exc.value.reason == "identity"


def test_certificate_identities_lists_subject_then_sans(gw):
    ids = C.certificate_identities(gw)
    assert [i.id_type for i in ids] == [IdType.ID_DER_ASN1_DN, IdType.ID_FQDN, IdType.ID_FQDN, IdType.ID_RFC822_ADDR,
                                        IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR]


def test_strongswan_certificate_identities():
    moon = cert("moon.crt")
    for text in ("moon.strongswan.org", "192.0.2.1", "moon@strongswan.org",
                 "C=CH, O=strongSwan, CN=moon.strongswan.org"):
        assert C.certificate_has_identity(moon, Identity.parse(text)), text
    assert not C.certificate_has_identity(moon, Identity.parse("sun.strongswan.org"))


def test_garbage_dn_identity_does_not_match(gw):
    assert not C.certificate_has_identity(gw, Identity(IdType.ID_DER_ASN1_DN, b"\x30\x05junk"))


def test_configured_wildcard_dn_matches_peer():
    peer = Identity.parse("C=CH, O=strongSwan, CN=moon.strongswan.org")
    assert id_matches("C=CH, O=strongSwan, CN=*", peer)
    assert not id_matches("C=CH, O=Other, CN=*", peer)
    assert not id_matches("C=CH, CN=*", peer)


# --- CERTREQ --------------------------------------------------------------------------------

def test_chain_to_send_follows_certreq(lab):
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = lab.leaf(issuer=(lab.ica, lab.ica_key), key=key)
    cred = C.LocalCredential(leaf, key, (lab.ica,))
    assert C.chain_to_send(cred, []) == [leaf, lab.ica]
    assert C.chain_to_send(cred, [C.spki_sha1(lab.ica)]) == [leaf]
    assert C.chain_to_send(cred, [b"\x00" * 20, C.spki_sha1(lab.ca)], known_cas=[lab.ca]) == [leaf, lab.ica]
    assert C.chain_to_send(cred, [b"\x00" * 20]) == [leaf, lab.ica]  # nothing matches: everything we have


def test_chain_to_send_drops_unrelated_intermediates(lab):
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = lab.leaf(key=key)
    other_ca, _ = pki.make_ca("CN=Unrelated", NOW)
    cred = C.LocalCredential(leaf, key, (other_ca, lab.ica))
    assert C.chain_to_send(cred, []) == [leaf]
    assert C.chain_to_send(cred, [C.spki_sha1(lab.ca)], known_cas=[lab.ca]) == [leaf]


# --- the peer's CERT payloads -----------------------------------------------------------------

def test_validate_peer_from_cert_payload_bytes():
    der = [cert("carol.crt").public_bytes(serialization.Encoding.DER),
           cert("ica.crt").public_bytes(serialization.Encoding.DER)]
    store = C.TrustStore(cas=[cert("ca.crt")])
    carol = Identity.parse("carol@strongswan.org")
    assert len(C.validate_peer(der, store, NOW, carol)) == 3
    with pytest.raises(C.IdentityMismatch):
        C.validate_peer(der, store, NOW, Identity.parse("moon.strongswan.org"))
    with pytest.raises(C.CertificateGarbage, match="CERT payload 2"):
        C.validate_peer([der[0], b"\x30\x00"], store, NOW)
    with pytest.raises(C.CertificateUntrusted, match="no certificate"):
        C.validate_peer([], store, NOW)
