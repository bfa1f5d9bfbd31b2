"""ESP micro-benchmark: packets/s for encapsulate and decapsulate per transform
at 64, 512 and 1400 bytes, beside the bare `cryptography` AEAD call.

Run as ``python -m bench.esp_micro`` or ``python bench/esp_micro.py``;
writes bench/results/esp_micro.json.  Single-threaded: numbers are per core.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305  # noqa: E402

from esp.sa import InboundSA, OutboundSA  # noqa: E402
from esp.transforms import transform_by_name  # noqa: E402

SIZES = (64, 512, 1400)
TRANSFORMS = ("aes256gcm16", "aes128gcm16", "chacha20poly1305", "aes128gmac", "aes256gcm8",
              "aes128-sha1", "aes256-sha256")
RESULT = Path(__file__).resolve().parent / "results" / "esp_micro.json"


def _rate(fn, arg, seconds: float) -> float:
    n, batch, start = 0, 2000, time.perf_counter()
    while True:
        for _ in range(batch):
            fn(arg)
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def _inner(size: int) -> bytes:
    return bytes([0x45, 0]) + size.to_bytes(2, "big") + bytes(size - 4)


def bench(seconds: float = 0.4) -> dict:
    results = {"machine": platform.machine(), "python": platform.python_version(),
               "unit": "packets per second, one core", "transforms": {}, "bare_aead": {}}
    for name in TRANSFORMS:
        t = transform_by_name(name)
        km = bytes(range(t.keymat_len))
        row = {}
        for size in SIZES:
            inner = _inner(size)
            out = OutboundSA(1, t, km)
            enc = _rate(out.encapsulate, inner, seconds)
            # decapsulation: a fresh SA with the window off so one packet can be replayed
            sample = OutboundSA(1, t, km).encapsulate(inner)
            inb = InboundSA(1, t, km, replay_window=0)
            dec = _rate(inb.decapsulate, sample, seconds)
            row[str(size)] = {"encapsulate": round(enc), "decapsulate": round(dec)}
        results["transforms"][name] = row
    for label, cls, key in (("aes256gcm", AESGCM, bytes(32)), ("chacha20poly1305", ChaCha20Poly1305, bytes(32))):
        aead = cls(key)
        nonce, aad = bytes(12), bytes(8)
        row = {}
        for size in SIZES:
            pt = bytes(size + 2)
            ct = aead.encrypt(nonce, pt, aad)
            row[str(size)] = {
                "encrypt": round(_rate(lambda p: aead.encrypt(nonce, p, aad), pt, seconds)),
                "decrypt": round(_rate(lambda c: aead.decrypt(nonce, c, aad), ct, seconds)),
            }
        results["bare_aead"][label] = row
    g, b = results["transforms"]["aes256gcm16"]["1400"], results["bare_aead"]["aes256gcm"]["1400"]
    results["aes256gcm16_1400_cost_vs_bare"] = {
        "encapsulate": round(b["encrypt"] / g["encapsulate"], 2),
        "decapsulate": round(b["decrypt"] / g["decapsulate"], 2),
    }
    return results


def main() -> None:
    res = bench()
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(res, indent=1) + "\n")
    g = res["transforms"]["aes256gcm16"]["1400"]
    print(f"aes256gcm16 1400 B: encap {g['encapsulate']:,}/s decap {g['decapsulate']:,}/s; "
          f"cost vs bare AEAD {res['aes256gcm16_1400_cost_vs_bare']}; wrote {RESULT}")


if __name__ == "__main__":
    main()
