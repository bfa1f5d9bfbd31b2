"""X.509 certificates for IKEv2 authentication (RFC 7296 s2.15, s3.6-3.7; RFC 4945 as strongSwan
uses it): parsing, loading, chain validation, identity matching and CERTREQ authorities.

Everything is ``cryptography.x509``; no ASN.1 or signature code of our own. Validation is sans-I/O:
it takes parsed certificates and CRLs and an injected ``now``. Only the ``load_*`` functions read
files (called by the config layer with configured paths).

The chain is built here, link by link with ``verify_directly_issued_by``, rather than with
``cryptography.x509.verification``: that API enforces the Web PKI (RFC 5280 as profiled by the CA/B
Forum): its algorithm list has no Ed25519 and no P-521, it wants v3 certificates with
positive serials of at most 20 bytes and RSA keys of 2048 bits or more, has no CRL support, and
reports failures as free text, while IKE gateways (and strongSwan's ``pki``) issue certificates
outside that profile and an operator needs to know which certificate failed and why.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import ClassVar

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtensionOID

from ike.codec.constants import IdType
from ike.codec.ids import Identity, dn_matches, dn_to_text

log = structlog.get_logger("ike.certs")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
SUPPORTED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
MAX_CHAIN_LENGTH = 8  # end entity + intermediates + trust anchor; strongSwan's default is 7 links
_ADDRESSES = (ipaddress.IPv4Address, ipaddress.IPv6Address)  # an IPAddress SAN may also be a network


# --- errors -----------------------------------------------------------------------------------

class CertError(Exception):
    """A certificate, key or CRL problem; ``reason`` is a short stable word for logs and tests."""

    reason: ClassVar[str] = "certificate"


class CertificateGarbage(CertError):
    reason = "garbage"


class CertificateExpired(CertError):
    reason = "expired"


class CertificateNotYetValid(CertError):
    reason = "not-yet-valid"


class CertificateUntrusted(CertError):
    reason = "untrusted"


class CertificateRevoked(CertError):
    reason = "revoked"


class BadCertificateSignature(CertError):
    reason = "bad-signature"


class UnsupportedKey(CertError):
    reason = "unsupported-key"


class ConstraintViolation(CertError):
    """Basic constraints, path length or key usage forbid the certificate's role in the chain."""

    reason = "constraint"


class IdentityMismatch(CertError):
    reason = "identity"


class KeyFileError(CertError):
    reason = "key-file"


def describe(cert: x509.Certificate) -> str:
    """How an operator recognises a certificate: subject and serial."""
    return f'"{dn_to_text(cert.subject)}" (serial {cert.serial_number:x})'


# --- parsing (bytes in) -----------------------------------------------------------------------

def parse_certificate(data: bytes) -> x509.Certificate:
    """One certificate, PEM or DER."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise CertificateGarbage("not an X.509 certificate (PEM or DER)") from None


def parse_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, or the one of a DER file."""
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise CertificateGarbage("not a PEM certificate bundle") from None
        return certs
    return [parse_certificate(data)]


def parse_crl(data: bytes) -> x509.CertificateRevocationList:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise CertificateGarbage("not an X.509 CRL (PEM or DER)") from None


def check_public_key(key: object) -> PublicKey:
    """The key types IKE signs with here: RSA (2048 bits or more), ECDSA P-256/384/521, Ed25519."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise UnsupportedKey(f"RSA key of {key.key_size} bits (2048 or more are accepted)")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, SUPPORTED_CURVES):
            raise UnsupportedKey(f"ECDSA curve {key.curve.name} (P-256, P-384 and P-521 are supported)")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise UnsupportedKey(f"{type(key).__name__.removesuffix('PublicKey') or 'unknown'} keys are not supported")


def certificate_public_key(cert: x509.Certificate) -> PublicKey:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise UnsupportedKey(f"the public key of {describe(cert)} cannot be read") from None
    return check_public_key(key)


def parse_private_key(data: bytes, passphrase: bytes | None = None) -> PrivateKey:
    """A private key in PEM or DER: PKCS#1 (RSA), SEC1 (EC), PKCS#8, encrypted with ``passphrase``.

    Errors never include the key material or the passphrase.
    """
    pem = data.lstrip().startswith(b"-----BEGIN")
    loader = serialization.load_pem_private_key if pem else serialization.load_der_private_key
    try:
        key = loader(data, password=passphrase)
    except TypeError:
        # cryptography: a passphrase for a plain key, or none for an encrypted one
        if passphrase is None:
            raise KeyFileError("the private key is encrypted: a passphrase is needed") from None
        raise KeyFileError("the private key is not encrypted, but a passphrase was given") from None
    except UnsupportedAlgorithm:
        raise UnsupportedKey("the private key's algorithm or encryption is not supported") from None
    except ValueError:
        if passphrase is not None and (b"ENCRYPTED" in data[:64] or not pem):
            raise KeyFileError("the private key does not decrypt: wrong passphrase, or not a key") from None
        raise KeyFileError("not a private key (PEM or DER: PKCS#1, SEC1 or PKCS#8)") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise UnsupportedKey(f"{type(key).__name__.removesuffix('PrivateKey')} private keys are not supported")
    check_public_key(key.public_key())
    return key


# --- loading (files) --------------------------------------------------------------------------

def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CertError(f"cannot read {what} {os.fspath(path)}: {exc.strerror}") from None


def key_file_warning(path: str | os.PathLike[str]) -> str | None:
    """Why a private key file's permissions are unsafe (readable or writable by group or others)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (f"private key file {os.fspath(path)} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")
    return None


