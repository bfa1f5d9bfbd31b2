"""swanctl loads a certificate connection into a running espgw over vici (issue #17): Debian's
swanctl 5.9.8 runs ``--load-all --file F`` with x509/, x509ca/ and private/ beside F, then
``--initiate`` brings the tunnel up against strongSwan 5.9 on gwB, both sides authenticating with
certificates of one lab root CA. espgw's certificate comes from an intermediate CA that only its
x509ca/ holds (``certs`` names the end-entity certificate alone), so charon accepts it only if
espgw sends the intermediate, as charon would. The lab and espgw fixtures are test_vici_lab's;
only charon differs (its connection uses certificates too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ike.config import AuthConfig, ConnectionConfig
from tunnel.lab.configs import site_to_site
from tunnel.lab.espgw import EspgwGateway
from tunnel.lab.lab_pki import LabPki, write_swanctl_files
from tunnel.lab.netns import Lab
from tunnel.lab.strongswan import _SWANCTL_SUBDIRS, StrongSwan
from tunnel.lab.swanctl_conf import render_swanctl_conf

from . import test_vici_lab as vici_lab

# test_vici_lab's fixtures and marks, shared: this module gets its own lab and espgw, and espgw
# waits for this module's `charon`
lab, espgw, pytestmark, swanctl = vici_lab.lab, vici_lab.espgw, vici_lab.pytestmark, vici_lab.swanctl


@pytest.fixture(scope="module")
def pki() -> LabPki:
    return LabPki.make(intermediate=True, ca_kind="ecdsa256")


def cert_conn(lab: Lab, side: str, pki: LabPki) -> ConnectionConfig:
    """site_to_site with certificates (the lab ids are their DNS subjectAltNames): gwA's through the
    intermediate, gwB's straight from the root."""
    conn = site_to_site(lab, side)
    me, peer = conn.local.id, conn.remote.id
    assert me is not None and peer is not None
    issuer = pki if side == "A" else LabPki(pki.ca, pki.ca_key)
    conn.local = AuthConfig("pubkey", id=me, credential=issuer.gateway(me, "ecdsa256"))
    conn.remote = AuthConfig("pubkey", id=peer, trust=pki.trust())
    return conn


@pytest.fixture(scope="module")
def charon(lab, pki):
    with StrongSwan(lab, lab.gwB, "5.9", [cert_conn(lab, "B", pki)]) as charon:
        yield charon


@pytest.fixture(scope="module")
def conf(lab, pki) -> Path:
    """swanctl.conf with certs = lab.pem / cacerts = lab-ca0.pem, and the files swanctl reads."""
    folder = lab.workdir / "espgw-swanctl-certs"
    for sub in _SWANCTL_SUBDIRS:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conn = cert_conn(lab, "A", pki)
    write_swanctl_files(folder, conn.name, conn.local.credential, conn.remote.trust)
    path = folder / "swanctl.conf"
    path.write_text(render_swanctl_conf([conn]))
    return path


def test_certificate_tunnel_loaded_by_swanctl(lab, espgw: EspgwGateway, charon: StrongSwan, conf: Path):
    out = swanctl(espgw, "load-all", "--file", str(conf)).stdout
    assert "loaded certificate from" in out and "loaded ECDSA key from" in out, out
    assert "loaded connection 'lab'" in out, out
    conns = swanctl(espgw, "list-conns").stdout
    assert "local public key authentication" in conns and "certs: C=CH, O=espgw lab, CN=gwa.lab" in conns, conns

    swanctl(espgw, "initiate", "--child", "net", "--timeout", "20")
    assert lab.ping(lab.hostA, lab.hostB.addr4, count=3, interval=0.1).ok
    [ike] = espgw.ike_sas()
    assert ike["local_auth"].startswith("pubkey ") and ike["remote_auth"].startswith("pubkey ")
    [child] = espgw.children()
    listed = swanctl(espgw, "list-sas").stdout
    assert "gwa.lab" in listed and "gwb.lab" in listed and "ESTABLISHED" in listed, listed
    assert child["spi_in"] in listed and child["spi_out"] in listed, listed
    assert {c["spi-out"] for c in charon.child_sas("net")} == {child["spi_in"]}
    log = charon.log_text()
    assert "authentication of 'gwa.lab' with ECDSA" in log and "successful" in log
    assert "Intermediate CA" in log  # received from espgw: charon's own x509ca/ lacks it


def test_loading_again_keeps_the_certificate_tunnel(lab, espgw: EspgwGateway, conf: Path):
    """--load-all sends every key, certificate and connection again: nothing changed, the SA stays."""
    spis = {c["spi_in"] for c in espgw.children()}
    swanctl(espgw, "load-all", "--file", str(conf))
    assert {c["spi_in"] for c in espgw.children()} == spis
    assert lab.ping(lab.hostA, lab.hostB.addr4, count=2, interval=0.1).ok


@vici_lab.needs_trixie
def test_swanctl_60_loads_the_same_certificates(lab, espgw: EspgwGateway, conf: Path):
    """6.0's swanctl sends the same credentials and connection: still unchanged, the SA stays."""
    spis = {c["spi_in"] for c in espgw.children()}
    out = vici_lab.swanctl60(lab, espgw, "load-all", "--file", str(conf))
    assert "loaded connection 'lab'" in out, out
    assert {c["spi_in"] for c in espgw.children()} == spis
    assert "public key" in vici_lab.swanctl60(lab, espgw, "list-conns")


def test_terminate(espgw: EspgwGateway, charon: StrongSwan):
    swanctl(espgw, "terminate", "--ike", "lab", "--timeout", "10")
    assert espgw.ike_sas() == []
    charon.wait_for(lambda sas: not sas, 10, "charon to drop the IKE SA")
