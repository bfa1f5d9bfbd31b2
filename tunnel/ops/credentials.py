"""Certificate credentials of ``auth = pubkey`` connections, wherever they come from (the config
layer's half of issues #14 and #17; ``ike.crypto.certs`` parses and validates, this module decides
which certificates, keys and CAs a connection gets).

The configuration loader asks a :class:`CredentialSource` for a connection's local credential and
trust store. Two sources share every rule here:

- :class:`FileCredentials`: swanctl's folders next to the configuration file. Relative paths are
  resolved first in the folder for the kind (``x509/`` for own certificates, ``x509ca/`` for CAs,
  ``private/``, ``rsa/``, ``ecdsa/``, ``pkcs8/`` for keys), then in the folder itself. Without
  ``cacerts``, every certificate in ``x509ca/`` is trusted; every CRL in ``x509crl/`` is used. A
  private key comes from a ``secrets.private-NAME`` (or ``rsa-``, ``ecdsa-``, ``pkcs8-``)
  section's ``file`` (decrypted with its ``secret``), or else is the unencrypted key in the key
  folders that matches the certificate.
- :class:`StoredCredentials`: certificates, keys and CRLs held in memory, as vici's load-cert,
  load-key and load-authority deliver them (``tunnel.ops.vici.credstore``). The key is the loaded
  one matching the certificate, loaded CA certificates above it are sent as intermediates (as
  charon does); without ``cacerts`` every loaded CA is trusted.

In both, an entry of ``certs`` / ``cacerts`` may be an inline blob instead of a file name, as
swanctl.conf allows: ``0x`` and hex, or ``0s`` and base64 (PEM or DER). vici's load-conn carries
certificates only that way.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ike.crypto.certs import (MAX_CHAIN_LENGTH, CertError, KeyFileError, LocalCredential, PrivateKey, TrustStore,
                              describe, load_certificates, load_crls, load_private_key, parse_certificates, spki_der)

KEY_SECTIONS = ("private", "rsa", "ecdsa", "pkcs8")  # secrets.<kind>-NAME, and the folders of the same name
CERT_FOLDER, CA_FOLDER, CRL_FOLDER = "x509", "x509ca", "x509crl"


class CredentialSource(Protocol):
    """Where the configuration loader gets a pubkey connection's credentials; both raise
    ``CertError`` with the reason, which the loader reports at the key (``certs`` / ``cacerts``)."""

    def local_credential(self, certs: list[str]) -> LocalCredential:
        """Our certificate (the first of ``certs``; the others are intermediates) and its key."""
        ...

    def trust_store(self, cacerts: list[str]) -> TrustStore:
        """The CAs a peer certificate must chain to (``cacerts``, or every known CA), with CRLs."""
        ...


@dataclass
class KeySecret:
    """A ``secrets.private-NAME`` section: a key file and its passphrase (never shown)."""

    section: str
    file: str
    passphrase: bytes | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return self.section.rsplit(".", 1)[-1].split("-", 1)[0]


# ----------------------------------------------------------------------------- shared rules


def inline_blob(entry: str) -> bytes | None:
    """swanctl's inline credential (``0x`` + hex, ``0s`` + base64), or None for a file name."""
    prefix, body = entry[:2].lower(), entry[2:]
    try:
        if prefix == "0x":
            return bytes.fromhex(body)
        if prefix == "0s":
            return base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error):
        raise CertError(f"{entry[:2]}...: not valid {'hex' if prefix == '0x' else 'base64'}") from None
    return None


def certificates(entries: list[str], base: Path | None, folder: str) -> list[x509.Certificate]:
    """The certificates ``entries`` name: inline blobs, or files found in ``base`` (None: only
    inline blobs are possible, as over vici)."""
    found: list[x509.Certificate] = []
    for number, entry in enumerate(entries, 1):
        blob = inline_blob(entry)
        if blob is None:
            if base is None:
                raise CertError(f"entry {number}: a file name ({entry!r}) where a certificate was expected")
            found.extend(load_certificates([resolve(base, entry, (folder,))]))
            continue
        try:
            found.extend(parse_certificates(blob))
        except CertError as exc:
            raise type(exc)(f"entry {number}: {exc}") from None
    return found