def load_private_key(path: str | os.PathLike[str], passphrase: bytes | None = None) -> PrivateKey:
    """Read a private key file; warns (structlog) when others may read it."""
    warning = key_file_warning(path)
    if warning:
        log.warning("key_file_permissions", path=os.fspath(path), problem=warning)
    try:
        return parse_private_key(_read(path, "private key"), passphrase)
    except CertError as exc:
        raise type(exc)(f"{os.fspath(path)}: {exc}") from None


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    try:
        return parse_certificate(_read(path, "certificate"))
    except CertError as exc:
        raise type(exc)(f"{os.fspath(path)}: {exc}") from None


def load_certificates(paths: Iterable[str | os.PathLike[str]]) -> list[x509.Certificate]:
    """Certificates from files (PEM bundles or DER) and folders (every file in them, like
    swanctl's x509ca/), in a stable order."""
    certs: list[x509.Certificate] = []
    for path in paths:
        files = sorted(p for p in Path(path).iterdir() if p.is_file()) if Path(path).is_dir() else [Path(path)]
        for file in files:
            try:
                certs.extend(parse_certificates(_read(file, "certificate")))
            except CertError as exc:
                raise type(exc)(f"{file}: {exc}") from None
    return certs


def load_crls(paths: Iterable[str | os.PathLike[str]]) -> list[x509.CertificateRevocationList]:
    crls = []
    for path in paths:
        files = sorted(p for p in Path(path).iterdir() if p.is_file()) if Path(path).is_dir() else [Path(path)]
        for file in files:
            try:
                crls.append(parse_crl(_read(file, "CRL")))
            except CertError as exc:
                raise type(exc)(f"{file}: {exc}") from None
    return crls


# --- local credential -------------------------------------------------------------------------

@dataclass(frozen=True)
class LocalCredential:
    """Our certificate, its private key and the intermediates to send with it."""

    certificate: x509.Certificate
    key: PrivateKey = field(repr=False)
    intermediates: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        own = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        if own != spki_der(self.certificate):
            raise KeyFileError(f"the private key does not belong to the certificate {describe(self.certificate)}")

    @property
    def identity(self) -> Identity:
        """The default local id: the certificate's subject DN."""
        return Identity.of_name(self.certificate.subject)

    def __repr__(self) -> str:
        return f"LocalCredential({describe(self.certificate)}, {len(self.intermediates)} intermediates)"


# --- trust and validation ---------------------------------------------------------------------

def spki_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def spki_sha1(cert: x509.Certificate) -> bytes:
    """SHA-1 of the SubjectPublicKeyInfo: how CERTREQ names a CA (RFC 7296 s3.7)."""
    return hashlib.sha1(spki_der(cert)).digest()


@dataclass
class TrustStore:
    """Configured trust anchors, locally known intermediates and CRLs."""

    cas: list[x509.Certificate] = field(default_factory=list)
    intermediates: list[x509.Certificate] = field(default_factory=list)
    crls: list[x509.CertificateRevocationList] = field(default_factory=list)

    def ca_key_hashes(self) -> list[bytes]:
        """The CERTREQ authorities we send: every trusted CA's SPKI SHA-1, without repeats."""
        return list(dict.fromkeys(spki_sha1(ca) for ca in self.cas))


