"""Regenerate the seed corpora from the harnesses' ``seeds()``:
``.venv/bin/python tests/fuzz/make_corpus.py [target ...]``.

Seeds are named by what they are; files the fuzzer adds are not kept here (the bench runner
gives libFuzzer a scratch directory for its discoveries).
"""

from __future__ import annotations

import sys

import fuzzlib


def write_corpus(target: str) -> int:
    directory = fuzzlib.CORPUS_DIR / target
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("seed-*"):
        old.unlink()
    seeds = fuzzlib.harness(target).seeds()
    for name, data in seeds.items():
        (directory / f"seed-{name}").write_bytes(data)
    return sum(len(d) for d in seeds.values())


if __name__ == "__main__":
    fuzzlib.quiet_logging()
    for target in sys.argv[1:] or fuzzlib.TARGETS:
        print(target, write_corpus(target), "bytes")
