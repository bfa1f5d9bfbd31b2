"""The namespace helpers clean up after themselves, also when the test fails."""

from __future__ import annotations

import os

import pytest

from tests.tunnel.kernel.helpers import ip, namespaces


@pytest.mark.lab
def test_namespaces_are_removed_even_on_failure():
    names = []
    with pytest.raises(ZeroDivisionError):
        with namespaces("a", "b") as (a, b):
            names = [a.name, b.name]
            home = os.stat("/proc/thread-self/ns/net").st_ino
            with a.entered():
                assert os.stat("/proc/thread-self/ns/net").st_ino != home
            assert os.stat("/proc/thread-self/ns/net").st_ino == home
            raise ZeroDivisionError
    listed = ip("netns", "list")
    assert all(name not in listed for name in names)