def _check_validity(cert: x509.Certificate, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateNotYetValid(f"{describe(cert)} is not valid before "
                                     f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    if now > cert.not_valid_after_utc:
        raise CertificateExpired(f"{describe(cert)} expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:
        raise CertificateGarbage(f"{describe(cert)} has a malformed extension") from None


def _check_end_entity(cert: x509.Certificate) -> None:
    usage = _extension(cert, ExtensionOID.KEY_USAGE)
    if isinstance(usage, x509.KeyUsage) and not usage.digital_signature:
        raise ConstraintViolation(f"{describe(cert)} has a key usage without digitalSignature")


def _check_ca(cert: x509.Certificate, below: int) -> None:
    """``below``: how many CA certificates (intermediates) sit below this one in the chain."""
    constraints = _extension(cert, ExtensionOID.BASIC_CONSTRAINTS)
    if not isinstance(constraints, x509.BasicConstraints) or not constraints.ca:
        raise ConstraintViolation(f"{describe(cert)} issued a certificate but is not a CA (basicConstraints)")
    if constraints.path_length is not None and below > constraints.path_length:
        raise ConstraintViolation(f"{describe(cert)} allows {constraints.path_length} intermediate CAs below it, "
                                  f"the chain has {below}")
    usage = _extension(cert, ExtensionOID.KEY_USAGE)
    if isinstance(usage, x509.KeyUsage) and not usage.key_cert_sign:
        raise ConstraintViolation(f"{describe(cert)} has a key usage without keyCertSign")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed ``cert``; False for a name mismatch, BadCertificateSignature for a
    matching name with a signature that does not verify."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        raise BadCertificateSignature(f"the signature of {describe(cert)} does not verify with the key of "
                                      f"{describe(issuer)}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise BadCertificateSignature(f"the signature of {describe(cert)} uses an unsupported algorithm") from None
    return True


def _check_revocation(cert: x509.Certificate, issuer: x509.Certificate,
                      crls: Sequence[x509.CertificateRevocationList], now: datetime) -> None:
    """strongSwan's default (revocation=relaxed): only a CRL that says revoked fails the chain; a
    CRL counts only when its issuer's key signed it."""
    for crl in crls:
        if crl.issuer != issuer.subject:
            continue
        try:
            genuine = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
        except (TypeError, ValueError, UnsupportedAlgorithm):
            genuine = False
        if not genuine:
            log.warning("crl_signature_invalid", issuer=dn_to_text(crl.issuer))
            continue
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None and entry.revocation_date_utc <= now:
            raise CertificateRevoked(f"{describe(cert)} was revoked on {entry.revocation_date_utc:%Y-%m-%d} "
                                     f"(CRL of {dn_to_text(crl.issuer)})")


def validate_chain(end_entity: x509.Certificate, sent: Sequence[x509.Certificate], store: TrustStore,
                   now: datetime) -> list[x509.Certificate]:
    """Check ``end_entity`` up to a trusted CA, through the intermediates the peer ``sent`` and the
    locally known ones. Returns the chain: end entity first, trust anchor last.

    Checks each link's signature, every certificate's validity at ``now`` (timezone-aware), CA
    basic constraints and path lengths, key usage where present (digitalSignature for the end
    entity, keyCertSign for CAs), CRLs of each issuer, and that the end entity's key is one we
    verify AUTH with. Raises a CertError subclass naming the certificate and the reason.
    """
    if now.tzinfo is None:
        raise ValueError("validate_chain needs a timezone-aware now (UTC)")
    certificate_public_key(end_entity)
    _check_end_entity(end_entity)
    _check_validity(end_entity, now)
    chain = [end_entity]
    candidates = list(sent) + list(store.intermediates)
    while len(chain) < MAX_CHAIN_LENGTH:
        current = chain[-1]
        bad_signature: BadCertificateSignature | None = None
        for anchor in store.cas:
            try:
                if _issued_by(current, anchor):
                    _check_ca(anchor, below=len(chain) - 1)
                    _check_validity(anchor, now)
                    _check_revocation(current, anchor, store.crls, now)
                    if current is not end_entity or anchor.public_bytes(serialization.Encoding.DER) != \
                            current.public_bytes(serialization.Encoding.DER):
                        chain.append(anchor)
                    return chain
            except BadCertificateSignature as exc:
                bad_signature = exc
        for issuer in candidates:
            if any(issuer.public_bytes(serialization.Encoding.DER) == c.public_bytes(serialization.Encoding.DER)
                   for c in chain):
                continue
            try:
                if _issued_by(current, issuer):
                    break
            except BadCertificateSignature as exc:
                bad_signature = exc
        else:
            if bad_signature is not None:
                raise bad_signature
            if current.issuer == current.subject:
                raise CertificateUntrusted(f"no chain from {describe(end_entity)} to a configured CA: it ends at "
                                           f"the self-signed {describe(current)}, which is not a configured CA")
            raise CertificateUntrusted(f"no chain from {describe(end_entity)} to a configured CA: nothing "
                                       f'known issued "{dn_to_text(current.issuer)}"')
        _check_ca(issuer, below=len(chain) - 1)
        _check_validity(issuer, now)
        _check_revocation(current, issuer, store.crls, now)
        chain.append(issuer)
    raise CertificateUntrusted(f"no chain from {describe(end_entity)} to a configured CA within "
                               f"{MAX_CHAIN_LENGTH} certificates")


# --- identities -------------------------------------------------------------------------------

def certificate_identities(cert: x509.Certificate) -> list[Identity]:
    """What a certificate vouches for: its subject DN, then its subjectAltNames of the kinds IKE
    ids have (DNS name, e-mail, IPv4/IPv6 address)."""
    ids = [Identity.of_name(cert.subject)]
    san = _extension(cert, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    if isinstance(san, x509.SubjectAlternativeName):
        for name in san:
            if isinstance(name, x509.DNSName):
                ids.append(Identity(IdType.ID_FQDN, name.value.encode()))
            elif isinstance(name, x509.RFC822Name):
                ids.append(Identity(IdType.ID_RFC822_ADDR, name.value.encode()))
            elif isinstance(name, x509.IPAddress) and isinstance(name.value, _ADDRESSES):
                ids.append(Identity(IdType.ID_IPV4_ADDR if name.value.version == 4 else IdType.ID_IPV6_ADDR,
                                    name.value.packed))
    return ids


def certificate_has_identity(cert: x509.Certificate, ident: Identity) -> bool:
    """strongSwan's has_subject: DNs compared RDN by RDN, DNS names and e-mail ignoring case,
    addresses byte for byte."""
    if ident.id_type == IdType.ID_DER_ASN1_DN:
        try:
            return dn_matches(cert.subject, ident.dn())
        except ValueError:
            return False
    for known in certificate_identities(cert)[1:]:
        if known.id_type != ident.id_type:
            continue
        if ident.id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
            if known.data.lower() == ident.data.lower():
                return True
        elif known.data == ident.data:
            return True
    return False


def check_identity(cert: x509.Certificate, ident: Identity) -> None:
    """The peer's ID payload must be one the certificate contains (RFC 4945 s3.1)."""
    if not certificate_has_identity(cert, ident):
        raise IdentityMismatch(f"the identity {ident} is not in {describe(cert)} (neither its subject nor a "
                               f"subjectAltName)")


# --- CERTREQ ----------------------------------------------------------------------------------

def chain_to_send(credential: LocalCredential, requested: Sequence[bytes],
                  known_cas: Sequence[x509.Certificate] = ()) -> list[x509.Certificate]:
    """The certificates for our CERT payloads, end entity first (RFC 7296 s3.6).

    With CERTREQ authorities, the shortest prefix of our chain that reaches a requested CA (a CA
    we only hold as ``known_cas`` counts too); without any, or when none matches, the whole
    chain of intermediates we have, so that the peer can still build its path.
    """
    chain = [credential.certificate]
    remaining = list(credential.intermediates)
    while True:
        current = chain[-1]
        for issuer in remaining:
            if current.issuer == issuer.subject:
                try:
                    if _issued_by(current, issuer):
                        break
                except BadCertificateSignature:
                    continue
        else:
            break
        remaining.remove(issuer)
        chain.append(issuer)
    if not requested:
        return chain
    wanted = set(requested)
    issuers = chain[1:] + [ca for ca in known_cas if chain[-1].issuer == ca.subject]
    for depth, issuer in enumerate(issuers):
        if spki_sha1(issuer) in wanted:
            return chain[:depth + 1]
    return chain


# --- the peer's CERT payloads -----------------------------------------------------------------

def validate_peer(cert_ders: Sequence[bytes], store: TrustStore, now: datetime,
                  peer_id: Identity | None = None) -> list[x509.Certificate]:
    """The peer's X.509 CERT payload data as received (end entity first, then intermediates,
    RFC 7296 s3.6): parsed, validated up to a configured CA at ``now`` and, with ``peer_id``
    (its IDi/IDr), checked to contain that identity. Returns the chain, end entity first."""
    if not cert_ders:
        raise CertificateUntrusted("the peer sent no certificate")
    certs = []
    for index, der in enumerate(cert_ders):
        try:
            certs.append(x509.load_der_x509_certificate(der))
        except ValueError:
            raise CertificateGarbage(f"CERT payload {index + 1} is not a DER X.509 certificate") from None
    chain = validate_chain(certs[0], certs[1:], store, now)
    if peer_id is not None:
        check_identity(certs[0], peer_id)
    return chain
