"""tunnel.daemon.reload: which connections a new configuration adds, removes, changes or keeps."""

from __future__ import annotations

import dataclasses
import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ike.config import AuthConfig, ChildConfig, ConnectionConfig, TrafficSelector
from ike.crypto.certs import LocalCredential
from ike.pools import AddressPool
from tunnel.daemon.reload import (diff_connections, fingerprint, pools_needing_restart, same_connection,
                                   settings_needing_restart)
from tunnel.ops.config import GatewayConfig


def conn(name: str, remote: str = "192.0.2.2", **kw) -> ConnectionConfig:
    return ConnectionConfig(name=name, local_addrs=["192.0.2.1"], remote_addrs=[remote],
                            local=AuthConfig(id="a"), remote=AuthConfig(id="b"), psk=b"p" * 20,
                            children=[ChildConfig("net", [TrafficSelector.from_cidr("10.0.0.0/24")],
                                                  [TrafficSelector.from_cidr("10.0.5.0/24")])], **kw)


def test_diff_names_added_removed_changed_and_unchanged_in_order():
    old = [conn("keep"), conn("edit"), conn("gone")]
    new = [conn("edit", remote="192.0.2.9"), conn("keep"), conn("new")]
    diff = diff_connections(old, new)
    assert diff.as_dict() == {"added": ["new"], "removed": ["gone"], "changed": ["edit"], "unchanged": ["keep"]}


def test_a_child_setting_or_the_psk_is_a_change():
    changed_child = conn("c")
    changed_child.children[0].start_action = "trap"
    assert not same_connection(conn("c"), changed_child)
    assert not same_connection(conn("c"), dataclasses.replace(conn("c"), psk=b"q" * 20))
    assert same_connection(conn("c"), conn("c"))


def test_only_managed_connections_are_removed():
    """Connections vici's load-conn added are not the file's: a reload of the file leaves them."""
    diff = diff_connections([conn("file"), conn("from-vici")], [conn("file")], managed={"file"})
    assert diff.removed == [] and diff.unchanged == ["file"]


def _credential() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-a")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _with_cert(cert_pem: bytes, key_pem: bytes, offset: float) -> ConnectionConfig:
    credential = LocalCredential(x509.load_pem_x509_certificate(cert_pem),
                                 serialization.load_pem_private_key(key_pem, None))  # type: ignore[arg-type]
    c = conn("cert")
    c.local = AuthConfig(auth="pubkey", credential=credential, clock_offset=offset)
    return c


def test_the_same_certificate_loaded_twice_is_no_change():
    """Key objects compare by identity and the clock offset is taken at each load: neither is a change."""
    cert_pem, key_pem = _credential()
    first, second = _with_cert(cert_pem, key_pem, 1.0e9), _with_cert(cert_pem, key_pem, 1.0e9 + 0.003)
    assert first != second  # the dataclasses differ...
    assert same_connection(first, second)  # ...the configuration does not
    other_cert, other_key = _credential()
    assert not same_connection(first, _with_cert(other_cert, other_key, 1.0e9))


def test_fingerprint_handles_plain_values():
    assert fingerprint({"b": [1, 2], "a": (3,)}) == (("a", (3,)), ("b", (1, 2)))


def test_gateway_settings_that_need_a_restart_are_named():
    running = GatewayConfig(tun_name="espgw0", control_socket="/run/a.sock")
    new = GatewayConfig(tun_name="espgw1", control_socket="/run/b.sock")
    messages = settings_needing_restart(running, new, overridden={"control_socket"})
    assert messages == ["gateway.tun_name changed from 'espgw0' to 'espgw1': takes effect after a restart "
                        "(still 'espgw0')"]
    assert settings_needing_restart(running, dataclasses.replace(running)) == []


def test_changed_pools_are_named_as_needing_a_restart():
    running = [AddressPool("rw", "10.3.0.0/28"), AddressPool("old", "10.4.0.0/28")]
    new = [AddressPool("rw", "10.3.0.0/27"), AddressPool("add", "10.5.0.0/28")]
    names = [m.split(":")[0] for m in pools_needing_restart(running, new)]
    assert names == ["pools.add", "pools.old", "pools.rw"]
    assert pools_needing_restart(running, [AddressPool("rw", "10.3.0.0/28"), AddressPool("old", "10.4.0.0/28")]) == []
