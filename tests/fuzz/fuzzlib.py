"""Shared plumbing for the atheris harnesses in this folder (not a harness itself).

A harness is a module ``fuzz_<target>.py`` with ``TestOneInput(data: bytes)`` (raises only on a
real bug) and ``seeds() -> dict[str, bytes]`` (valid inputs for the corpus). It starts with::

    if __name__ == "__main__":
        import fuzzlib; fuzzlib.main("fuzz_<target>")

so that, run as a script, it re-imports itself with atheris' coverage instrumentation of the
project packages (modules imported before instrumentation would not be covered), then hands
control to libFuzzer, which takes the usual flags (``-atheris_runs=N``, corpus directories...).
Without atheris the harness still imports, for the corpus replay in tests/test_fuzz_smoke.py.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import structlog

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
CRASHES_DIR = FUZZ_DIR / "crashes"
# the exchange kinds of tests/fuzz/ike_conversations.py's two recorded conversations
SITE_KINDS = ("ike_sa_init", "ike_auth", "create_child", "rekey_child", "rekey_ike", "informational")
REMOTE_ACCESS_KINDS = ("ike_intermediate", "followup_ke", "ike_auth_cp", "mobike")
MUTATED_EXCHANGES = SITE_KINDS + REMOTE_ACCESS_KINDS
TARGETS = ("esp", "ike_codec", "ike_responder", "vici") + tuple(f"ike_mutate_{kind}" for kind in MUTATED_EXCHANGES)
INSTRUMENTED_PACKAGES = ["esp", "ike", "tunnel"]  # atheris instruments whole top-level packages


ERRORS: list[str] = []  # error-level events since the last clear (a caught exception in a core)


def _record_error(logger, method_name: str, event_dict: dict) -> dict:
    ERRORS.append(f"{event_dict.get('event')}: {event_dict.get('error', '')}")
    raise structlog.DropEvent


def quiet_logging() -> None:
    """Drop structlog output below ERROR (the cores log every rejected message, which would
    drown libFuzzer's report and cost most of the run time) and record the error-level events
    in ERRORS: the endpoint logs, rather than raises, an exception it caught."""
    structlog.configure(processors=[_record_error],
                        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
                        cache_logger_on_first_use=False)


def harness(target: str):
    """The harness module for a target name (``esp``, ``ike_codec``, ...), imported plainly."""
    if str(FUZZ_DIR) not in sys.path:
        sys.path.insert(0, str(FUZZ_DIR))
    return importlib.import_module(f"fuzz_{target}")


def corpus_files(target: str) -> list[Path]:
    """Every seed and every kept crash of a target, in a stable order."""
    files = []
    for base in (CORPUS_DIR / target, CRASHES_DIR / target):
        if base.is_dir():
            files += sorted(p for p in base.iterdir() if p.is_file() and not p.name.startswith("."))
    return files


def main(module_name: str) -> None:
    import atheris  # only the fuzzing entry point needs it

    quiet_logging()
    if str(FUZZ_DIR) not in sys.path:
        sys.path.insert(0, str(FUZZ_DIR))
    with atheris.instrument_imports(include=INSTRUMENTED_PACKAGES + [module_name]):
        module = importlib.import_module(module_name)
    atheris.Setup(sys.argv, module.TestOneInput)
    atheris.Fuzz()
