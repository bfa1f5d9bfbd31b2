"""load-conn with certificate authentication: swanctl's certs/cacerts blobs, keys and CAs from the
vici credential store (load-key, load-cert, load-authority), through espgw's config loader."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from ike.crypto.certs import LocalCredential
from tunnel.daemon.vici_messages import connection
from tunnel.ops import credentials
from tunnel.ops.pki import issue, make_ca, make_crl, make_intermediate
from tunnel.ops.vici.credstore import ViciCredentials
from tunnel.ops.vici.swanctl_conf import ViciConfig, ViciConfigError

NOW = datetime.now(UTC) - timedelta(days=1)
PEM, DER = serialization.Encoding.PEM, serialization.Encoding.DER


@pytest.fixture(scope="module")
def pki():
    ca_cert, ca_key = make_ca("CN=Vici Test CA", NOW, key_type="ecdsa-p256")
    cert, key = issue(ca_cert, ca_key, "CN=gw-a.example.net", NOW, sans=["gw-a.example.net"], key_type="ecdsa-p256")
    other_ca, _ = make_ca("CN=Other CA", NOW, key_type="ecdsa-p256")
    return ca_cert, ca_key, cert, key, other_ca


def key_der(key) -> bytes:
    return key.private_bytes(DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def message(cert_blob: bytes | None, cacert_blobs: list[bytes] | None = None, **local) -> dict:
    """A load-conn as swanctl 5.9.8 sends it for certs = gw.pem / cacerts = ca.pem."""
    local_section = {"auth": b"pubkey", **local}
    if cert_blob is not None:
        local_section["certs"] = [cert_blob]
    remote = {"auth": b"pubkey", "id": b"gw-b.example.net"}
    if cacert_blobs is not None:
        remote["cacerts"] = cacert_blobs
    return {"office": {
        "local_addrs": [b"192.0.2.1"], "remote_addrs": [b"192.0.2.2"],
        "local": local_section, "remote": remote,
        "children": {"lan": {"local_ts": [b"10.0.0.0/24"], "remote_ts": [b"10.0.5.0/24"]}},
    }}


def store_with(pki, *, key=True, ca=True) -> ViciCredentials:
    ca_cert, _, cert, gw_key, _ = pki
    store = ViciCredentials()
    store.load_cert({"type": b"X509", "flag": b"NONE", "data": cert.public_bytes(PEM)})  # x509/
    if ca:
        store.load_cert({"type": b"X509", "flag": b"CA", "data": ca_cert.public_bytes(PEM)})  # x509ca/
    if key:
        store.load_key({"type": b"any", "data": key_der(gw_key)})  # private/
    return store


def test_certificate_connection_takes_key_and_ca_from_the_store(pki):
    ca_cert, _, cert, gw_key, _ = pki
    conn = ViciConfig(store_with(pki)).load_conn(message(cert.public_bytes(PEM)))
    assert conn.local.auth == "pubkey" and conn.remote.auth == "pubkey"
    assert conn.local.credential.certificate == cert
    assert conn.local.credential.key.public_key() == gw_key.public_key()
    assert conn.remote.trust.cas == [ca_cert]  # no cacerts: every loaded CA
    assert not conn.psk and conn.remote.clock_offset != 0.0


def test_der_blobs_cacerts_and_authorities(pki):
    ca_cert, _, cert, _, other_ca = pki
    store = store_with(pki, ca=False)
    store.load_authority({"other": {"cacert": other_ca.public_bytes(DER)}})
    conn = ViciConfig(store).load_conn(message(cert.public_bytes(DER)))
    assert conn.remote.trust.cas == [other_ca]  # an authority is a trust anchor too
    conn = ViciConfig(store).load_conn(message(cert.public_bytes(DER), [ca_cert.public_bytes(DER)]))
    assert conn.remote.trust.cas == [ca_cert]  # cacerts: only those


def test_intermediates_after_the_certificate_and_crls_apply(pki):
    ca_cert, ca_key, _, _, _ = pki
    ica, ica_key = make_intermediate(ca_cert, ca_key, "CN=Vici Intermediate", NOW, key_type="ecdsa-p256")
    leaf, leaf_key = issue(ica, ica_key, "CN=gw-a.example.net", NOW, sans=["gw-a.example.net"], key_type="ecdsa-p256")
    store = store_with(pki)
    store.load_key({"type": b"any", "data": key_der(leaf_key)})
    crl = make_crl(ca_cert, ca_key, [12345], NOW)
    store.load_cert({"type": b"X509_CRL", "data": crl.public_bytes(DER)})
    conn = ViciConfig(store).load_conn(message(leaf.public_bytes(PEM) + ica.public_bytes(PEM)))
    assert conn.local.credential.intermediates == (ica,)
    assert conn.remote.trust.crls == [crl]


def test_loaded_intermediates_are_sent_like_charon_sends_them(pki):
    """certs = the end-entity certificate alone; the intermediate sits in x509ca/ (load-cert CA):
    it goes out with it, the self-signed root does not."""
    ca_cert, ca_key, _, _, _ = pki
    ica, ica_key = make_intermediate(ca_cert, ca_key, "CN=Vici Intermediate", NOW, key_type="ecdsa-p256")
    leaf, leaf_key = issue(ica, ica_key, "CN=gw-a.example.net", NOW, key_type="ecdsa-p256")
    store = store_with(pki)
    store.load_cert({"type": b"X509", "flag": b"CA", "data": ica.public_bytes(PEM)})
    store.load_key({"type": b"ECDSA", "data": key_der(leaf_key)})
    conn = ViciConfig(store).load_conn(message(leaf.public_bytes(DER)))
    assert conn.local.credential.intermediates == (ica,)
    unrelated = ViciConfig(store).load_conn(message(pki[2].public_bytes(PEM)))
    assert unrelated.local.credential.intermediates == ()  # issued by the root itself


@pytest.mark.parametrize("change, fragment", [
    (lambda m, pki: m["office"]["remote"].update(cacerts=[b"not a certificate"]),
     "vici: connections.office.remote.cacerts: entry 1: not an X.509 certificate"),
    (lambda m, pki: m["office"]["local"].update(pubkeys=[b"\x30\x82"]),
     "connections.office.local.pubkeys: raw public keys are not supported"),
    (lambda m, pki: m["office"]["local"].update(cert_policy=b"1.2.3"),
     "connections.office.local.cert_policy: unknown key"),
    (lambda m, pki: m["office"]["local"].update(auth=b"eap-mschapv2"), "connections.office.local.auth: expected"),
    (lambda m, pki: m["office"]["local"].pop("certs"),
     "connections.office.local.certs: missing; auth = pubkey needs our certificate"),
    (lambda m, pki: m["office"]["local"].update(certs=[pki[4].public_bytes(PEM)]),
     'local.certs: no private key loaded for the certificate "CN=Other CA"'),
])
def test_errors_name_the_key(pki, change, fragment):
    msg = message(pki[2].public_bytes(PEM))
    change(msg, pki)
    config = ViciConfig(store_with(pki))
    with pytest.raises(ViciConfigError) as info:
        config.load_conn(msg)
    assert fragment in info.value.errmsg
    assert "PRIVATE" not in info.value.errmsg
    assert config.connections() == []  # nothing half-loaded


def test_a_certificate_without_its_key_or_without_any_ca(pki):
    cert = pki[2]
    with pytest.raises(ViciConfigError, match="no private key loaded .* load-key"):
        ViciConfig(store_with(pki, key=False)).load_conn(message(cert.public_bytes(PEM)))
    with pytest.raises(ViciConfigError, match="remote.cacerts: no trusted CA"):
        ViciConfig(store_with(pki, ca=False)).load_conn(message(cert.public_bytes(PEM)))
    with pytest.raises(ViciConfigError, match="no private key loaded"):
        ViciConfig().load_conn(message(cert.public_bytes(PEM)))  # no store: nothing is known


def test_a_refused_reload_keeps_the_loaded_connection(pki):
    config = ViciConfig(store_with(pki))
    good = config.load_conn(message(pki[2].public_bytes(PEM)))
    with pytest.raises(ViciConfigError):
        config.load_conn(message(pki[4].public_bytes(PEM)))
    assert config.connections() == [good]


def test_loading_the_same_files_again_is_unchanged(pki):
    """swanctl --load-all sends every credential and connection again: an unchanged connection
    must compare equal, so the gateway keeps its SAs."""
    store = store_with(pki)
    config = ViciConfig(store)
    first = config.load_conn(message(pki[2].public_bytes(PEM)))
    again = store_with(pki)  # the same files, parsed anew
    for key in again.keys.values():
        store.load_key({"type": b"any", "data": key_der(key)})
    store.load_cert({"type": b"X509", "flag": b"CA", "data": pki[0].public_bytes(DER)})
    assert len(store.cas) == 1 and len(store.keys) == 1
    assert config.load_conn(message(pki[2].public_bytes(PEM))) == first


def test_file_and_inline_certificates_share_one_path(pki, tmp_path):
    """The file loader reads swanctl.conf's inline 0x/0s blobs too; a bad one is a clear error."""
    ca_cert, _, cert, gw_key, _ = pki
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "gw.der").write_bytes(key_der(gw_key))
    inline = "0x" + cert.public_bytes(DER).hex()
    found = credentials.local_credential(tmp_path, [inline], [])
    assert isinstance(found, LocalCredential) and found.certificate == cert
    trust = credentials.trust_store(tmp_path, ["0s" + base64.b64encode(ca_cert.public_bytes(PEM)).decode()])
    assert trust.cas == [ca_cert]
    with pytest.raises(credentials.CertError, match='certificate "CN=gw-a.example.net"') as info:
        credentials.local_credential(tmp_path / "elsewhere", [inline], [])
    assert inline not in str(info.value)  # named by its subject, not dumped
    with pytest.raises(credentials.CertError, match="not valid hex"):
        credentials.trust_store(tmp_path, ["0xzz"])
    with pytest.raises(credentials.CertError, match="a file name"):
        credentials.StoredCredentials().trust_store(["ca.pem"])


def test_list_conns_shows_public_key_authentication(pki):
    conn = ViciConfig(store_with(pki)).load_conn(message(pki[2].public_bytes(PEM)))
    listed = connection(conn)
    assert listed["local-1"] == {"class": "public key", "id": "CN=gw-a.example.net", "certs": ["CN=gw-a.example.net"]}
    assert listed["remote-1"] == {"class": "public key", "id": "gw-b.example.net"}
