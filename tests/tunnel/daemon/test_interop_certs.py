"""Certificate authentication (issue #14) against real strongSwan in the namespace lab: espgw on
gwA, strongSwan on gwB, both roles; every key type, a chain through an intermediate CA, mixed
PSK/pubkey, and the failures (expired, untrusted CA, revoked, ID mismatch) ending on both sides.

One lab and one charon per strongSwan version for the whole matrix; each case rewrites the
certificates, reloads charon (swanctl --load-all) and starts its own espgw.
"""

from __future__ import annotations

import json

import pytest

from ike.config import AuthConfig
from tunnel.lab.espgw import tcp_transfer, wait_until
from tunnel.lab.interop import FastStrongSwan, Peering
from tunnel.lab.lab_pki import LabPki
from tunnel.lab.netns import Lab
from tunnel.lab.strongswan import StrongSwanError

pytestmark = [pytest.mark.lab, pytest.mark.strongswan]

ROLES = {"espgw-init": True, "swan-init": False}


@pytest.fixture(scope="module")
def lab():
    with Lab() as lab:
        yield lab


@pytest.fixture(scope="module", params=["5.9", "6.0"])
def swan(request, lab):
    with FastStrongSwan(lab, lab.gwB, request.param, rmem_default=4 << 20) as charon:
        yield charon


@pytest.fixture(scope="module")
def pki():
    return LabPki.make(), LabPki.make(intermediate=True), LabPki.make(name="Stranger CA")  # plain, chained, a stranger


@pytest.fixture(scope="module")
def revoked(pki):
    """Revoked certificates for both gateways and ONE CRL for the module (charon caches CRLs)."""
    plain = pki[0]
    creds = {fqdn: plain.gateway(fqdn, "ecdsa256") for fqdn in ("gwa.lab", "gwb.lab")}
    revoker = LabPki(plain.ca, plain.ca_key)
    revoker.revoke(*(c.certificate for c in creds.values()))
    return creds, revoker.trust()


@pytest.fixture
def peering(lab, swan):
    made: list[Peering] = []

    def make(role: str) -> Peering:
        p = Peering(lab, swan, "gcm", espgw_initiates=ROLES[role])
        made.append(p)
        return p

    yield make
    for p in made:
        print(p.logs())
        p.close()


def pubkey(p: Peering, pki: LabPki, kind: str, *, swan_kind: str | None = None, pss: bool = False,
           espgw_cert=None, swan_trust=None, espgw_trust=None, espgw_local: str = "pubkey",
           swan_local: str = "pubkey") -> None:
    """Certificates on both sides (the ids stay gwa.lab / gwb.lab: DNS subjectAltNames)."""
    mine = espgw_cert or pki.gateway("gwa.lab", kind)
    theirs = pki.gateway("gwb.lab", swan_kind or kind)
    e, s = p.espgw_conn, p.swan_conn
    e.local = AuthConfig(espgw_local, id="gwa.lab", credential=mine if espgw_local == "pubkey" else None, rsa_pss=pss)
    e.remote = AuthConfig(swan_local, id="gwb.lab", trust=espgw_trust or pki.trust())
    s.local = AuthConfig(swan_local, id="gwb.lab", credential=theirs if swan_local == "pubkey" else None, rsa_pss=pss)
    s.remote = AuthConfig(espgw_local, id="gwa.lab", trust=swan_trust or pki.trust())


def traffic(lab, p: Peering) -> None:
    p.up(timeout=15)
    assert lab.ping(lab.hostA, lab.hostB.addr4, count=2, interval=0.05).ok
    assert lab.ping(lab.hostB, lab.hostA.addr4, count=2, interval=0.05).ok
    sent, received = tcp_transfer(lab, lab.hostA, lab.hostB, lab.hostB.addr4, 1 << 20, seed=3)
    assert sent == received and sent.startswith(str(1 << 20))