def _public_der(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def credential_for(chain: list[x509.Certificate], keys: Iterable[PrivateKey]) -> LocalCredential | None:
    """The first of ``keys`` whose public key is the certificate's (``chain[0]``), as a credential
    with ``chain[1:]`` as intermediates; None if none is. ``keys`` is consumed lazily."""
    wanted = spki_der(chain[0])
    for key in keys:
        if _public_der(key) == wanted:
            return LocalCredential(chain[0], key, tuple(chain[1:]))
    return None


def with_intermediates(credential: LocalCredential, known: list[x509.Certificate]) -> LocalCredential:
    """``credential`` with the ``known`` CA certificates that continue its chain upwards, short of a
    self-signed root: as charon sends the intermediates its store holds (swanctl keeps them in
    ``x509ca/``), so ``certs`` may name the end-entity certificate alone."""
    chain = [credential.certificate, *credential.intermediates]
    while len(chain) < MAX_CHAIN_LENGTH:
        top = chain[-1]
        issuer = next((ca for ca in known if ca.subject == top.issuer and ca.subject != ca.issuer
                       and ca not in chain and _signed_by(top, ca)), None)
        if issuer is None:
            break
        chain.append(issuer)
    if len(chain) == 1 + len(credential.intermediates):
        return credential
    return LocalCredential(credential.certificate, credential.key, tuple(chain[1:]))


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def trust_from(cas: list[x509.Certificate], crls: list[x509.CertificateRevocationList],
               where: str) -> TrustStore:
    if not cas:
        raise CertError(f"no trusted CA: set cacerts, or {where}")
    return TrustStore(cas=cas, crls=crls)


def wall_clock_offset() -> float:
    """What turns the daemon's monotonic clock into Unix time, for certificate validity. Whole
    seconds, so a connection loaded again unchanged compares equal (and keeps its SAs)."""
    return float(round(time.time() - time.monotonic()))


# ----------------------------------------------------------------------------- files


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


@dataclass
class FileCredentials:
    """Credentials in swanctl's folders under ``base`` (the configuration file's folder)."""

    base: Path
    keys: list[KeySecret] = field(default_factory=list)

    def local_credential(self, certs: list[str]) -> LocalCredential:
        chain = certificates(certs, self.base, CERT_FOLDER)
        if not chain:
            raise CertError("certs names no certificate")
        found = credential_for(chain, self._candidate_keys())
        if found is None:
            named = certs[0] if inline_blob(certs[0]) is None else describe(chain[0])
            raise KeyFileError(f"no private key for the certificate {named}: add a secrets.private-NAME section "
                               f"with file = \"...\" (and secret = \"...\" if it is encrypted), or put the key in "
                               f"{self.base / 'private'}")
        return found

    def _candidate_keys(self) -> Iterator[PrivateKey]:
        for secret in self.keys:
            yield load_private_key(resolve(self.base, secret.file, (secret.kind, *KEY_SECTIONS)), secret.passphrase)
        for folder in KEY_SECTIONS:
            for file in _folder_files(self.base, folder):
                try:
                    yield load_private_key(file)
                except CertError:
                    continue  # encrypted keys need a secrets section; other files are not ours to judge

    def trust_store(self, cacerts: list[str]) -> TrustStore:
        cas = (certificates(cacerts, self.base, CA_FOLDER) if cacerts
               else load_certificates(_folder_files(self.base, CA_FOLDER)))
        return trust_from(cas, load_crls(_folder_files(self.base, CRL_FOLDER)),
                          f"put CA certificates in {self.base / CA_FOLDER}")


def local_credential(base: Path, certs: list[str], keys: list[KeySecret]) -> LocalCredential:
    """Our certificate and its private key from files (see :class:`FileCredentials`)."""
    return FileCredentials(base, keys).local_credential(certs)


def trust_store(base: Path, cacerts: list[str]) -> TrustStore:
    """The CAs a peer certificate must chain to, with the CRLs of ``x509crl/``."""
    return FileCredentials(base).trust_store(cacerts)


# ----------------------------------------------------------------------------- memory


@dataclass
class StoredCredentials:
    """Parsed credentials in memory: own and other certificates, CA certificates, CRLs and
    private keys by key id. A connection's ``certs`` / ``cacerts`` are inline blobs here."""

    certs: list[x509.Certificate] = field(default_factory=list)
    cas: list[x509.Certificate] = field(default_factory=list)
    crls: list[x509.CertificateRevocationList] = field(default_factory=list)
    keys: dict[str, PrivateKey] = field(default_factory=dict, repr=False)

    def trust_anchors(self) -> list[x509.Certificate]:
        """The CAs trusted when a connection names none."""
        return list(self.cas)

    def local_credential(self, certs: list[str]) -> LocalCredential:
        chain = certificates(certs, None, CERT_FOLDER)
        if not chain:
            raise CertError("certs names no certificate")
        found = credential_for(chain, list(self.keys.values()))
        if found is None:
            raise KeyFileError(f"no private key loaded for the certificate {describe(chain[0])} (swanctl "
                               "--load-all sends the keys of its private/ folder with load-key)")
        return with_intermediates(found, [*self.cas, *self.certs])

    def trust_store(self, cacerts: list[str]) -> TrustStore:
        cas = certificates(cacerts, None, CA_FOLDER) if cacerts else self.trust_anchors()
        return trust_from(cas, list(self.crls), "load CA certificates first (swanctl --load-all sends its "
                                                "x509ca/ folder with load-cert)")
