"""Key export: the Wireshark tables are what tshark 4.0 loads and decrypts with.

The packets are built by hand here (cryptography + dpkt) so the test depends on nothing but the
published formats: RFC 4106 AES-GCM ESP, RFC 4303 AES-CBC + HMAC-SHA-256-128 ESP (RFC 4868),
and an RFC 5282 AES-GCM encrypted IKEv2 INFORMATIONAL message.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import struct
import subprocess

import dpkt
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tunnel.ops.keyexport import (
    KeyExportError,
    esp_sa_line,
    ikev2_line,
    write_wireshark_keys,
)

GW_A, GW_B = "192.0.2.1", "192.0.2.2"
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")


def inner_ping(seq: int) -> bytes:
    echo = dpkt.icmp.ICMP.Echo(id=0x4242, seq=seq, data=b"espgw key export test")
    icmp = dpkt.icmp.ICMP(type=8, code=0, data=echo)
    ip = dpkt.ip.IP(src=bytes([10, 0, 0, 7]), dst=bytes([10, 0, 5, 9]), p=1, ttl=64, data=icmp)
    ip.len = len(bytes(ip))
    return bytes(ip)


def esp_trailer(payload: bytes, block: int) -> bytes:
    pad_len = (-(len(payload) + 2)) % block
    return payload + bytes(range(1, pad_len + 1)) + bytes([pad_len, 4])  # next header 4 = IPv4


def esp_gcm(spi: int, seq: int, keymat: bytes, payload: bytes) -> bytes:
    key, salt = keymat[:-4], keymat[-4:]
    iv = os.urandom(8)
    header = struct.pack("!II", spi, seq)
    sealed = AESGCM(key).encrypt(salt + iv, esp_trailer(payload, 4), header)
    return header + iv + sealed


def esp_cbc_sha256(spi: int, seq: int, keymat: bytes, payload: bytes) -> bytes:
    enc_key, auth_key = keymat[:16], keymat[16:]
    iv = os.urandom(16)
    encryptor = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).encryptor()
    body = struct.pack("!II", spi, seq) + iv + encryptor.update(esp_trailer(payload, 16)) + encryptor.finalize()
    return body + hmac.new(auth_key, body, hashlib.sha256).digest()[:16]


def ike_informational_gcm(spi_i: bytes, spi_r: bytes, sk_ei: bytes) -> bytes:
    notify = struct.pack("!BBHBBH", 0, 0, 8, 0, 0, 16384)  # INITIAL_CONTACT
    plaintext = notify + b"\x00"  # pad length 0
    iv = os.urandom(8)
    sk_len = 4 + 8 + len(plaintext) + 16
    header = spi_i + spi_r + struct.pack("!BBBBII", 46, 0x20, 37, 0x08, 1, 28 + sk_len)
    sk_header = struct.pack("!BBH", 41, 0, sk_len)
    sealed = AESGCM(sk_ei[:-4]).encrypt(sk_ei[-4:] + iv, plaintext, header + sk_header)
    return header + sk_header + iv + sealed


def frame(outer_proto: int, payload: bytes, src: str = GW_A, dst: str = GW_B) -> bytes:
    ip = dpkt.ip.IP(src=bytes(map(int, src.split("."))), dst=bytes(map(int, dst.split("."))),
                    p=outer_proto, ttl=64, data=payload)
    ip.len = len(bytes(ip))
    eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip)
    return bytes(eth)


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    datagram = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    datagram.ulen = len(bytes(datagram))
    return bytes(datagram)


def write_pcap(path, frames: list[bytes]) -> None:
    with open(path, "wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        for index, data in enumerate(frames):
            writer.writepkt(data, ts=1700000000 + index)


def tshark(pcap, keydir, tmp_path, fields: list[str]) -> tuple[list[list[str]], str]:
    """Run tshark with a fresh profile holding our two tables; fail on any table error."""
    home = tmp_path / "home"
    profile = home / ".config" / "wireshark"
    profile.mkdir(parents=True, exist_ok=True)
    for name in ("esp_sa", "ikev2_decryption_table"):
        shutil.copy(keydir / name, profile / name)
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    cmd = ["tshark", "-n", "-r", str(pcap),
           "-o", "esp.enable_encryption_decode:TRUE", "-o", "esp.enable_authentication_check:TRUE",
           "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=;"]
    for name in fields:
        cmd += ["-e", name]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    problems = [line for line in run.stderr.splitlines() if "running as user" not in line.lower() and line.strip()]
    assert not problems, run.stderr  # tshark reports UAT parse errors on stderr
    return [line.split("\t") for line in run.stdout.splitlines()], run.stderr


GCM_KEYMAT_OUT = bytes(range(36))  # 32-byte AES-256 key | 4-byte salt
GCM_KEYMAT_IN = bytes(range(100, 136))
CBC_KEYMAT = bytes(range(200, 248))  # 16-byte AES-128 key | 32-byte HMAC-SHA-256 key
SPI_I, SPI_R = bytes.fromhex("0123456789abcdef"), bytes.fromhex("fedcba9876543210")
SK_EI, SK_ER = bytes(range(50, 86)), bytes(range(150, 186))


def snapshot() -> dict:
    return {
        "child_sas": [
            {"src": GW_A, "dst": GW_B, "spi": "c0ffee01", "esp_transform": "aes256gcm16",
             "keymat": GCM_KEYMAT_OUT.hex()},
            {"src": GW_B, "dst": GW_A, "spi": 0xC0FFEE02, "esp_transform": "aes256gcm16",
             "keymat": GCM_KEYMAT_IN.hex()},
            {"src": GW_A, "dst": GW_B, "spi": "c0ffee03", "esp_transform": "aes128-sha256", "keymat": CBC_KEYMAT.hex()},
            {"src": GW_A, "dst": GW_B, "spi": "c0ffee04", "esp_transform": "chacha20poly1305", "keymat": "00" * 36},
        ],
        "ike_sas": [
            {"spi_i": SPI_I.hex(), "spi_r": SPI_R.hex(), "encr_alg": "aes256gcm16", "sk_ei": SK_EI.hex(),
             "sk_er": SK_ER.hex(), "integ_alg": "none", "sk_ai": "", "sk_ar": ""},
        ],
    }


@needs_tshark
def test_tshark_decrypts_esp_and_ikev2_with_exported_tables(tmp_path):
    result = write_wireshark_keys(snapshot(), tmp_path / "keys")
    assert result.esp_rows == 3 and result.ike_rows == 1
    assert len(result.skipped) == 1 and "chacha20poly1305" in result.skipped[0]
    assert oct(result.esp_sa_path.stat().st_mode & 0o777) == "0o600"

    frames = [
        frame(50, esp_gcm(0xC0FFEE01, 1, GCM_KEYMAT_OUT, inner_ping(1))),
        frame(50, esp_gcm(0xC0FFEE02, 1, GCM_KEYMAT_IN, inner_ping(2)), src=GW_B, dst=GW_A),
        frame(50, esp_cbc_sha256(0xC0FFEE03, 1, CBC_KEYMAT, inner_ping(3))),
        frame(17, udp(4500, 4500, b"\x00" * 4 + ike_informational_gcm(SPI_I, SPI_R, SK_EI))),
    ]
    pcap = tmp_path / "capture.pcap"
    write_pcap(pcap, frames)
    rows, _ = tshark(pcap, tmp_path / "keys", tmp_path, ["ip.dst", "icmp.seq", "esp.icv_good", "isakmp.notify.msgtype"])
    assert len(rows) == 4
    # ESP: the inner ping (10.0.5.9, sequence n) is visible, so the key and salt were right
    for index in range(3):
        dsts, seq = rows[index][0].split(";"), rows[index][1]
        assert "10.0.5.9" in dsts and seq == str(index + 1), rows[index]
    assert rows[2][2] == "1", "HMAC-SHA-256-128 ICV must verify"
    # IKEv2: the Notify inside the encrypted payload decodes (16384 = INITIAL_CONTACT)
    assert rows[3][3] == "16384", rows[3]


@needs_tshark
def test_wrong_key_does_not_decrypt(tmp_path):
    snap = snapshot()
    snap["child_sas"][0]["keymat"] = bytes(36).hex()
    write_wireshark_keys(snap, tmp_path / "keys")
    pcap = tmp_path / "capture.pcap"
    write_pcap(pcap, [frame(50, esp_gcm(0xC0FFEE01, 1, GCM_KEYMAT_OUT, inner_ping(1)))])
    rows, _ = tshark(pcap, tmp_path / "keys", tmp_path, ["ip.dst", "icmp.seq"])
    assert rows[0][1] == ""


def test_esp_sa_line_format():
    line = esp_sa_line("192.0.2.1", "192.0.2.2", 0xC0FFEE01, "aes128-sha256", CBC_KEYMAT)
    assert line == ('"IPv4","192.0.2.1","192.0.2.2","0xc0ffee01","AES-CBC [RFC3602]","0x'
                    + CBC_KEYMAT[:16].hex() + '","HMAC-SHA-256-128 [RFC4868]","0x' + CBC_KEYMAT[16:].hex() + '"')
    v6 = esp_sa_line("2001:db8::1", "2001:db8::2", 1, "aes128gcm16", bytes(20))
    assert v6.startswith('"IPv6","2001:db8::1","2001:db8::2","0x00000001","AES-GCM with 16 octet ICV [RFC4106]"')
    assert v6.endswith('"NULL",""')


def test_ikev2_line_format():
    line = ikev2_line(SPI_I, SPI_R, "aes128", bytes(16), bytes(16), "sha256", bytes(32), bytes(32))
    assert line.startswith("0123456789abcdef,fedcba9876543210,")
    assert '"AES-CBC-128 [RFC3602]"' in line and line.endswith('"HMAC_SHA2_256_128 [RFC4868]"')


@pytest.mark.parametrize("name, keymat", [
    ("aes256gcm16-sha256", bytes(36)), ("blowfish-sha1", bytes(36)), ("aes128-sha3", bytes(48)),
    ("", bytes(0)), ("aes256gcm16", bytes(35)), ("chacha20poly1305", bytes(36)),
])
def test_unknown_unsupported_or_short_transforms_are_typed_errors(name, keymat):
    with pytest.raises(KeyExportError):
        esp_sa_line(GW_A, GW_B, 1, name, keymat)


def test_ike_unknown_or_unsupported_algorithms():
    with pytest.raises(KeyExportError, match="cannot decrypt"):
        ikev2_line(SPI_I, SPI_R, "chacha20poly1305", bytes(36), bytes(36), "none", b"", b"")
    with pytest.raises(KeyExportError, match="unknown IKE integrity"):
        ikev2_line(SPI_I, SPI_R, "aes128", bytes(16), bytes(16), "sha3", bytes(32), bytes(32))
    with pytest.raises(KeyExportError, match="SK_e keys must be 20 bytes"):
        ikev2_line(SPI_I, SPI_R, "aes128gcm16", bytes(16), bytes(16), "none", b"", b"")


def test_bad_snapshot_entries_are_skipped_with_reasons(tmp_path):
    snap = {"child_sas": [
        {"src": GW_A, "dst": GW_B, "spi": "c0ffee01", "esp_transform": "aes256gcm16", "keymat": "00" * 35},
        {"src": "not-an-ip", "dst": GW_B, "spi": 1, "esp_transform": "aes256gcm16", "keymat": "00" * 36},
        {"src": GW_A, "dst": GW_B, "spi": "zz", "esp_transform": "aes256gcm16", "keymat": "00" * 36},
        {"src": GW_A, "dst": GW_B, "spi": 5, "esp_transform": "aes256gcm16", "keymat": "not hex"},
        "garbage",
    ], "ike_sas": [{"spi_i": "00", "spi_r": "00"}]}
    result = write_wireshark_keys(snap, tmp_path)
    assert result.esp_rows == 0 and result.ike_rows == 0
    assert len(result.skipped) == 6
    assert all("00" * 30 not in reason for reason in result.skipped)  # no key material in reasons
    with pytest.raises(KeyExportError):
        esp_sa_line(GW_A, "2001:db8::1", 1, "aes256gcm16", bytes(36))
    with pytest.raises(KeyExportError):
        write_wireshark_keys(["not", "a", "dict"], tmp_path)
    with pytest.raises(KeyExportError):
        write_wireshark_keys({"child_sas": "nope"}, tmp_path)


def test_merge_keeps_rows_of_rekeyed_sas(tmp_path):
    first = snapshot()
    write_wireshark_keys(first, tmp_path)
    second = snapshot()
    second["child_sas"] = [dict(second["child_sas"][0], spi="c0ffee99")]
    result = write_wireshark_keys(second, tmp_path)
    assert result.esp_rows == 4  # three old rows plus the new SPI
    assert write_wireshark_keys(second, tmp_path, merge=False).esp_rows == 1
