"""auth = "pubkey" in the config file: certificates, keys and CAs found as swanctl finds them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from ike.crypto.certs import parse_private_key
from tunnel.ops.config import ConfigError, load_config

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "certs"

CONN = """
[connections.site]
remote_addrs = ["192.0.2.2"]
[connections.site.local]
auth = "{local_auth}"
certs = ["moon.crt"]
[connections.site.remote]
auth = "pubkey"
id = "sun.strongswan.org"
{cacerts}
[connections.site.children.net]
local_ts = ["10.1.0.0/16"]
remote_ts = ["10.2.0.0/16"]
"""


def layout(tmp_path: Path, key_in_private: bool = True) -> Path:
    for folder, name in (("x509", "moon.crt"), ("x509ca", "ca.crt"), ("x509crl", "ca.crl")):
        (tmp_path / folder).mkdir(exist_ok=True)
        shutil.copy(FIXTURES / name, tmp_path / folder / name)
    if key_in_private:
        (tmp_path / "private").mkdir()
        shutil.copy(FIXTURES / "moon.key", tmp_path / "private" / "moon.key")
        (tmp_path / "private" / "moon.key").chmod(0o600)
    return tmp_path


def write(tmp_path: Path, extra: str = "", local_auth: str = "pubkey", cacerts: str = "") -> Path:
    path = tmp_path / "espgw.toml"
    path.write_text(CONN.format(local_auth=local_auth, cacerts=cacerts) + extra)
    return path


def test_swanctl_folders(tmp_path):
    config = load_config(write(layout(tmp_path)))
    conn = config.connection("site")
    assert conn.local.auth == "pubkey" and conn.remote.auth == "pubkey"
    assert str(conn.local.credential.identity) == "C=CH, O=strongSwan, CN=moon.strongswan.org"
    assert "moon.strongswan.org" in repr(conn.local.credential)
    assert len(conn.remote.trust.cas) == 1 and len(conn.remote.trust.crls) == 1
    assert conn.remote.clock_offset > 1e9  # Unix time minus a monotonic clock
    assert "PRIVATE KEY" not in repr(config)


def test_encrypted_key_from_secrets(tmp_path):
    layout(tmp_path, key_in_private=False)
    key = parse_private_key((FIXTURES / "moon.key").read_bytes())
    (tmp_path / "moon-enc.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret passphrase")))
    (tmp_path / "moon-enc.pem").chmod(0o600)
    extra = '[secrets.private-moon]\nfile = "moon-enc.pem"\nsecret = "s3cret passphrase"\n'
    config = load_config(write(tmp_path, extra, cacerts='cacerts = ["ca.crt"]'))
    assert config.connection("site").local.credential is not None
    assert "s3cret" not in repr(config)


def test_wrong_passphrase_is_one_clear_error(tmp_path):
    layout(tmp_path, key_in_private=False)
    key = parse_private_key((FIXTURES / "moon.key").read_bytes())
    (tmp_path / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"right")))
    extra = '[secrets.private-moon]\nfile = "k.pem"\nsecret = "hunter2-xyz"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, extra))
    text = str(info.value)
    assert "local.certs" in text and "passphrase" in text and "hunter2" not in text


def test_missing_key_and_missing_ca(tmp_path):
    layout(tmp_path, key_in_private=False)
    shutil.rmtree(tmp_path / "x509ca")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path))
    text = str(info.value)
    assert "no private key" in text and "no trusted CA" in text


def test_mixed_psk_local_needs_a_psk(tmp_path):
    layout(tmp_path)
    extra = '[secrets.ike-1]\nid = "sun.strongswan.org"\nsecret = "a long pre-shared key"\n'
    conn = load_config(write(tmp_path, extra, local_auth="psk")).connection("site")
    assert conn.local.auth == "psk" and conn.psk and conn.remote.trust is not None
