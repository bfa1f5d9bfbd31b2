"""A small lab PKI for users without strongSwan's ``pki``: a root CA, intermediate CAs, gateway
certificates and CRLs, written as PEM files (private keys mode 0600).

``espgw pki ca --out DIR --name "C=CH, O=Lab, CN=Lab CA"`` makes DIR/ca.crt and DIR/ca.key;
``espgw pki intermediate --ca DIR --out DIR2 --name ...`` makes a CA folder of the same shape (with
DIR2/chain.crt: the intermediates up to the root); ``espgw pki issue --ca DIR --out DIR3 --name ...
--san gw.example --san 192.0.2.1`` makes DIR3/<stem>.crt, <stem>.key (and <stem>-chain.crt under an
intermediate); ``espgw pki crl --ca DIR --out FILE --revoke SERIAL`` signs a CRL. Names are written
as strongSwan writes them (``C=CH, O=Lab, CN=gw``). Everything is ``cryptography``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtensionOID

from ike.crypto.certs import CertError, PrivateKey, load_certificates, load_private_key, parse_certificate
from ike.codec.ids import dn_from_text

KEY_TYPES = ("rsa2048", "rsa3072", "rsa4096", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "ed25519")
DEFAULT_KEY_TYPE = "ecdsa-p256"
CA_DAYS, CERT_DAYS, CRL_DAYS = 3650, 1095, 30


class PkiError(Exception):
    """A problem to report as one line."""


def make_key(key_type: str) -> PrivateKey:
    if key_type.startswith("rsa") and key_type[3:] in ("2048", "3072", "4096"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    curves: dict[str, ec.EllipticCurve] = {"ecdsa-p256": ec.SECP256R1(), "ecdsa-p384": ec.SECP384R1(),
                                           "ecdsa-p521": ec.SECP521R1()}
    if key_type in curves:
        return ec.generate_private_key(curves[key_type])
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise PkiError(f"unknown key type {key_type!r} (one of {', '.join(KEY_TYPES)})")


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    """The signature hash a CA key signs with: none for Ed25519, the curve's strength for ECDSA."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = key.curve.key_size
        return hashes.SHA256() if size <= 256 else hashes.SHA384() if size <= 384 else hashes.SHA512()
    return hashes.SHA256()


def parse_name(text: str) -> x509.Name:
    try:
        return dn_from_text(text)
    except ValueError as exc:
        raise PkiError(f"bad distinguished name {text!r}: {exc}") from None


def parse_san(text: str) -> x509.GeneralName:
    """``192.0.2.1``/``2001:db8::1`` -> IP address, ``user@host`` -> e-mail, else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if "@" in text:
        return x509.RFC822Name(text)
    if not text or " " in text:
        raise PkiError(f"bad subjectAltName {text!r}")
    return x509.DNSName(text)


def _builder(subject: x509.Name, issuer: x509.Name, key: PrivateKey, now: datetime, days: int,
             serial: int | None) -> x509.CertificateBuilder:
    public = key.public_key()
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
            .serial_number(serial if serial is not None else x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))


def _ca_extensions(builder: x509.CertificateBuilder, path_length: int | None) -> x509.CertificateBuilder:
    return (builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True))


def _authority_key_id(builder: x509.CertificateBuilder, issuer: x509.Certificate) -> x509.CertificateBuilder:
    try:
        ski = issuer.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_KEY_IDENTIFIER).value
    except x509.ExtensionNotFound:
        return builder
    assert isinstance(ski, x509.SubjectKeyIdentifier)
    return builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)


def make_ca(name: str, now: datetime, key_type: str = DEFAULT_KEY_TYPE, days: int = CA_DAYS,
            path_length: int | None = None, key: PrivateKey | None = None) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed root CA."""
    key = key or make_key(key_type)
    subject = parse_name(name)
    builder = _ca_extensions(_builder(subject, subject, key, now, days, None), path_length)
    return builder.sign(key, _hash_for(key)), key


