"""Certificate credentials loaded over vici (load-cert, load-key, load-authority), as swanctl sends
them: DER or PEM blobs, never file names. Sans-I/O; nothing here logs, and key material never
appears in an error or ``repr``.

:class:`ViciCredentials` is the configuration loader's credential source for vici connections
(``tunnel.ops.credentials.StoredCredentials``, the same rules as for files): a load-conn's
``certs`` find their key among the loaded ones, a remote side without ``cacerts`` trusts every
loaded CA certificate and authority, and loaded CRLs apply.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ike.crypto.certs import CertError, PublicKey, parse_certificates, parse_crl, parse_private_key

from tunnel.ops.credentials import StoredCredentials

from .codec import Message
from .swanctl_conf import ViciConfigError

CERT_FLAGS = (b"NONE", b"CA", b"AA", b"OCSP")
AUTHORITY_KEYS = ("cacert", "crl_uris", "ocsp_uris", "cert_uri_base")  # swanctl.conf authorities.<name>


def key_id(public: PublicKey) -> str:
    """strongSwan's key id for get-keys: SHA-1 of the subjectPublicKey (not the whole SPKI), hex."""
    if isinstance(public, rsa.RSAPublicKey):
        raw = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        raw = public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    elif isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raise ViciConfigError(["unsupported public key type"])
    return hashlib.sha1(raw).hexdigest()


def _blob(message: Message, command: str) -> bytes:
    data = message.get("data")
    if not isinstance(data, bytes) or not data:
        raise ViciConfigError([f"{command}: missing data"])
    return data


def _add(held: list, new: list) -> None:
    """swanctl --load-all sends every file again: what is already held is not added twice."""
    held.extend(item for item in new if item not in held)


@dataclass
class ViciCredentials(StoredCredentials):
    """What vici clients loaded: certificates by flag, CRLs, private keys by key id, authorities."""

    authorities: dict[str, x509.Certificate] = field(default_factory=dict)

    def trust_anchors(self) -> list[x509.Certificate]:
        return [*self.cas, *(ca for ca in self.authorities.values() if ca not in self.cas)]

    def load_cert(self, message: Message) -> None:
        kind, flag = message.get("type", b"X509"), message.get("flag", b"NONE")
        data = _blob(message, "load-cert")
        try:
            if kind == b"X509_CRL":
                _add(self.crls, [parse_crl(data)])
                return
            if kind != b"X509":
                raise ViciConfigError([f"load-cert: unsupported type {kind!r}"])
            if flag not in CERT_FLAGS:
                raise ViciConfigError([f"load-cert: unsupported flag {flag!r}"])
            parsed = parse_certificates(data)
        except CertError as exc:
            raise ViciConfigError([f"load-cert: {exc}"]) from None
        _add(self.cas if flag == b"CA" else self.certs, parsed)

    def load_key(self, message: Message) -> str:
        data = _blob(message, "load-key")
        try:
            key = parse_private_key(data)
        except CertError as exc:
            raise ViciConfigError([f"load-key: {exc}"]) from None
        ident = key_id(key.public_key())
        # the same key loaded again stays the same object, so its connections compare unchanged
        self.keys.setdefault(ident, key)
        return ident

    def unload_key(self, message: Message) -> None:
        ident = message.get("id")
        name = ident.decode(errors="replace").lower() if isinstance(ident, bytes) else ""
        if self.keys.pop(name, None) is None:
            raise ViciConfigError([f"unload-key: no key with id {name!r}"])

    def load_authority(self, message: Message) -> None:
        if len(message) != 1:
            raise ViciConfigError([f"load-authority: expected exactly one section, got {len(message)}"])
        ((name, section),) = message.items()
        if not isinstance(section, dict):
            raise ViciConfigError([f"load-authority: {name}: expected a section"])
        unknown = [key for key in section if key not in AUTHORITY_KEYS]
        if unknown:
            raise ViciConfigError([f"authorities.{name}.{key}: not supported (espgw reads the cacert and "
                                   f"ignores {', '.join(AUTHORITY_KEYS[1:])}; no smartcards)" for key in unknown])
        data = section.get("cacert")
        if not isinstance(data, bytes) or not data:
            raise ViciConfigError([f"load-authority: {name}: missing cacert"])
        try:
            self.authorities[name] = parse_certificates(data)[0]
        except (CertError, IndexError) as exc:
            raise ViciConfigError([f"load-authority: {name}: {exc or 'no certificate'}"]) from None
        # crl_uris/ocsp_uris are ignored: espgw fetches nothing, CRLs come with load-cert X509_CRL

    def unload_authority(self, message: Message) -> None:
        name = message.get("name")
        text = name.decode(errors="replace") if isinstance(name, bytes) else ""
        if self.authorities.pop(text, None) is None:
            raise ViciConfigError([f"unload-authority: no authority {text!r}"])

    def clear(self) -> None:
        self.certs.clear()
        self.cas.clear()
        self.crls.clear()
        self.keys.clear()
        self.authorities.clear()
