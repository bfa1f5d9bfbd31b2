"""The esp_sa UAT line is accepted by tshark, which then decrypts our packets."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import dpkt
import pytest

from esp.outer import OuterIPv4
from esp.sa import OutboundSA
from esp.transforms import transform_by_name
from esp.wireshark import esp_sa_line

from tests.esp.helpers import ipv4_packet

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")

NAMES = ["aes128gcm16", "aes192gcm12", "aes256gcm8", "aes128-sha1", "aes256-sha256",
         "aes192-sha384", "aes256-sha512"]


def test_line_format():
    t = transform_by_name("aes128gcm16")
    line = esp_sa_line(family="ipv4", src="10.0.0.1", dst="10.0.0.2", spi=0x1234, transform=t,
                       keymat=bytes(20))
    assert line == ('"IPv4","10.0.0.1","10.0.0.2","0x00001234","AES-GCM with 16 octet ICV [RFC4106]",'
                    '"0x' + "00" * 20 + '","NULL",""')
    with pytest.raises(ValueError):
        esp_sa_line(family="ipv4", src="a", dst="b", spi=1,
                    transform=transform_by_name("chacha20poly1305"), keymat=bytes(36))


def test_tshark_decrypts_our_packets(tmp_path):
    src, dst = "10.1.0.1", "10.2.0.1"
    lines, pcap = [], tmp_path / "esp.pcap"
    with open(pcap, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=101)           # LINKTYPE_RAW: bare IP
        for i, name in enumerate(NAMES):
            t = transform_by_name(name)
            km = os.urandom(t.keymat_len)
            spi = 0xC0DE0000 + i
            sa = OutboundSA(spi, t, km)
            udp = dpkt.udp.UDP(sport=40000 + i, dport=50000 + i, data=f"espgw-{name}".encode())
            udp.ulen = len(bytes(udp))
            inner = ipv4_packet(bytes(udp))
            esp = sa.encapsulate(inner)
            w.writepkt(OuterIPv4(socket.inet_aton(src), socket.inet_aton(dst)).build(len(esp), inner)
                       + esp, ts=1.0 + i)
            lines.append(esp_sa_line(family="ipv4", src=src, dst=dst, spi=spi, transform=t, keymat=km))
    (tmp_path / "wireshark").mkdir()
    (tmp_path / "wireshark" / "esp_sa").write_text("\n".join(lines) + "\n")
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path), HOME=str(tmp_path))
    r = subprocess.run(["tshark", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE",
                        "-T", "fields", "-e", "udp.dstport", "-e", "udp.payload"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.strip().splitlines()]
    assert len(rows) == len(NAMES)
    for i, (name, (port, payload)) in enumerate(zip(NAMES, rows, strict=True)):
        assert port == str(50000 + i), name
        assert bytes.fromhex(payload.replace(":", "")) == f"espgw-{name}".encode()
