"""How the daemon's vici commands spell espgw's state the way charon does (swanctl prints these)."""

from __future__ import annotations

from tunnel.daemon.vici import _algorithms, _duration


def test_proposals_as_charon_names_them():
    assert _algorithms("aes256gcm16-prfsha256-ecp256", ike=True) == {
        "encr-alg": "AES_GCM_16", "encr-keysize": 256, "prf-alg": "PRF_HMAC_SHA2_256", "dh-group": "ECP_256"}
    assert _algorithms("aes128-sha256-modp2048", ike=False) == {
        "encr-alg": "AES_CBC", "encr-keysize": 128, "integ-alg": "HMAC_SHA2_256_128", "dh-group": "MODP_2048"}
    assert _algorithms("chacha20poly1305-prfsha384-x25519", ike=True) == {
        "encr-alg": "CHACHA20_POLY1305", "encr-keysize": 256, "prf-alg": "PRF_HMAC_SHA2_384",
        "dh-group": "CURVE_25519"}
    assert _algorithms(None, ike=True) == {}


def test_uptime_as_swanctl_shows_it():
    assert _duration(5) == "5 seconds"
    assert _duration(61) == "1 minute"
    assert _duration(3 * 3600 + 62) == "03:01:02"
    assert _duration(2 * 86400 + 5) == "2 days, 00:00:05"
