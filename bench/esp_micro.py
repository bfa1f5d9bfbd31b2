"""ESP micro-benchmark: packets/s for encapsulate and decapsulate per transform
at 64, 512 and 1400 bytes, beside the bare `cryptography` AEAD call.

Run as ``python -m bench.esp_micro`` or ``python bench/esp_micro.py``
(``--quick`` for a short smoke run, ``--out PATH`` to write elsewhere);
writes bench/results/esp_micro.json.  Single-threaded: numbers are per core.

Method (see bench/README.md): every figure is the median of several timed
repetitions after an untimed warm-up.  Decapsulation runs the real in-order
path with the default 1024-packet replay window: a pool of consecutive
packets is decapsulated in order, then the window is reset and the pool
replayed (one reset per pool, included in the time).  The bare AEAD call
decrypts a buffer of the same plaintext length as the ESP payload.  Other
processes share this machine: rates are packets per CPU-second of the
benchmark thread (time.thread_time), elapsed-time rates are kept beside them,
and the load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cryptography  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305  # noqa: E402

from esp.padding import trailer  # noqa: E402
from esp.sa import InboundSA, OutboundSA  # noqa: E402
from esp.transforms import transform_by_name  # noqa: E402

SIZES = (64, 512, 1400)
TRANSFORMS = ("aes256gcm16", "aes128gcm16", "chacha20poly1305", "aes128gmac", "aes256gcm8",
              "aes128-sha1", "aes256-sha256")
BARE = {"aes256gcm16": (AESGCM, 32), "aes128gcm16": (AESGCM, 16),
        "chacha20poly1305": (ChaCha20Poly1305, 32)}
POOL = 256                      # consecutive packets per decapsulation round
TARGET = {"transform": "aes256gcm16", "size": 1400, "min_pps": 600_000, "max_cost_vs_bare": 2.5}
RESULT = Path(__file__).resolve().parent / "results" / "esp_micro.json"


def _inner(size: int) -> bytes:
    """An IPv4-looking packet of ``size`` bytes: version 4, total length set."""
    return bytes([0x45, 0]) + size.to_bytes(2, "big") + bytes(size - 4)


def _median_rate(run, packets: int, reps: int) -> dict:
    """run() processes ``packets`` packets; one warm-up, then ``reps`` timed runs.

    ``pps`` divides by the CPU time this thread used, so time spent descheduled
    while other processes run does not count; ``wall_pps`` divides by elapsed
    time and shows how much the shared machine got in the way.
    """
    run()
    rates, wall = [], []
    for _ in range(reps):
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        run()
        cpu1, wall1 = time.thread_time(), time.perf_counter()
        rates.append(packets / (cpu1 - cpu0))
        wall.append(packets / (wall1 - wall0))
    return {"pps": round(statistics.median(rates)), "min": round(min(rates)), "max": round(max(rates)),
            "wall_pps": round(statistics.median(wall))}


def _encapsulate_run(t, km: bytes, inner: bytes, rounds: int):
    def run() -> None:
        encapsulate = OutboundSA(1, t, km).encapsulate
        for _ in range(rounds * POOL):
            encapsulate(inner)
    return run


def _decapsulate_run(t, km: bytes, inner: bytes, rounds: int):
    sender = OutboundSA(1, t, km)
    pool = [sender.encapsulate(inner) for _ in range(POOL)]    # sequence numbers 1..POOL

    def run() -> None:
        sa = InboundSA(1, t, km)
        decapsulate, reset = sa.decapsulate, sa.replay.reset
        for _ in range(rounds):
            for packet in pool:
                decapsulate(packet)
            reset(0)
    return run


def _bare_runs(name: str, size: int, align: int, rounds: int):
    cls, key_len = BARE[name]
    aead = cls(bytes(key_len))
    nonce, aad = bytes(12), bytes(8)
    plaintext = _inner(size) + trailer(size, 4, align)
    ciphertext = aead.encrypt(nonce, plaintext, aad)
    count = rounds * POOL

    def encrypt() -> None:
        enc = aead.encrypt
        for _ in range(count):
            enc(nonce, plaintext, aad)

    def decrypt() -> None:
        dec = aead.decrypt
        for _ in range(count):
            dec(nonce, ciphertext, aad)
    return encrypt, decrypt


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench(rounds: int = 40, reps: int = 9, transforms=TRANSFORMS, sizes=SIZES) -> dict:
    packets = rounds * POOL
    results = {
        "unit": "packets per second per core: pps = median over the repetitions of packets / CPU "
                "time of the benchmark thread (min, max: the spread); wall_pps uses elapsed time",
        "method": {"repetitions": reps, "packets_per_repetition": packets, "warmup_runs": 1,
                   "decapsulate": f"in-order stream, replay window 1024, pool of {POOL} "
                                  "packets replayed after a window reset"},
        "machine": {"arch": platform.machine(), "cpu": _cpu_model(), "cores": os.cpu_count()},
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "load_before": _load(),
        "transforms": {}, "bare_aead": {},
    }
    for name in transforms:
        t = transform_by_name(name)
        km = bytes(range(t.keymat_len))
        results["transforms"][name] = row = {}
        for size in sizes:
            inner = _inner(size)
            row[str(size)] = {
                "encapsulate": _median_rate(_encapsulate_run(t, km, inner, rounds), packets, reps),
                "decapsulate": _median_rate(_decapsulate_run(t, km, inner, rounds), packets, reps),
            }
            if name in BARE:
                encrypt, decrypt = _bare_runs(name, size, t.align, rounds)
                results["bare_aead"].setdefault(name, {})[str(size)] = {
                    "encrypt": _median_rate(encrypt, packets, reps),
                    "decrypt": _median_rate(decrypt, packets, reps),
                }
    results["load_after"] = _load()
    results["target"] = _verdict(results)
    return results


def _verdict(results: dict) -> dict:
    """Is the issue's target met: enough packets/s and a bounded cost over the bare AEAD?"""
    name, size = TARGET["transform"], str(TARGET["size"])
    esp = results["transforms"].get(name, {}).get(size)
    bare = results["bare_aead"].get(name, {}).get(size)
    if esp is None or bare is None:
        return {**TARGET, "measured": False}
    verdict = {**TARGET, "measured": True}
    for op, bare_op in (("encapsulate", "encrypt"), ("decapsulate", "decrypt")):
        pps = esp[op]["pps"]
        cost = round(bare[bare_op]["pps"] / pps, 2)
        verdict[op] = {"pps": pps, "cost_vs_bare": cost,
                       "met": pps >= TARGET["min_pps"] and cost <= TARGET["max_cost_vs_bare"]}
    verdict["met"] = verdict["encapsulate"]["met"] and verdict["decapsulate"]["met"]
    return verdict


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few short repetitions (smoke run)")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)
    res = bench(rounds=2, reps=3) if args.quick else bench()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    v = res["target"]
    print(f"{v['transform']} {v['size']} B: "
          f"encapsulate {v['encapsulate']['pps']:,}/s ({v['encapsulate']['cost_vs_bare']}x bare), "
          f"decapsulate {v['decapsulate']['pps']:,}/s ({v['decapsulate']['cost_vs_bare']}x bare); "
          f"target {'met' if v['met'] else 'NOT met'}; load {res['load_before']} -> {res['load_after']}; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
