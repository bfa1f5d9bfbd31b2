"""Smoke run of bench/esp_micro.py, so the benchmark keeps working as esp/ changes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "esp_micro.py"


def _module():
    spec = importlib.util.spec_from_file_location("esp_micro_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_smoke(tmp_path):
    mod = _module()
    res = mod.bench(rounds=1, reps=2, transforms=("aes256gcm16", "aes128-sha1"), sizes=(64, 1400))
    for key in ("python", "cryptography", "load_before", "load_after", "machine", "method"):
        assert key in res
    cell = res["transforms"]["aes256gcm16"]["1400"]["decapsulate"]
    assert cell["min"] <= cell["pps"] <= cell["max"] and cell["pps"] > 0
    verdict = res["target"]
    assert verdict["measured"] and isinstance(verdict["met"], bool)
    assert set(verdict["decapsulate"]) == {"pps", "cost_vs_bare", "met"}
    out = tmp_path / "r.json"
    mod.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text())["target"]["transform"] == "aes256gcm16"
