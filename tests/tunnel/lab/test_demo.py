"""``espgw demo`` end to end, as a user runs it (a subprocess): the road warrior (the default), with
certificates and a hybrid proposal, the two-gateway ``--site-to-site``, and the refusal without root."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from pyroute2 import netns

from tunnel.lab.demo import LAB_PREFIX

pytestmark = pytest.mark.lab

FLOW = re.compile(r"^  (\S+):(\d+)\s+-> (\S+):(\d+)\s+(\S+)", re.M)


def _demo(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "tunnel.main", "demo", *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [n for n in netns.listnetns() if n.startswith(LAB_PREFIX)]
    return done.stdout


def _section(text: str, title: str) -> str:
    start = text.index(f"what an eavesdropper on {title}")
    return text[start:text.index("\n\n", start)]


def _only_the_tunnel(section: str, near: str, office: str = "192.0.2.2") -> None:
    """Every flow is near <-> office; UDP 500 only for IKE_SA_INIT, everything else UDP 4500."""
    flows = FLOW.findall(section)
    assert flows, section
    for src, sport, dst, dport, what in flows:
        assert {src, dst} == {near, office}, section
        office_port = dport if dst == office else sport
        assert office_port == ("500" if what == "IKE_SA_INIT" else "4500"), section
    assert any(what == "ESP-in-UDP" for *_, what in flows), section
    assert f"only {near} <-> {office}: the 2 IKE_SA_INIT packets on UDP 500" in section, section
    assert "ALSO SEEN" not in section


def _searches(text: str) -> list[tuple[str, str, str]]:
    return re.findall(r"^    (.+?)\s+(\d+)\s+(\d+)$", text, re.M)


def test_the_road_warrior_and_what_the_eavesdropper_sees(tmp_path):
    out = tmp_path / "demo"
    text = _demo("--out", str(out))
    assert "virtual IP   10.0.0.7 (the laptop's address in the tunnel; 192.168.1.7 is only the outer one)" in text
    assert "the laptop is behind a NAT; the office sees 192.0.2.1:" in text
    assert "CHILD SA     10.0.0.7/32 === 10.0.5.0/24" in text
    assert "3/3 replies" in text and "HTTP 200" in text and "marker found, from 10.0.0.7:" in text
    _only_the_tunnel(_section(text, "the cafe Wi-Fi"), "192.168.1.7")
    _only_the_tunnel(_section(text, "the internet"), "192.0.2.1")
    searches = _searches(text)
    assert len(searches) >= 7 and any("TCP ports" in label for label, *_ in searches), searches
    assert all(cafe == internet == "0" for _, cafe, internet in searches), searches
    assert "none of it in either capture" in text and "key exchanges:" not in text
    if shutil.which("tshark"):
        assert re.search(r"tshark decrypts internet\.pcap \(ESP in UDP 4500\) and finds the page in [1-9]", text), text
    for name in ("cafe-wifi.pcap", "internet.pcap", "wireshark/esp_sa", "wireshark/ikev2_decryption_table",
                 "laptop.log", "office.log"):
        assert (out / name).is_file(), name
    assert f"files in {out}" in text


def test_the_road_warrior_with_certificates_and_a_hybrid_proposal(tmp_path):
    """--auth cert: the laptop's own client certificate; --pq: ECP-384 + ML-KEM-768, the report names
    the key exchanges and the IKE_INTERMEDIATE exchange, already on UDP 4500."""
    text = _demo("--auth", "cert", "--pq", "--no-tshark", "--out", str(tmp_path / "demo"))
    assert "virtual IP   10.0.0.7" in text and "3/3 replies" in text and "HTTP 200" in text
    assert re.search(r"laptop\.lab \(pubkey [^)]*\) / office\.lab \(pubkey ", text), text
    assert "aes256gcm16-prfsha384-ecp384-ke1_mlkem768, " in text
    assert "  key exchanges: ECP_384 + ML_KEM_768 (IKE_INTERMEDIATE)\n" in text, text
    assert "on the wire: IKE_SA_INIT, then 1 IKE_INTERMEDIATE exchange (encrypted)" in text, text
    assert "MISMATCH" not in text
    _only_the_tunnel(_section(text, "the internet"), "192.0.2.1")
    assert re.search(r"192\.0\.2\.1:\d+\s+-> 192\.0\.2\.2:4500\s+IKE_INTERMEDIATE", text), text
    assert all(cafe == internet == "0" for _, cafe, internet in _searches(text))


def test_site_to_site(tmp_path):
    out = tmp_path / "demo"
    text = _demo("--site-to-site", "--out", str(out))
    assert "3/3 replies" in text and "HTTP 200" in text and "marker found" in text
    assert re.search(r"192\.0\.2\.1\s+-> 192\.0\.2\.2\s+ESP\s+SPI [0-9a-f]{8}", text)
    assert re.search(r"192\.0\.2\.1\s+-> 192\.0\.2\.2\s+UDP 500\s+IKE", text)
    searches = _searches(text)
    assert len(searches) >= 6
    assert all(public == "0" for _, public, _ in searches), searches  # nothing on the public link
    assert all(int(lan) > 0 for _, _, lan in searches), searches  # everything on the cafe LAN
    assert "none of it on the public link" in text
    assert "key exchanges:" not in text  # only --proposal / --pq add that line
    if shutil.which("tshark"):
        assert re.search(r"tshark decrypts public\.pcap and finds the page in [1-9]", text), text
    for name in ("public.pcap", "cafe-lan.pcap", "wireshark/esp_sa", "wireshark/ikev2_decryption_table",
                 "gatewayA.log", "gatewayB.log"):
        assert (out / name).is_file(), name


def test_demo_without_root_says_so():
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to drop root")
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-m", "tunnel.main", "demo"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "needs root" in done.stderr and "Traceback" not in done.stderr
