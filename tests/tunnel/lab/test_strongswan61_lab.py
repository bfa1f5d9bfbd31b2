"""Debian unstable's strongSwan 6.1 in the lab: it runs, and its openssl plugin offers ML-KEM."""

from __future__ import annotations

import pytest

from tunnel.lab.configs import site_to_site
from tunnel.lab.netns import Lab
from tunnel.lab.strongswan import StrongSwan

pytestmark = [pytest.mark.lab, pytest.mark.strongswan]
PQ_PROPOSAL = "aes256gcm16-prfsha384-ecp384-ke1_mlkem768"


def test_strongswan_61_lists_ml_kem():
    with Lab(ipv6=False) as lab, StrongSwan(lab, lab.gwA, "6.1") as gw:
        assert gw.version_string().startswith("6.1")
        algs = gw.swanctl("list-algs").stdout
        section = algs.split("ke:", 1)[1] if "ke:" in algs else algs
        for name in ("ML_KEM_512", "ML_KEM_768", "ML_KEM_1024"):
            assert f"{name}[openssl]" in section, algs


def test_strongswan_61_pair_negotiates_ml_kem_768():
    """6.1 <-> 6.1 with an additional ML-KEM-768 key exchange (IKE_INTERMEDIATE)."""
    with Lab(ipv6=False) as lab:
        conf = {"proposals": [PQ_PROPOSAL], "esp_proposals": ["aes256gcm16"]}
        with StrongSwan(lab, lab.gwA, "6.1", [site_to_site(lab, "A", **conf)]) as gw_a, \
                StrongSwan(lab, lab.gwB, "6.1", [site_to_site(lab, "B", **conf)]):
            out = gw_a.initiate(child="net")
            assert "IKE_INTERMEDIATE" in out
            (sa,) = gw_a.list_sas()
            assert (sa["dh-group"], sa.get("ake1")) == ("ECP_384", "ML_KEM_768")


def test_strongswan_61_accepts_the_proposal_syntax_espgw_parses():
    """The issue's proposal strings (and espgw's format of them) load into strongSwan 6.1."""
    from ike.codec.constants import ProtocolId
    from ike.crypto.proposals import format_proposal, parse_proposals

    ike = ["aes256gcm16-prfsha384-ecp384-ke1_mlkem768",
           "aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke2_mlkem1024",
           "aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke1_none"]
    esp = ["aes256gcm16-ecp384-ke1_mlkem768"]
    assert [format_proposal(p) for p in parse_proposals(ike, ProtocolId.IKE)] == ike
    assert [format_proposal(p) for p in parse_proposals(esp, ProtocolId.ESP)] == esp
    with Lab(ipv6=False) as lab, StrongSwan(lab, lab.gwA, "6.1") as gw:
        out = gw.load_all([site_to_site(lab, "A", proposals=ike, esp_proposals=esp)])
        assert "loaded connection 'lab'" in out, out
        assert "invalid" not in gw.log_text().lower()
