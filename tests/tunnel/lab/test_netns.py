"""The namespace lab itself: topology, isolation, teardown, loss, capture (needs root)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import dpkt
import pytest
from pyroute2 import netns

from tunnel.lab.netns import Lab, LabError, cleanup_stale

pytestmark = pytest.mark.lab


def _ours(prefix: str) -> list[str]:
    return [n for n in netns.listnetns() if n.startswith(prefix + "-")]


def test_lab_builds_topology_and_tears_down():
    with Lab() as lab:
        assert sorted(_ours(lab.prefix)) == sorted(lab.namespaces)
        assert all(len(n) <= 15 for n in lab.namespaces)
        assert lab.hostA.addr4 == "10.0.0.7" and lab.hostB.addr4 == "10.0.5.9"
        assert lab.gwA.wan_addr4 == "192.0.2.1" and lab.gwB.wan_addr6 == "2001:db8::2"
        # every hop that exists answers at once, IPv6 included (no DAD delay)
        assert lab.ping(lab.hostA, str(lab.hostA.gateway4), count=1).ok
        assert lab.ping(lab.hostA, str(lab.hostA.gateway6), count=1).ok
        assert lab.ping(lab.gwA, lab.gwB.wan_addr4, count=1).ok
        assert lab.ping(lab.gwB, lab.gwA.wan_addr6, count=1).ok
        assert lab.ping(lab.hostB, str(lab.hostB.gateway6), count=1).ok
        assert lab.run(lab.gwA, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
        workdir = lab.workdir
        assert workdir.is_dir()
    assert _ours(lab.prefix) == []
    assert not workdir.exists()


def test_lab_tears_down_when_the_body_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(ipv6=False) as lab:
            sleeper = lab.spawn(lab.hostA, "sleep", "60")
            raise RuntimeError("boom")
    assert _ours(lab.prefix) == []
    assert sleeper.poll() is not None


def test_no_path_between_lans_without_a_tunnel():
    with Lab() as lab:
        assert not lab.untunnelled_reachable()
        assert not lab.untunnelled_reachable(ipv6=True)
        with lab.plain_routing():  # the explicit no-IPsec baseline does reach
            assert lab.ping(lab.hostA, lab.hostB.addr4, count=1).ok
            assert lab.ping(lab.hostB, lab.hostA.addr6, count=1).ok
        assert not lab.untunnelled_reachable()


def test_loss_capture_and_iperf3():
    with Lab(ipv6=False) as lab, lab.plain_routing():
        pcap = lab.workdir / "wan.pcap"
        with lab.capture(lab.gwA, lab.gwA.wan_iface, pcap, bpf="icmp"):
            assert lab.ping(lab.hostA, lab.hostB.addr4, count=4, interval=0.05).ok
        frames = [dpkt.ethernet.Ethernet(buf) for _, buf in dpkt.pcap.Reader(open(pcap, "rb"))]
        assert len(frames) == 8 and all(isinstance(f.data.data, dpkt.icmp.ICMP) for f in frames)

        lab.set_loss(lab.gwA, lab.gwA.wan_iface, 100)
        assert lab.ping(lab.hostA, lab.hostB.addr4, count=2, interval=0.05, wait=0.5).received == 0
        lab.set_loss(lab.gwA, lab.gwA.wan_iface, 0)
        assert lab.ping(lab.hostA, lab.hostB.addr4, count=2, interval=0.05).ok
        with pytest.raises(LabError):
            lab.set_loss(lab.gwA, lab.gwA.wan_iface, 101)

        result = lab.iperf3(lab.hostA, lab.hostB, lab.hostB.addr4, seconds=1)
        assert result["end"]["sum_received"]["bits_per_second"] > 1e6


_HOLD_LAB = """
import sys, time
from tunnel.lab.netns import Lab
lab = Lab(prefix=sys.argv[1], ipv6=False)
lab.spawn(lab.gwA, "sleep", "60")
print("ready", flush=True)
time.sleep(60)
"""


def _lab_in_child(prefix: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", _HOLD_LAB, prefix], stdout=subprocess.PIPE, text=True)
    # (a failing assertion below leaves the child to its own 60 s exit, which removes its lab)
    while (line := child.stdout.readline()) and line.strip() != "ready":
        pass  # structlog lines come first
    assert line.strip() == "ready"
    assert len(_ours(prefix)) == 4
    return child


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_removes_the_lab(sig):
    prefix = "egt" + os.urandom(3).hex()
    child = _lab_in_child(prefix)
    try:
        child.send_signal(sig)
        child.wait(15)
        assert _ours(prefix) == []
    finally:
        child.kill()
        cleanup_stale(prefix)


def test_cleanup_stale_after_sigkill():
    prefix = "egk" + os.urandom(3).hex()
    child = _lab_in_child(prefix)
    try:
        assert cleanup_stale(prefix) == []  # the owner is alive: left alone
    finally:
        child.kill()
    child.wait(5)
    time.sleep(0.1)
    assert sorted(cleanup_stale(prefix)) == sorted(f"{prefix}-{r}" for r in ("hostA", "gwA", "gwB", "hostB"))
    assert _ours(prefix) == []
