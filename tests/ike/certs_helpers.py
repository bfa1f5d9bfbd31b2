"""Shared material for the certificate tests: the strongSwan-made fixtures and a clock."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from ike.crypto.certs import parse_certificate, parse_crl

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "certs"
# The strongSwan fixtures are valid 2026-01-01 .. 2036-01-01 (see make-with-strongswan-pki.sh).
NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def cert(name: str) -> x509.Certificate:
    return parse_certificate(fixture(name))


def crl(name: str) -> x509.CertificateRevocationList:
    return parse_crl(fixture(name))
