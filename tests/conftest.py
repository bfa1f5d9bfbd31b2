"""Shared test set-up.

Tests marked ``lab`` build network namespaces and need root; on a developer's
machine without root they skip, but under CI=true a missing capability is a
failure, never a silent skip.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

# tests/ is a package (tests/ike/ must not shadow the real ike package), so pytest puts the
# checkout root on sys.path, not tests/; the flat test modules import helpers such as
# esp_helpers by bare name. Appended, not prepended: tests/ike must never win over ike/.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.append(_TESTS_DIR)

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