CASES = {  # name: (key type, rsa_pss)
    "rsa3072-pkcs1": ("rsa3072", False),
    "rsa3072-pss": ("rsa3072", True),
    "ecdsa256": ("ecdsa256", False),
    "ecdsa384": ("ecdsa384", False),
    "ed25519": ("ed25519", False),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("role", list(ROLES))
def test_key_types(lab, swan, peering, pki, role, case):
    kind, pss = CASES[case]
    p = peering(role)
    pubkey(p, pki[0], kind, pss=pss)
    p.start()
    traffic(lab, p)
    ike_mine, ike_theirs = p.ike_pair()
    assert ike_mine["remote_id"] == "gwb.lab" and ike_mine["local_id"] == "gwa.lab"
    assert ike_mine["local_auth"].startswith("pubkey ") and ike_mine["remote_auth"].startswith("pubkey ")
    if pss:
        assert "PSS" in ike_mine["local_auth"]
    log = p.swan_log()
    assert "authentication of 'gwa.lab' with" in log and "successful" in log
    assert "Traceback" not in p.espgw_log()


@pytest.mark.parametrize("role", list(ROLES))
def test_chain_through_intermediate(lab, swan, peering, pki, role):
    p = peering(role)
    pubkey(p, pki[1], "ecdsa256")
    p.start()
    traffic(lab, p)


@pytest.mark.parametrize("role", list(ROLES))
def test_rsa4096_chain_fragmented_over_1280_byte_path(lab, swan, peering, role):
    """Root, intermediate and gateway certificates all RSA-4096: each IKE_AUTH message carries two
    of them and must be fragmented (RFC 7383) to cross a 1280-byte path, both directions."""
    big = LabPki.make(intermediate=True, ca_kind="rsa4096", intermediate_kind="rsa4096")
    p = peering(role)
    pubkey(p, big, "rsa4096")
    wans = [(lab.gwA, lab.gwA.wan_iface), (lab.gwB, lab.gwB.wan_iface)]
    for gw, iface in wans:
        lab.run(gw, "ip", "link", "set", iface, "mtu", "1280")
    try:
        p.start()
        traffic(lab, p)
    finally:
        for gw, iface in wans:
            lab.run(gw, "ip", "link", "set", iface, "mtu", "1500")
    log = p.swan_log()
    assert "parsed IKE_AUTH" in log and "EF(" in log  # charon received and sent encrypted fragments
    if ROLES[role]:  # espgw's own IKE_AUTH request went out in fragments
        sent = [json.loads(line) for line in p.espgw_log().splitlines()
                if '"request_sent"' in line and '"IKE_AUTH"' in line]
        assert sent and sent[0]["fragments"] > 1


@pytest.mark.parametrize("mix", ["espgw-pubkey", "espgw-psk"])
@pytest.mark.parametrize("role", list(ROLES))
def test_mixed_psk_and_pubkey(lab, swan, peering, pki, role, mix):
    p = peering(role)
    if mix == "espgw-pubkey":
        pubkey(p, pki[0], "ecdsa256", swan_local="psk")
    else:
        pubkey(p, pki[0], "ecdsa256", espgw_local="psk")
    p.start()
    traffic(lab, p)


FAILURES = ["expired", "untrusted", "revoked", "id-mismatch"]


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("blame", ["espgw-cert", "swan-cert"])
@pytest.mark.parametrize("role", list(ROLES))
def test_failures_end_both_sides(lab, swan, peering, pki, revoked, role, failure, blame):
    """The blamed side's certificate is bad; the other side refuses it; nothing is left anywhere."""
    p = peering(role)
    plain, _, stranger = pki
    fqdn = "gwa.lab" if blame == "espgw-cert" else "gwb.lab"
    bad = {"expired": plain.gateway(fqdn, "ecdsa256", expired=True),
           "untrusted": stranger.gateway(fqdn, "ecdsa256"),
           "revoked": revoked[0][fqdn],
           "id-mismatch": plain.gateway("other.lab", "ecdsa256")}[failure]
    judge_trust = revoked[1] if failure == "revoked" else plain.trust()
    if blame == "espgw-cert":
        pubkey(p, plain, "ecdsa256", espgw_cert=bad, swan_trust=judge_trust)
    else:
        pubkey(p, plain, "ecdsa256", espgw_trust=judge_trust)
        p.swan_conn.local.credential = bad
    p.start()
    if ROLES[role]:
        p.gw.request("initiate", child=p.child)
    else:
        with pytest.raises(StrongSwanError):
            swan.initiate(child=p.child, timeout=5)
    wait_until(lambda: "AUTHENTICATION_FAILED" in p.espgw_log() or "AUTH_FAILED" in p.swan_log(), 10,
               "a refusal", on_timeout=p.logs)
    p.wait_gone(10)
    espgw_log = p.espgw_log()
    assert "Traceback" not in espgw_log
    failures = [json.loads(line) for line in espgw_log.splitlines() if '"negotiation_failed"' in line]
    assert len(failures) == 1 and failures[0]["notify"] == "AUTHENTICATION_FAILED"
    if blame == "swan-cert":  # espgw judged: its one line names the reason
        word = {"expired": "expired", "untrusted": "untrusted", "revoked": "revoked",
                "id-mismatch": "identity"}[failure]
        assert word in espgw_log
