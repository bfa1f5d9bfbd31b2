"""Shared helpers for the ESP tests (not a test module)."""

from __future__ import annotations

import json
from pathlib import Path

VECTOR_DIR = Path(__file__).resolve().parents[2] / "rfc-vectors" / "esp"


def load(name: str) -> dict:
    return json.loads((VECTOR_DIR / name).read_text())


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


def ipv4_packet(payload: bytes = b"x" * 20, *, tos: int = 0, df: bool = True, proto: int = 17) -> bytes:
    import dpkt
    ip = dpkt.ip.IP(src=b"\xc0\xa8\x01\x01", dst=b"\xc0\xa8\x02\x01", p=proto, tos=tos,
                    data=payload)
    ip.df = int(df)
    ip.len = 20 + len(payload)
    return bytes(ip)


def ipv6_packet(payload: bytes = b"y" * 20, *, tc: int = 0, flow: int = 0) -> bytes:
    import dpkt
    ip6 = dpkt.ip6.IP6(src=b"\xfd" + b"\x00" * 14 + b"\x01", dst=b"\xfd" + b"\x00" * 14 + b"\x02",
                       nxt=17, hlim=64, data=payload)
    ip6.fc, ip6.flow = tc, flow
    ip6.plen = len(payload)
    return bytes(ip6)
