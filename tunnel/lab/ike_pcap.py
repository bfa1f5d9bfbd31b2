"""Read IKEv2 messages out of a pcap and open their SK payloads with known keys.

For fixture checks only (the real codec lives in ike/): it reads just the RFC 7296 s3.1 header
and the SK payload (s3.14), using ``cryptography`` for AES-GCM / AES-CBC + HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from pathlib import Path

import dpkt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

EXCHANGES = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL",
             43: "IKE_INTERMEDIATE", 44: "IKE_FOLLOWUP_KE"}
PAYLOAD_SK = 46
_HEADER = struct.Struct("!8s8sBBBBII")  # SPIi SPIr next version exchange flags msgid length


@dataclass(frozen=True)
class IkeFrame:
    frame: int  # 0-based index in the pcap
    time: float
    src: str
    dst: str
    sport: int
    dport: int
    non_esp_marker: bool  # port 4500 framing (RFC 3948)
    message: bytes  # the IKE message, from its header on

    @property
    def spi_i(self) -> bytes:
        return self.message[:8]

    @property
    def spi_r(self) -> bytes:
        return self.message[8:16]

    @property
    def next_payload(self) -> int:
        return self.message[16]

    @property
    def exchange(self) -> str:
        return EXCHANGES.get(self.message[18], str(self.message[18]))

    @property
    def flags(self) -> int:
        return self.message[19]

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x20)

    @property
    def from_initiator(self) -> bool:
        return bool(self.flags & 0x08)

    @property
    def message_id(self) -> int:
        return struct.unpack("!I", self.message[20:24])[0]

    def summary(self) -> dict:
        return {"frame": self.frame, "src": f"{self.src}[{self.sport}]", "dst": f"{self.dst}[{self.dport}]",
                "exchange": self.exchange, "message_id": self.message_id,
                "response": self.is_response, "from_initiator": self.from_initiator,
                "spi_i": self.spi_i.hex(), "spi_r": self.spi_r.hex(),
                "next_payload": self.next_payload, "length": len(self.message),
                "non_esp_marker": self.non_esp_marker}


def read_ike_frames(path: str | Path) -> list[IkeFrame]:
    """Every IKE message on UDP 500/4500 in the capture (ESP and keepalives skipped)."""
    frames = []
    with open(path, "rb") as f:
        for index, (ts, buf) in enumerate(dpkt.pcap.Reader(f)):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) or not isinstance(ip.data, dpkt.udp.UDP):
                continue
            udp = ip.data
            data = bytes(udp.data)
            marker = False
            if 4500 in (udp.sport, udp.dport):
                if data[:4] != b"\0\0\0\0":
                    continue  # ESP-in-UDP or a keepalive
                data, marker = data[4:], True
            elif 500 not in (udp.sport, udp.dport):
                continue
            if len(data) < _HEADER.size:
                continue
            to_text = dpkt.utils.inet_to_str
            frames.append(IkeFrame(index, ts, to_text(ip.src), to_text(ip.dst), udp.sport, udp.dport,
                                   marker, data[:struct.unpack("!I", data[24:28])[0]]))
    return frames


class SkError(ValueError):
    """The SK payload did not authenticate with the given keys."""


def open_sk(message: bytes, encr_key: bytes, integ_key: bytes | None, cipher: str) -> tuple[int, bytes]:
    """Decrypt and check the SK payload of a message whose first payload is SK.

    cipher: "aes-gcm-16" (encr_key = key + 4-byte salt) or "aes-cbc-hmac-sha256-128".
    Returns (first inner payload type, inner payloads without padding).
    """
    if message[16] != PAYLOAD_SK:
        raise SkError("first payload is not SK")
    inner_type = message[28]
    sk_len = struct.unpack("!H", message[30:32])[0]
    body = message[32:28 + sk_len]
    if cipher == "aes-gcm-16":
        iv, sealed = body[:8], body[8:]
        aad = message[:32]
        try:
            plain = AESGCM(encr_key[:-4]).decrypt(encr_key[-4:] + iv, sealed, aad)
        except Exception as exc:  # cryptography raises InvalidTag
            raise SkError(f"GCM tag mismatch: {exc!r}") from None
    elif cipher == "aes-cbc-hmac-sha256-128":
        if integ_key is None:
            raise SkError("HMAC-SHA256-128 needs an integrity key")
        icv = message[-16:]
        if not hmac.compare_digest(hmac.new(integ_key, message[:-16], hashlib.sha256).digest()[:16], icv):
            raise SkError("HMAC-SHA256-128 mismatch")
        iv, encrypted = body[:16], body[16:-16]
        decryptor = Cipher(algorithms.AES(encr_key), modes.CBC(iv)).decryptor()
        plain = decryptor.update(encrypted) + decryptor.finalize()
    else:
        raise SkError(f"unknown cipher {cipher!r}")
    pad_len = plain[-1]
    return inner_type, plain[: len(plain) - 1 - pad_len]


PAYLOAD_SKF = 53


def open_skf(message: bytes, encr_key: bytes) -> tuple[int, int, int, bytes]:
    """Decrypt an AES-GCM-16 Encrypted Fragment payload (RFC 7383 s2.5) that comes first.

    Returns (fragment number, total fragments, first inner payload type (0 after fragment 1),
    this fragment's share of the inner payloads). The associated data runs to the end of the
    SKF header, which is 8 bytes: generic header, Fragment Number, Total Fragments.
    """
    if message[16] != PAYLOAD_SKF:
        raise SkError("first payload is not SKF")
    inner_type = message[28]
    skf_len = struct.unpack("!H", message[30:32])[0]
    number, total = struct.unpack("!HH", message[32:36])
    body = message[36:28 + skf_len]
    iv, sealed = body[:8], body[8:]
    try:
        plain = AESGCM(encr_key[:-4]).decrypt(encr_key[-4:] + iv, sealed, message[:36])
    except Exception as exc:  # cryptography raises InvalidTag
        raise SkError(f"GCM tag mismatch: {exc!r}") from None
    pad_len = plain[-1]
    return number, total, inner_type, plain[: len(plain) - 1 - pad_len]
