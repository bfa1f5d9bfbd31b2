"""Shared test set-up.

Tests marked ``lab`` build network namespaces and need root; on a developer's
machine without root they skip, but under CI=true a missing capability is a
failure, never a silent skip.
"""

from __future__ import annotations

import os
import shutil

import pytest

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
