"""tunnel.ops.pki: the lab PKI's functions and its `espgw pki` subcommands."""

from __future__ import annotations

import argparse
import shutil
import stat
import subprocess
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ike.crypto import certs as C
from ike.codec.ids import Identity
from tests.ike.certs_helpers import NOW
from tunnel.ops import pki


def run(*argv, now=NOW):
    parser = argparse.ArgumentParser(prog="espgw")
    pki.add_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["pki", *argv])
    return args.func(args, now)


def test_ca_intermediate_issue_crl_from_the_command_line(tmp_path, capsys):
    root, inter, gw = tmp_path / "root", tmp_path / "inter", tmp_path / "gw"
    assert run("ca", "--out", str(root), "--name", "C=CH, O=Lab, CN=Lab CA", "--key-type", "ecdsa-p384") == 0
    assert run("intermediate", "--ca", str(root), "--out", str(inter), "--name", "C=CH, O=Lab, CN=Lab Sub CA") == 0
    assert run("issue", "--ca", str(inter), "--out", str(gw), "--name", "C=CH, O=Lab, CN=gw1.lab",
               "--san", "gw1.lab", "--san", "192.0.2.1", "--san", "ops@lab.example", "--key-type", "ed25519",
               "--stem", "gw1") == 0
    out = capsys.readouterr().out
    assert out.count("wrote ") == 3 and "serial" in out
    for key in (root / "ca.key", inter / "ca.key", gw / "gw1.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    gw_cert = C.load_certificate(gw / "gw1.crt")
    sent = C.load_certificates([gw / "gw1-chain.crt"])
    store = C.TrustStore(cas=C.load_certificates([root / "ca.crt"]))
    chain = C.validate_chain(gw_cert, sent, store, NOW + timedelta(days=1))
    assert [str(Identity.of_name(c.subject)) for c in chain] == [
        "C=CH, O=Lab, CN=gw1.lab", "C=CH, O=Lab, CN=Lab Sub CA", "C=CH, O=Lab, CN=Lab CA"]
    for ident in ("gw1.lab", "192.0.2.1", "ops@lab.example", "C=CH, O=Lab, CN=gw1.lab"):
        C.check_identity(gw_cert, Identity.parse(ident))
    key = C.load_private_key(gw / "gw1.key")
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    C.LocalCredential(gw_cert, key, tuple(sent))

    serial = format(gw_cert.serial_number, "x")
    assert run("crl", "--ca", str(inter), "--out", str(tmp_path / "sub.crl"), "--revoke", serial) == 0
    store.crls = C.load_crls([tmp_path / "sub.crl"])
    with pytest.raises(C.CertificateRevoked):
        C.validate_chain(gw_cert, sent, store, NOW + timedelta(days=1))


@pytest.mark.parametrize("key_type, kind, size", [("rsa3072", rsa.RSAPrivateKey, 3072),
                                                  ("ecdsa-p256", ec.EllipticCurvePrivateKey, 256),
                                                  ("ecdsa-p384", ec.EllipticCurvePrivateKey, 384),
                                                  ("ed25519", ed25519.Ed25519PrivateKey, None)])
def test_key_types(key_type, kind, size):
    ca, ca_key = pki.make_ca("CN=T", NOW, key_type=key_type)
    leaf, key = pki.issue(ca, ca_key, "CN=leaf", NOW, ["leaf.example"], key_type=key_type)
    assert isinstance(key, kind) and (size is None or key.key_size == size)
    assert C.validate_chain(leaf, [], C.TrustStore(cas=[ca]), NOW + timedelta(hours=1))


def test_rsa4096_is_offered():
    assert "rsa4096" in pki.KEY_TYPES
    with pytest.raises(pki.PkiError, match="unknown key type"):
        pki.make_key("dsa")


def test_certificate_contents():
    ca, ca_key = pki.make_ca("C=CH, O=Lab, CN=Lab CA", NOW, path_length=1)
    leaf, _ = pki.issue(ca, ca_key, "C=CH, O=Lab, CN=gw", NOW, ["gw.lab", "2001:db8::1", "a@lab.example"], days=30)
    assert leaf.not_valid_after_utc - NOW == timedelta(days=30)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [type(n).__name__ for n in sans] == ["DNSName", "IPAddress", "RFC822Name"]
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 1


@pytest.mark.parametrize("argv, message", [
    (["ca", "--name", "C=CH, XX=1", "--out", "{tmp}/a"], "bad distinguished name"),
    (["ca", "--name", "C=Switzerland, CN=x", "--out", "{tmp}/a"], "espgw pki: "),
    (["issue", "--ca", "{tmp}/missing", "--out", "{tmp}/b", "--name", "CN=x"], "cannot"),
    (["ca", "--name", "CN=x", "--out", "{tmp}/c", "--days", "0"], "--days must be positive"),
    (["crl", "--ca", "{tmp}/ca", "--out", "{tmp}/x.crl", "--revoke", "zz"], "hex serial"),
    (["issue", "--ca", "{tmp}/ca", "--out", "{tmp}/d", "--name", "CN=x", "--san", "bad name"], "bad subjectAltName"),
])
def test_errors_are_one_line(tmp_path, capsys, argv, message):
    assert run("ca", "--out", str(tmp_path / "ca"), "--name", "CN=ok") == 0
    capsys.readouterr()
    assert run(*[a.format(tmp=tmp_path) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("espgw pki: ") and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_never_overwrites_a_key(tmp_path, capsys):
    assert run("ca", "--out", str(tmp_path), "--name", "CN=one") == 0
    before = (tmp_path / "ca.key").read_bytes()
    assert run("ca", "--out", str(tmp_path), "--name", "CN=two") == 1
    assert "not overwriting" in capsys.readouterr().err and (tmp_path / "ca.key").read_bytes() == before


@pytest.mark.skipif(shutil.which("pki") is None, reason="needs strongSwan's pki")
def test_strongswan_pki_verifies_our_certificates(tmp_path):
    assert run("ca", "--out", str(tmp_path / "ca"), "--name", "C=CH, O=Lab, CN=Lab CA", now=None) == 0
    assert run("issue", "--ca", str(tmp_path / "ca"), "--out", str(tmp_path), "--name", "C=CH, O=Lab, CN=gw",
               "--san", "gw.lab", now=None) == 0
    result = subprocess.run(["pki", "--verify", "--in", str(tmp_path / "gateway.crt"), "--cacert",
                             str(tmp_path / "ca" / "ca.crt")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "certificate trusted" in result.stdout
    printed = subprocess.run(["pki", "--print", "--in", str(tmp_path / "gateway.crt")], capture_output=True,
                             text=True).stdout
    assert 'subject:  "C=CH, O=Lab, CN=gw"' in printed and "gw.lab" in printed
