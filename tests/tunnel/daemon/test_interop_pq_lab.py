"""espgw <-> strongSwan 6.1 with hybrid post-quantum key exchange (RFC 9242 / RFC 9370, ML-KEM).

One lab whose public link has a 1280-byte MTU, and one 6.1 charon (Debian unstable root, ML-KEM
from its openssl plugin) serve the module; espgw is on gwA, charon on gwB. At both sides' default
1280-byte fragment size an ML-KEM-768 key share still fits one message; ML-KEM-1024's does not, so
that IKE_INTERMEDIATE goes fragmented (RFC 7383) both ways.
"""

from __future__ import annotations

import re

import pytest

from tunnel.lab.espgw import wait_until
from tunnel.lab.interop import ROLES, FastStrongSwan, peerings
from tunnel.lab.netns import Lab

pytestmark = [pytest.mark.lab, pytest.mark.strongswan]

PATH_MTU = 1280
CASES = {
    "ecp384-mlkem768": ("aes256gcm16-prfsha384-ecp384-ke1_mlkem768",
                        {"dh-group": "ECP_384", "ake1": "ML_KEM_768"}),
    "x25519-mlkem768": ("aes256gcm16-prfsha256-x25519-ke1_mlkem768",
                        {"dh-group": "CURVE_25519", "ake1": "ML_KEM_768"}),
    "x25519-mlkem768-mlkem1024": ("aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke2_mlkem1024",
                                  {"dh-group": "CURVE_25519", "ake1": "ML_KEM_768", "ake2": "ML_KEM_1024"}),
}


@pytest.fixture(scope="module")
def lab():
    with Lab(ipv6=False) as lab:
        for gw in (lab.gwA, lab.gwB):
            lab.run(gw, "ip", "link", "set", "dev", gw.wan_iface, "mtu", str(PATH_MTU))
        yield lab


@pytest.fixture(scope="module")
def swan(lab):
    with FastStrongSwan(lab, lab.gwB, "6.1") as charon:
        yield charon


@pytest.fixture
def peering(lab, swan):
    """make(ike, role, esp=..., **tweak) -> a Peering; closed (and its logs printed) afterwards."""
    with peerings(lab, swan) as make:
        yield make


def _exchanges(log: str, direction: str, exchange: str) -> list[str]:
    """Payload lists of whole messages charon sent or parsed (its lines for fragments left out)."""
    found = re.findall(rf"{direction} {exchange} (?:request|response) \d+ \[ ([^\]]*)\]", log)
    return [payloads for payloads in found if not payloads.startswith("EF(")]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("role", list(ROLES))
def test_hybrid_handshake_fragmented_and_ping(lab, swan, peering, role, case):
    ike, swan_algs = CASES[case]
    p = peering(ike, role).start()
    p.up()
    assert lab.ping(lab.hostA, lab.hostB.addr4, count=3, interval=0.05).ok
    assert lab.ping(lab.hostB, lab.hostA.addr4, count=3, interval=0.05).ok
    ike_mine, ike_theirs = p.ike_pair()
    assert ike_mine["proposal"] == ike
    assert {k: ike_theirs.get(k) for k in swan_algs} == swan_algs
    assert ike_mine["spi_i"] == ike_theirs["initiator-spi"] and ike_mine["spi_r"] == ike_theirs["responder-spi"]
    log = p.swan_log()
    additional = len(swan_algs) - 1
    sent = _exchanges(log, "generating", "IKE_INTERMEDIATE")
    parsed = _exchanges(log, "parsed", "IKE_INTERMEDIATE")
    assert len(sent) == len(parsed) == additional, (sent, parsed)
    assert all(payloads.split() == ["KE"] for payloads in sent + parsed)
    # every datagram fits the 1280-byte path (IP and UDP headers: 28 bytes); an ML-KEM-768 share
    # just fits whole, ML-KEM-1024's crosses as RFC 7383 fragments, both ways
    sizes = [int(n) for n in re.findall(r"(?:received|sending) packet: .* \((\d+) bytes\)", log)]
    assert sizes and max(sizes) + 28 <= PATH_MTU, sizes
    if "ake2" in swan_algs:
        assert re.search(r"splitting IKE message \(\d+ bytes\) into \d+ fragments", log), log
        assert re.search(r"received fragment #\d+ of \d+, reassembled fragmented IKE message", log), log
    assert "Traceback" not in p.espgw_log()


def _followups(log: str, direction: str) -> list[str]:
    return _exchanges(log, direction, "IKE_FOLLOWUP_KE")


@pytest.mark.parametrize("role", list(ROLES))
def test_rekeys_with_ml_kem_both_sides(lab, swan, peering, role):
    """CHILD SA with PFS + ML-KEM-768 (esp_proposals aes256gcm16-ecp384-ke1_mlkem768) and the
    hybrid IKE SA: strongSwan rekeys both first (IKE_FOLLOWUP_KE from charon), then espgw on its
    rekey times (IKE_FOLLOWUP_KE from espgw); traffic passes before and after."""
    ike, _ = CASES["ecp384-mlkem768"]
    esp = "aes256gcm16-ecp384-ke1_mlkem768"
    p = peering(ike, role, esp=esp, child_rekey_time=7, child_rand_time=0.5, child_life_time=60, rekey_time=9,
                over_time=60).start()
    mine0, _ = p.up()
    ike0, _ = p.ike_pair()
    assert lab.ping(lab.hostA, lab.hostB.addr4, count=2, interval=0.05).ok
    assert "rekey completed" in swan.rekey(child=p.child)
    mine1, theirs1 = p.wait_child(lambda e, s: e["spi_in"] != mine0["spi_in"], 8, "strongSwan's CHILD rekey")
    assert mine1["proposal"] == esp and (theirs1.get("dh-group"), theirs1.get("ake1")) == ("ECP_384", "ML_KEM_768")
    assert "rekey completed" in swan.rekey(ike=p.espgw_conn.name)

    def requests(direction: str) -> list[str]:  # IKE_FOLLOWUP_KE requests: KE and the link notify
        return [x for x in _followups(p.swan_log(), direction) if "N(ADD_KE)" in x.split()]

    def espgw_rekeyed_both():
        parsed = _exchanges(p.swan_log(), "parsed", "CREATE_CHILD_SA")
        return (any("N(REKEY_SA)" in x and "TSi" in x for x in parsed)
                and any("TSi" not in x and "KE" in x.split() for x in parsed) and len(requests("parsed")) >= 2)
    wait_until(espgw_rekeyed_both, 20, "espgw to rekey its CHILD and IKE SA", interval=0.2, on_timeout=p.logs)
    # each side's CHILD rekey and IKE rekey ran one IKE_FOLLOWUP_KE each
    assert len(requests("generating")) >= 2 and len(requests("parsed")) >= 2
    mine, _ = p.wait_child(lambda e, s: e["spi_in"] not in (mine0["spi_in"], mine1["spi_in"]), 8,
                           "espgw's CHILD rekey")
    ike_now, ike_theirs = p.ike_pair()
    assert ike_now["spi_i"] != ike0["spi_i"] and ike_now["proposal"] == ike
    assert (ike_theirs.get("dh-group"), ike_theirs.get("ake1")) == ("ECP_384", "ML_KEM_768")
    assert lab.ping(lab.hostA, lab.hostB.addr4, count=3, interval=0.05).ok
    assert lab.ping(lab.hostB, lab.hostA.addr4, count=3, interval=0.05).ok
    assert "Traceback" not in p.espgw_log() and '"expired"' not in p.espgw_log()
