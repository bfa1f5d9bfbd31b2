"""Certificate credentials from files, laid out as swanctl lays them out (the config layer's half of
issue #14; ``ike.crypto.certs`` parses and validates, this module decides which files).

Relative paths are resolved against the configuration file's folder, first in swanctl's folder for
the kind (``x509/`` for own certificates, ``x509ca/`` for CAs, ``private/``, ``rsa/``, ``ecdsa/``,
``pkcs8/`` for keys), then in the folder itself. Without ``cacerts``, every certificate in
``x509ca/`` is trusted; every CRL in ``x509crl/`` is used. A private key comes from a
``secrets.private-NAME`` (or ``rsa-``, ``ecdsa-``, ``pkcs8-``) section's ``file`` (decrypted with its
``secret``), or else is the unencrypted key in the key folders that matches the certificate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from ike.crypto.certs import (CertError, KeyFileError, LocalCredential, PrivateKey, TrustStore, load_certificates,
                              load_crls, load_private_key, spki_der)

KEY_SECTIONS = ("private", "rsa", "ecdsa", "pkcs8")  # secrets.<kind>-NAME, and the folders of the same name
CERT_FOLDER, CA_FOLDER, CRL_FOLDER = "x509", "x509ca", "x509crl"


@dataclass
class KeySecret:
    """A ``secrets.private-NAME`` section: a key file and its passphrase (never shown)."""

    section: str
    file: str
    passphrase: bytes | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return self.section.rsplit(".", 1)[-1].split("-", 1)[0]


def resolve(base: Path, name: str, folders: tuple[str, ...]) -> Path:
    path = Path(name)
    if path.is_absolute():
        return path
    for folder in folders:
        if (base / folder / path).exists():
            return base / folder / path
    return base / path


def _folder_files(base: Path, folder: str) -> list[Path]:
    where = base / folder
    return sorted(p for p in where.iterdir() if p.is_file()) if where.is_dir() else []


def _public_der(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def local_credential(base: Path, certs: list[str], keys: list[KeySecret]) -> LocalCredential:
    """Our certificate (the first of ``certs``; more files or PEM bundles add intermediates) and the
    private key that belongs to it. Raises CertError with the reason."""
    chain = load_certificates(resolve(base, name, (CERT_FOLDER,)) for name in certs)
    if not chain:
        raise CertError("certs names no certificate")
    wanted = spki_der(chain[0])
    for secret in keys:
        key = load_private_key(resolve(base, secret.file, (secret.kind, *KEY_SECTIONS)), secret.passphrase)
        if _public_der(key) == wanted:
            return LocalCredential(chain[0], key, tuple(chain[1:]))
    for folder in KEY_SECTIONS:
        for file in _folder_files(base, folder):
            try:
                key = load_private_key(file)
            except CertError:
                continue  # encrypted keys need a secrets section; other files are not ours to judge
            if _public_der(key) == wanted:
                return LocalCredential(chain[0], key, tuple(chain[1:]))
    raise KeyFileError(f"no private key for the certificate {certs[0]}: add a secrets.private-NAME section "
                       f"with file = \"...\" (and secret = \"...\" if it is encrypted), or put the key in "
                       f"{base / 'private'}")


def trust_store(base: Path, cacerts: list[str]) -> TrustStore:
    """The CAs a peer certificate must chain to, with the CRLs of ``x509crl/``."""
    if cacerts:
        cas = load_certificates(resolve(base, name, (CA_FOLDER,)) for name in cacerts)
    else:
        cas = load_certificates(_folder_files(base, CA_FOLDER))
    if not cas:
        raise CertError(f"no trusted CA: set cacerts, or put CA certificates in {base / CA_FOLDER}")
    return TrustStore(cas=cas, crls=load_crls(_folder_files(base, CRL_FOLDER)))


def wall_clock_offset() -> float:
    """What turns the daemon's monotonic clock into Unix time, for certificate validity."""
    return time.time() - time.monotonic()
