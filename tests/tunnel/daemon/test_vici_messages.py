"""How the daemon's vici commands spell espgw's state the way charon does (swanctl prints these)."""

from __future__ import annotations

from tunnel.daemon.vici_messages import algorithms, duration


def test_proposals_as_charon_names_them():
    assert algorithms("aes256gcm16-prfsha256-ecp256", ike=True) == {
        "encr-alg": "AES_GCM_16", "encr-keysize": 256, "prf-alg": "PRF_HMAC_SHA2_256", "dh-group": "ECP_256"}
    assert algorithms("aes128-sha256-modp2048", ike=False) == {
        "encr-alg": "AES_CBC", "encr-keysize": 128, "integ-alg": "HMAC_SHA2_256_128", "dh-group": "MODP_2048"}
    assert algorithms("chacha20poly1305-prfsha384-x25519", ike=True) == {
        "encr-alg": "CHACHA20_POLY1305", "encr-keysize": 256, "prf-alg": "PRF_HMAC_SHA2_384",
        "dh-group": "CURVE_25519"}
    assert algorithms(None, ike=True) == {}


def test_uptime_as_swanctl_shows_it():
    assert duration(5) == "5 seconds"
    assert duration(61) == "1 minute"
    assert duration(3 * 3600 + 62) == "03:01:02"
    assert duration(2 * 86400 + 5) == "2 days, 00:00:05"