def make_intermediate(ca_cert: x509.Certificate, ca_key: PrivateKey, name: str, now: datetime,
                      key_type: str = DEFAULT_KEY_TYPE, days: int = CA_DAYS,
                      path_length: int | None = 0) -> tuple[x509.Certificate, PrivateKey]:
    key = make_key(key_type)
    builder = _builder(parse_name(name), ca_cert.subject, key, now, days, None)
    builder = _authority_key_id(_ca_extensions(builder, path_length), ca_cert)
    return builder.sign(ca_key, _hash_for(ca_key)), key


def issue(ca_cert: x509.Certificate, ca_key: PrivateKey, name: str, now: datetime, sans: Sequence[str] = (),
          key_type: str = DEFAULT_KEY_TYPE, days: int = CERT_DAYS, serial: int | None = None,
          key: PrivateKey | None = None) -> tuple[x509.Certificate, PrivateKey]:
    """A gateway (end-entity) certificate: digitalSignature, subjectAltNames as given."""
    key = key or make_key(key_type)
    builder = _builder(parse_name(name), ca_cert.subject, key, now, days, serial)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(
        x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                      key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False,
                      decipher_only=False), critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([parse_san(s) for s in sans]), critical=False)
    return _authority_key_id(builder, ca_cert).sign(ca_key, _hash_for(ca_key)), key


def make_crl(ca_cert: x509.Certificate, ca_key: PrivateKey, revoked: Sequence[int], now: datetime,
             days: int = CRL_DAYS) -> x509.CertificateRevocationList:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - timedelta(minutes=5)).next_update(now + timedelta(days=days)))
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - timedelta(minutes=5)).build())
    return builder.sign(ca_key, _hash_for(ca_key))


# --- files ------------------------------------------------------------------------------------

def write_key(path: Path, key: PrivateKey) -> None:
    """PKCS#8 PEM, created 0600 (never readable by others, not even briefly)."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    if path.exists():
        raise PkiError(f"{path} exists: not overwriting a private key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def write_certificates(path: Path, certs: Sequence[x509.Certificate]) -> None:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))


def _read_ca(folder: str) -> tuple[x509.Certificate, PrivateKey, list[x509.Certificate]]:
    base = Path(folder)
    cert = parse_certificate((base / "ca.crt").read_bytes())
    key = load_private_key(base / "ca.key")
    chain = load_certificates([base / "chain.crt"]) if (base / "chain.crt").exists() else []
    return cert, key, chain


def _out_dir(folder: str) -> Path:
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- command line -----------------------------------------------------------------------------

def add_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``pki`` and its subcommands to a CLI's subparsers; ``main(args)`` runs them."""
    pki = subparsers.add_parser("pki", help="make a lab CA, gateway certificates and CRLs (PEM files)")
    steps = pki.add_subparsers(dest="pki_command", metavar="STEP", required=True)

    ca = steps.add_parser("ca", help="a self-signed root CA: OUT/ca.crt, OUT/ca.key")
    ca.add_argument("--out", required=True, metavar="DIR")
    ca.add_argument("--name", required=True, help='subject, e.g. "C=CH, O=Lab, CN=Lab CA"')
    ca.add_argument("--pathlen", type=int, default=None, help="how many intermediate CAs may follow")

    inter = steps.add_parser("intermediate", help="an intermediate CA signed by --ca: OUT/ca.crt, ca.key, chain.crt")
    inter.add_argument("--ca", required=True, metavar="DIR")
    inter.add_argument("--out", required=True, metavar="DIR")
    inter.add_argument("--name", required=True)
    inter.add_argument("--pathlen", type=int, default=0)

    cert = steps.add_parser("issue", help="a gateway certificate signed by --ca: OUT/STEM.crt, OUT/STEM.key")
    cert.add_argument("--ca", required=True, metavar="DIR")
    cert.add_argument("--out", required=True, metavar="DIR")
    cert.add_argument("--name", required=True, help='subject, e.g. "C=CH, O=Lab, CN=gw1.lab"')
    cert.add_argument("--san", action="append", default=[], help="DNS name, IP address or e-mail (repeatable)")
    cert.add_argument("--stem", default="gateway", help="file name stem (default: gateway)")

    for sub, days in ((ca, CA_DAYS), (inter, CA_DAYS), (cert, CERT_DAYS)):
        sub.add_argument("--key-type", choices=KEY_TYPES, default=DEFAULT_KEY_TYPE)
        sub.add_argument("--days", type=int, default=days, help=f"validity in days (default {days})")

    crl = steps.add_parser("crl", help="a CRL signed by --ca, revoking serial numbers")
    crl.add_argument("--ca", required=True, metavar="DIR")
    crl.add_argument("--out", required=True, metavar="FILE")
    crl.add_argument("--revoke", action="append", default=[], metavar="SERIAL", help="hex serial (repeatable)")
    crl.add_argument("--days", type=int, default=CRL_DAYS, help=f"until the next update (default {CRL_DAYS})")
    pki.set_defaults(func=main)
    return pki


