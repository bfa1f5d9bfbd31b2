"""A throw-away PKI for the lab's certificate cases (issue #14): a root CA, an optional
intermediate, gateway certificates with the lab ids (``gwa.lab``, ``gwb.lab``) as DNS
subjectAltNames, every key type espgw signs with, and the broken cases (expired, untrusted,
revoked). Made with ``cryptography`` in memory; ``write_*`` put them where swanctl and espgw read them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ike.config import AuthConfig
from ike.crypto.certs import LocalCredential, PrivateKey, TrustStore

KEY_TYPES = ("rsa3072", "ecdsa256", "ecdsa384", "ed25519")
PEM = serialization.Encoding.PEM


def new_key(kind: str) -> PrivateKey:
    if kind.startswith("rsa"):
        return rsa.generate_private_key(65537, int(kind[3:]))
    if kind == "ecdsa256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ecdsa384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {kind!r}")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "espgw lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, key: PrivateKey, issuer: x509.Certificate | None, issuer_key: PrivateKey, *,
           ca: bool, san: str | None = None, days: tuple[int, int] = (-1, 365)) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(issuer.subject if issuer else _name(subject))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now + timedelta(days=days[0])).not_valid_after(now + timedelta(days=days[1]))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    # key identifiers: strongSwan finds a CA's CRL by them
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    signer = issuer.public_key() if issuer else key.public_key()
    builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer),  # type: ignore[arg-type]
                                    critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(issuer_key, algorithm)


@dataclass
class LabPki:
    """One CA (optionally with an intermediate) and certificates for gwA and gwB."""

    ca: x509.Certificate
    ca_key: PrivateKey = field(repr=False)
    intermediate: tuple[x509.Certificate, PrivateKey] | None = None
    crl: x509.CertificateRevocationList | None = None
    _crls: ClassVar[int] = 0

    @classmethod
    def make(cls, *, intermediate: bool = False, name: str = "espgw lab Root CA", ca_kind: str = "rsa3072",
             intermediate_kind: str = "ecdsa384") -> LabPki:
        ca_key = new_key(ca_kind)
        pki = cls(_issue(name, ca_key, None, ca_key, ca=True, days=(-2, 3650)), ca_key)
        if intermediate:
            ica_key = new_key(intermediate_kind)
            pki.intermediate = (_issue("espgw lab Intermediate CA", ica_key, pki.ca, ca_key, ca=True), ica_key)
        return pki

    def gateway(self, fqdn: str, kind: str, *, expired: bool = False) -> LocalCredential:
        key = new_key(kind)
        issuer, issuer_key = self.intermediate or (self.ca, self.ca_key)
        days = (-30, -1) if expired else (-1, 365)
        cert = _issue(fqdn, key, issuer, issuer_key, ca=False, san=fqdn, days=days)
        return LocalCredential(cert, key, (self.intermediate[0],) if self.intermediate else ())

    def revoke(self, *certs: x509.Certificate) -> None:
        # each CRL strictly newer than the last (thisUpdate has whole seconds): charon keeps the newest
        LabPki._crls += 1
        now = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=LabPki._crls)
        builder = x509.CertificateRevocationListBuilder().issuer_name(self.ca.subject)
        for cert in certs:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                .revocation_date(now - timedelta(hours=1)).build())
        self.crl = (builder
                    .last_update(now - timedelta(hours=1)).next_update(now + timedelta(days=7))
                    .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                        self.ca_key.public_key()), critical=False)
                    .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)  # newest wins in charon
                    .sign(self.ca_key, hashes.SHA256()))

    def trust(self) -> TrustStore:
        return TrustStore(cas=[self.ca], crls=[self.crl] if self.crl else [])


def write_private(path: Path, key: PrivateKey) -> None:
    data = key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def write_swanctl_files(swanctl_dir: Path, name: str, credential: LocalCredential | None,
                        trust: TrustStore | None) -> tuple[str | None, list[str]]:
    """Files for one connection in swanctl's folders; returns (certs, cacerts) as swanctl.conf names them."""
    cert_name = None
    if credential is not None:
        cert_name = f"{name}.pem"
        (swanctl_dir / "x509" / cert_name).write_bytes(credential.certificate.public_bytes(PEM))
        write_private(swanctl_dir / "private" / f"{name}.pem", credential.key)
        for n, ica in enumerate(credential.intermediates):  # charon sends what its store holds
            (swanctl_dir / "x509ca" / f"{name}-ica{n}.pem").write_bytes(ica.public_bytes(PEM))
    cacerts = []
    if trust is not None:
        for n, ca in enumerate(trust.cas):
            cacerts.append(f"{name}-ca{n}.pem")
            (swanctl_dir / "x509ca" / cacerts[-1]).write_bytes(ca.public_bytes(PEM))
        for n, crl in enumerate(trust.crls):
            (swanctl_dir / "x509crl" / f"{name}-{n}.crl").write_bytes(crl.public_bytes(PEM))
    return cert_name, cacerts


def pubkey_auth(credential: LocalCredential, trust: TrustStore, local_id: str,
                remote_id: str) -> tuple[AuthConfig, AuthConfig]:
    """(local, remote) authentication by certificate: ours with ``credential`` as ``local_id``
    (a subjectAltName of its certificate), the peer's checked against ``trust`` and ``remote_id``."""
    return (AuthConfig("pubkey", id=local_id, credential=credential),
            AuthConfig("pubkey", id=remote_id, trust=trust))
