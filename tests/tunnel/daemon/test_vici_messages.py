"""How the daemon's vici commands spell espgw's state the way charon does (swanctl prints these)."""

from __future__ import annotations

from tunnel.daemon.vici_messages import algorithms, duration, ike_sa


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


def test_additional_key_exchanges_as_charon_61_lists_them():
    """vici_query.c (6.1) adds ``ake1``..``ake7`` after dh-group, from the ADDITIONAL_KEY_EXCHANGE_N
    transforms, named by key_exchange_method_names; a ``keN_none`` that was chosen is no exchange."""
    assert algorithms("aes256gcm16-prfsha384-ecp384-ke1_mlkem768", ike=True) == {
        "encr-alg": "AES_GCM_16", "encr-keysize": 256, "prf-alg": "PRF_HMAC_SHA2_384", "dh-group": "ECP_384",
        "ake1": "ML_KEM_768"}
    assert algorithms("aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke2_mlkem1024", ike=True) == {
        "encr-alg": "AES_GCM_16", "encr-keysize": 256, "prf-alg": "PRF_HMAC_SHA2_256",
        "dh-group": "CURVE_25519", "ake1": "ML_KEM_768", "ake2": "ML_KEM_1024"}
    assert algorithms("aes256gcm16-ecp384-ke3_ecp256-ke1_mlkem1024-ke2_none", ike=False) == {
        "encr-alg": "AES_GCM_16", "encr-keysize": 256, "dh-group": "ECP_384",
        "ake1": "ML_KEM_1024", "ake3": "ECP_256"}


def test_list_sa_shows_the_key_exchanges_of_a_hybrid_sa_and_its_rekeyed_child():
    child = {"name": "net", "unique_id": 2, "state": "INSTALLED", "mode": "tunnel", "spi_in": "c1000001",
             "spi_out": "c2000002", "proposal": "aes256gcm16-ecp384-ke1_mlkem768", "local_ts": ["10.0.0.0/24"],
             "remote_ts": ["10.0.5.0/24"]}
    sa = {"unique_id": 1, "state": "ESTABLISHED", "local_addr": "192.0.2.1", "local_port": 500,
          "local_id": "gwa.lab", "remote_addr": "192.0.2.2", "remote_port": 500, "remote_id": "gwb.lab",
          "spi_i": "11" * 8, "spi_r": "22" * 8, "initiator": True, "nat_local": False, "nat_remote": False,
          "proposal": "aes256gcm16-prfsha384-ecp384-ke1_mlkem768", "established": 3.0, "rekey_in": None,
          "children": [child]}
    listed = ike_sa(sa)
    assert (listed["dh-group"], listed["ake1"]) == ("ECP_384", "ML_KEM_768")
    assert "ake2" not in listed
    entry = listed["child-sas"]["net-2"]
    assert (entry["dh-group"], entry["ake1"]) == ("ECP_384", "ML_KEM_768")
    # the CHILD SA of IKE_AUTH has no key exchange of its own (RFC 7296 s1.2): no fields at all
    child["proposal"] = "aes256gcm16"
    assert not {"dh-group", "ake1"} & set(ike_sa(sa)["child-sas"]["net-2"])
