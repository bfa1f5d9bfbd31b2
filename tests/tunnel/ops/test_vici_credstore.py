"""The vici credential store: load-cert, load-key, load-authority from blobs, as swanctl sends them."""

from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization

from tunnel.ops.pki import issue, make_ca
from tunnel.ops.vici.credstore import ViciCredentials, key_id
from tunnel.ops.vici.swanctl_conf import ViciConfigError

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def pki():
    ca_cert, ca_key = make_ca("CN=Test CA", NOW)
    cert, key = issue(ca_cert, ca_key, "CN=gw", NOW, sans=["gw.example"])
    return ca_cert, cert, key


def der(cert):
    return cert.public_bytes(serialization.Encoding.DER)


def key_der(key):
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_load_cert_key_and_authority(pki):
    ca_cert, cert, key = pki
    store = ViciCredentials()
    store.load_cert({"type": b"X509", "flag": b"CA", "data": der(ca_cert)})
    store.load_cert({"type": b"X509", "flag": b"NONE", "data": der(cert)})
    ident = store.load_key({"type": b"any", "data": key_der(key)})
    store.load_authority({"ca": {"cacert": der(ca_cert)}})
    assert store.cas == [ca_cert] and store.certs == [cert]
    assert ident == key_id(cert.public_key()) and list(store.keys) == [ident]
    assert list(store.authorities) == ["ca"]
    assert "PRIVATE" not in repr(store) and "keys" not in repr(store)
    store.unload_key({"id": ident.encode()})
    store.unload_authority({"name": b"ca"})
    assert not store.keys and not store.authorities
    store.clear()
    assert not store.cas and not store.certs


def test_garbage_is_a_clear_error():
    store = ViciCredentials()
    with pytest.raises(ViciConfigError, match="load-cert"):
        store.load_cert({"type": b"X509", "flag": b"NONE", "data": b"garbage"})
    with pytest.raises(ViciConfigError, match="load-key") as err:
        store.load_key({"type": b"rsa", "data": b"secret-garbage"})
    assert "secret-garbage" not in str(err.value)
    with pytest.raises(ViciConfigError, match="missing data"):
        store.load_key({"type": b"rsa"})


def test_authority_keys_espgw_cannot_use_are_named(pki):
    store = ViciCredentials()
    store.load_authority({"ca": {"cacert": der(pki[0]), "crl_uris": [b"http://crl.example/ca.crl"]}})
    with pytest.raises(ViciConfigError, match="authorities.hsm.module: not supported"):
        store.load_authority({"hsm": {"cacert": der(pki[0]), "module": b"opensc"}})
    assert list(store.authorities) == ["ca"]
