"""tunnel.kernel.pmtu reads the path MTU the kernel would use towards a peer."""

import sys

import pytest

from tunnel.lab.netns import Lab

pytestmark = pytest.mark.lab


def _path_mtu(lab, ns, peer):
    code = f"from tunnel.kernel.pmtu import path_mtu; print(path_mtu({peer!r}))"
    return int(lab.run(ns, sys.executable, "-c", code).stdout.split()[-1])  # after any log line


def test_path_mtu_follows_link_and_route():
    with Lab() as lab:
        gw = lab.gwA
        assert _path_mtu(lab, gw, "192.0.2.2") == 1500
        assert _path_mtu(lab, gw, "2001:db8::2") == 1500
        lab.run(gw, "ip", "link", "set", gw.wan_iface, "mtu", "1300")
        assert _path_mtu(lab, gw, "192.0.2.2") == 1300
        lab.run(gw, "ip", "route", "add", "192.0.2.2/32", "dev", gw.wan_iface, "mtu", "1200")
        assert _path_mtu(lab, gw, "192.0.2.2") == 1200
        # no route at all: the fallback, never an exception
        assert _path_mtu(lab, gw, "203.0.113.9") == 1500