def _run(args: argparse.Namespace, now: datetime) -> list[str]:
    if getattr(args, "days", 1) <= 0:
        raise PkiError("--days must be positive")
    done = []
    if args.pki_command == "ca":
        out = _out_dir(args.out)
        cert, key = make_ca(args.name, now, args.key_type, args.days, args.pathlen)
        write_key(out / "ca.key", key)
        write_certificates(out / "ca.crt", [cert])
        done.append(f"{out / 'ca.crt'} (serial {cert.serial_number:x})")
    elif args.pki_command == "intermediate":
        ca_cert, ca_key, chain = _read_ca(args.ca)
        out = _out_dir(args.out)
        cert, key = make_intermediate(ca_cert, ca_key, args.name, now, args.key_type, args.days, args.pathlen)
        write_key(out / "ca.key", key)
        write_certificates(out / "ca.crt", [cert])
        write_certificates(out / "chain.crt", [cert, *chain])
        done.append(f"{out / 'ca.crt'} (serial {cert.serial_number:x})")
    elif args.pki_command == "issue":
        ca_cert, ca_key, chain = _read_ca(args.ca)
        out = _out_dir(args.out)
        cert, key = issue(ca_cert, ca_key, args.name, now, args.san, args.key_type, args.days)
        write_key(out / f"{args.stem}.key", key)
        write_certificates(out / f"{args.stem}.crt", [cert])
        if chain:
            write_certificates(out / f"{args.stem}-chain.crt", chain)
        done.append(f"{out / (args.stem + '.crt')} (serial {cert.serial_number:x})")
    else:
        ca_cert, ca_key, _ = _read_ca(args.ca)
        try:
            serials = [int(s.removeprefix("0x").replace(":", ""), 16) for s in args.revoke]
        except ValueError:
            raise PkiError(f"--revoke takes hex serial numbers, not {args.revoke}") from None
        crl = make_crl(ca_cert, ca_key, serials, now, args.days)
        out_file = Path(args.out)
        out_file.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        done.append(f"{out_file} ({len(serials)} revoked)")
    return done


def main(args: argparse.Namespace, now: datetime | None = None) -> int:
    """Run ``espgw pki STEP``; problems are one ``espgw pki: ...`` line on stderr and exit status 1."""
    try:
        for line in _run(args, now or datetime.now(UTC)):
            print(f"wrote {line}")
    except (PkiError, CertError) as exc:
        print(f"espgw pki: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"espgw pki: cannot write or read{where}: {exc.strerror}", file=sys.stderr)
        return 1
    except ValueError as exc:  # cryptography refusing a value, e.g. a country name not 2 letters
        print(f"espgw pki: {exc}", file=sys.stderr)
        return 1
    return 0
