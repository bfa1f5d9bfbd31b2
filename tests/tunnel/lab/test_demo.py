"""``espgw demo`` end to end, as a user runs it (a subprocess), and its refusal without root."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from pyroute2 import netns

from tunnel.lab.demo import LAB_PREFIX

pytestmark = pytest.mark.lab


def test_demo_runs_and_shows_what_the_eavesdropper_sees(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "tunnel.main", "demo", "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    text = done.stdout
    assert done.returncode == 0, text + done.stderr
    assert "3/3 replies" in text and "HTTP 200" in text and "marker found" in text
    assert re.search(r"192\.0\.2\.1\s+-> 192\.0\.2\.2\s+ESP\s+SPI [0-9a-f]{8}", text)
    assert re.search(r"192\.0\.2\.1\s+-> 192\.0\.2\.2\s+UDP 500\s+IKE", text)
    searches = re.findall(r"^    (.+?)\s+(\d+)\s+(\d+)$", text, re.M)
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
    assert f"files in {out}" in text
    assert not [n for n in netns.listnetns() if n.startswith(LAB_PREFIX)]


def test_demo_with_certificates(tmp_path):
    out = tmp_path / "demo-cert"
    done = subprocess.run([sys.executable, "-m", "tunnel.main", "demo", "--auth", "cert", "--no-tshark",
                           "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3/3 replies" in done.stdout and "HTTP 200" in done.stdout
    assert not [n for n in netns.listnetns() if n.startswith(LAB_PREFIX)]


def test_demo_with_a_hybrid_proposal(tmp_path):
    """--pq: both gateways take ECP-384 + ML-KEM-768; the report names the key exchanges the IKE SA
    negotiated and the IKE_INTERMEDIATE exchange the public capture holds."""
    out = tmp_path / "demo-pq"
    done = subprocess.run([sys.executable, "-m", "tunnel.main", "demo", "--pq", "--no-tshark", "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    text = done.stdout
    assert done.returncode == 0, text + done.stderr
    assert "3/3 replies" in text and "HTTP 200" in text
    assert "IKE SA aes256gcm16-prfsha384-ecp384-ke1_mlkem768," in text
    assert "  key exchanges: ECP_384 + ML_KEM_768 (IKE_INTERMEDIATE)\n" in text, text
    assert "on the wire: IKE_SA_INIT, then 1 IKE_INTERMEDIATE exchange (encrypted)" in text, text
    assert "MISMATCH" not in text and "none of it on the public link" in text
    assert not [n for n in netns.listnetns() if n.startswith(LAB_PREFIX)]


def test_demo_without_root_says_so():
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to drop root")
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-m", "tunnel.main", "demo"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "needs root" in done.stderr and "Traceback" not in done.stderr
