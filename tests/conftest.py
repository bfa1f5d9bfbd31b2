"""Shared test set-up.

Tests marked ``lab`` build network namespaces and need root; on a developer's
machine without root they skip, but under CI=true a missing capability is a
failure, never a silent skip.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

# tests/ is a package (tests/tunnel/ops/... must not shadow the real tunnel package), so its
# helper modules (esp_helpers, ike_harness, test_sockets_lab...) are put on the path by hand
sys.path.insert(0, str(Path(__file__).resolve().parent))

IN_CI = os.environ.get("CI") == "true"


def lab_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


def pytest_runtest_setup(item):
    if "lab" not in item.keywords:
        return
    reason = lab_unavailable_reason()
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"CI must run lab tests, but this machine {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _fresh_structlog():
    """A test that configures logging (e.g. into a captured stream) must not leak it into the next."""
    import structlog

    yield
    structlog.reset_defaults()
