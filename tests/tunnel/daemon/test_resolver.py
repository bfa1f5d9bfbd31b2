"""tunnel.daemon.resolver: lookups run off the loop and are answered on it, bounded in time and number."""

from __future__ import annotations

import socket
import threading

from tunnel.daemon import resolver as module
from tunnel.daemon.resolver import Resolver


def test_answers_and_failures_come_back_through_deliver_only():
    def lookup(host: str, family: int) -> str:
        if host == "gw-b.lab":
            return "192.0.2.2" if family != socket.AF_INET6 else "2001:db8::2"
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    got: list = []
    res = Resolver(lookup)
    res.submit("gw-b.lab", socket.AF_INET, lambda addr, err: got.append((addr, err)))
    res.submit("gw-b.lab", socket.AF_INET6, lambda addr, err: got.append((addr, err)))
    res.submit("nowhere.invalid", socket.AF_UNSPEC, lambda addr, err: got.append((addr, err)))
    assert got == []  # never from submit
    res.wait_idle()
    assert sorted(got, key=str) == sorted([("192.0.2.2", None), ("2001:db8::2", None),
                                           (None, "Name or service not known")], key=str)
    res.close()


def test_too_many_lookups_at_once_fail_instead_of_piling_up(monkeypatch):
    monkeypatch.setattr(module, "MAX_IN_FLIGHT", 2)
    release = threading.Event()
    got: list = []
    res = Resolver(lambda host, family: (release.wait(5), "192.0.2.2")[1])
    for name in ("a", "b", "c"):
        res.submit(name, socket.AF_INET, lambda addr, err, name=name: got.append((name, addr, err)))
    res.deliver()
    assert got == [("c", None, "too many host name lookups under way")]
    release.set()
    res.wait_idle()
    assert sorted(got)[:2] == [("a", "192.0.2.2", None), ("b", "192.0.2.2", None)]
    res.close()
