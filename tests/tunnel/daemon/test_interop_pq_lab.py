"""espgw <-> strongSwan 6.1 with hybrid post-quantum key exchange (RFC 9242 / RFC 9370, ML-KEM).

One lab whose public link has a 1280-byte MTU, and one 6.1 charon (Debian unstable root, ML-KEM
from its openssl plugin) serve the module; espgw is on gwA, charon on gwB. At both sides' default
1280-byte fragment size an ML-KEM-768 key share still fits one message; ML-KEM-1024's does not, so
that IKE_INTERMEDIATE goes fragmented (RFC 7383) both ways.
"""

from __future__ import annotations

import re

import pytest

from tunnel.lab.interop import FastStrongSwan, Peering
from tunnel.lab.netns import Lab

pytestmark = [pytest.mark.lab, pytest.mark.strongswan]

ROLES = {"espgw-init": True, "swan-init": False}
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
    made: list[Peering] = []

    def make(ike: str, role: str, esp: str = "aes256gcm16", **tweak) -> Peering:
        p = Peering(lab, swan, "gcm", espgw_initiates=ROLES[role])
        for conn in (p.espgw_conn, p.swan_conn):
            conn.proposals = [ike]
            conn.children[0].esp_proposals = [esp]
        for key, value in tweak.items():
            target = p.espgw_conn.children[0] if key.startswith("child_") else p.espgw_conn
            setattr(target, key.removeprefix("child_"), value)
        made.append(p)
        return p

    yield make
    for p in made:
        print(p.logs())  # shown only when the test failed
        p.close()


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
