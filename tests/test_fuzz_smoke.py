"""CI smoke for the atheris harnesses in tests/fuzz/: every corpus and crash file replays through
its harness's TestOneInput without an error (crash regressions), so do the seeds made from
today's encoders, and, when atheris is installed, each harness fuzzes a few thousand inputs.
The long runs (1,000,000 executions each) are bench/reliability_fuzz.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ_DIR = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ_DIR))

import fuzzlib  # noqa: E402

SMOKE_RUNS = 3000
MAX_CORPUS_BYTES = 300_000


@pytest.fixture(autouse=True, scope="module")
def quiet():
    import structlog
    fuzzlib.quiet_logging()
    yield
    structlog.reset_defaults()


@pytest.mark.parametrize("target", fuzzlib.TARGETS)
def test_corpus_and_crashes_replay(target):
    harness = fuzzlib.harness(target)
    files = fuzzlib.corpus_files(target)
    assert files, f"no corpus for {target}"
    for path in files:
        harness.TestOneInput(path.read_bytes())


@pytest.mark.parametrize("target", fuzzlib.TARGETS)
def test_current_seeds_pass(target):
    """What seeds() makes from today's encoders (the committed corpus may predate them;
    regenerate it with tests/fuzz/make_corpus.py)."""
    harness = fuzzlib.harness(target)
    for data in harness.seeds().values():
        harness.TestOneInput(data)


def test_corpus_stays_small():
    total = sum(p.stat().st_size for p in FUZZ_DIR.rglob("*") if p.is_file()
                and ("corpus" in p.parts or "crashes" in p.parts))
    assert total < MAX_CORPUS_BYTES


@pytest.mark.parametrize("target", fuzzlib.TARGETS)
def test_short_fuzz_run(target, tmp_path):
    pytest.importorskip("atheris", reason="atheris not installed (pip install atheris)")
    scratch = tmp_path / "new"
    scratch.mkdir()
    proc = subprocess.run(
        [sys.executable, str(FUZZ_DIR / f"fuzz_{target}.py"), f"-atheris_runs={SMOKE_RUNS}",
         "-max_len=4096", f"-artifact_prefix={tmp_path}/", str(scratch), str(fuzzlib.CORPUS_DIR / target)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONHASHSEED": "0"})
    crashes = list(tmp_path.glob("crash-*")) + list(tmp_path.glob("timeout-*"))
    assert proc.returncode == 0 and not crashes, proc.stderr[-3000:]
    assert f"Done {SMOKE_RUNS}" in proc.stderr
