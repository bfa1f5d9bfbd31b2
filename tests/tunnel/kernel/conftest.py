"""Fixtures shared by the kernel-interface lab tests."""

from __future__ import annotations

import pytest

from tests.tunnel.kernel.helpers import A4, A6, B4, B6, namespaces, veth


@pytest.fixture(scope="module")
def pair():
    """Two namespaces joined by a veth pair, IPv4 and IPv6 on both ends (one per module)."""
    with namespaces("a", "b") as (a, b):
        veth(a, b, [f"{A4}/24", f"{A6}/64"], [f"{B4}/24", f"{B6}/64"])
        yield a, b


