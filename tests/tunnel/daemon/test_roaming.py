"""tunnel.daemon.roaming without a kernel: when a MOBIKE update starts, how SAs that moved change
the data path, and which ESP-in-UDP runs are offered to IKE as a new peer address."""

from __future__ import annotations

from types import SimpleNamespace

from ike.events import IkeSaMoved
from tunnel.daemon import roaming
from tunnel.daemon.roaming import Roaming

PEER = ("192.0.2.2", 4500)


class FakeIke:
    def __init__(self, sas=(), accept=True):
        self.sas = list(sas)
        self.roamed: list[tuple[int, str]] = []
        self.esp: list[tuple[int, tuple]] = []
        self.accept = accept

    def roaming_sas(self):
        return self.sas

    def roam(self, unique_id, local_ip, now):
        self.roamed.append((unique_id, local_ip))
        return True

    def esp_from(self, spi, src, now):
        self.esp.append((spi, src))
        return self.accept


class FakeVirtualIps:
    """The client's virtual IPs; records when the gateway's host route was brought up to date."""

    def __init__(self):
        self.addresses: dict[str, int] = {}
        self.followed: list[str] = []

    def follow_gateway_paths(self):
        self.followed.append("follow")


def _gateway(ike, children=None, receive=None):
    gw = SimpleNamespace(ike=ike, children=children or {}, raw_v4=None, raw_v6=None, udp=None, udp_out=None,
                         force_udp=False, nat_keepalives={}, clock=lambda: 5.0, pumped=[],
                         virtual_ips=FakeVirtualIps())
    gw.pump = gw.pumped.append
    gw.receiver = SimpleNamespace(receive=receive or (lambda packets, ecn, seen: None))
    return gw


def test_a_new_source_address_starts_an_update_once_a_second(monkeypatch):
    ike = FakeIke([(1, ("192.168.1.7", 4500), PEER), (2, ("2001:db8::7", 4500), ("2001:db8::2", 4500))])
    r = Roaming(_gateway(ike))
    answers = {"192.0.2.2": "172.16.7.7", "2001:db8::2": "172.16.7.7"}  # an IPv4 source for v6: ignored
    r.route_source = answers.get
    r.check(10.0)
    assert ike.roamed == [(1, "172.16.7.7")]
    r.check(10.5)  # within CHECK_INTERVAL: no look-up
    assert ike.roamed == [(1, "172.16.7.7")]
    answers["192.0.2.2"] = "192.168.1.7"
    ike.roamed.clear()
    r.check(11.0 + roaming.CHECK_INTERVAL)
    assert ike.roamed == []  # unchanged
    answers.pop("192.0.2.2")
    r.check(20.0)
    assert ike.roamed == []  # no route at all: wait for one


def test_an_sa_that_moved_gets_new_transmitters_and_keepalives(monkeypatch):
    made = []
    monkeypatch.setattr(roaming, "transmit_between", lambda *a, **kw: made.append(a) or (lambda esp, inner: True))
    moved = []
    path = SimpleNamespace(local=("192.168.1.7", 4500), remote=PEER, encap=True,
                           move=lambda *a: moved.append(a))
    gw = _gateway(FakeIke(), {7: path})
    r = Roaming(gw)
    event = IkeSaMoved("office", 1, ("172.16.7.7", 4500), PEER, True, True, (7, 8))
    r.on_moved(event)
    assert made == [(("172.16.7.7", 4500), PEER, True)] and moved[0][:3] == (("172.16.7.7", 4500), PEER, True)
    assert gw.nat_keepalives == {1: (("172.16.7.7", 4500), PEER)}
    r.on_moved(IkeSaMoved("office", 1, ("172.16.7.7", 4500), PEER, False, False, ()))
    assert gw.nat_keepalives == {}


def test_esp_runs_from_a_new_port_are_offered_to_ike_once_authentic():
    spi = 0x1234
    esp = spi.to_bytes(4, "big") + bytes(20)
    path = SimpleNamespace(remote=("198.51.100.1", 20001), encap=True)

    def receive(packets, ecn, seen):
        if packets[0] != b"forged":
            seen[spi] = object()

    ike = FakeIke(accept=False)
    gw = _gateway(ike, {spi: path}, receive)
    r = Roaming(gw)
    seen: dict = {}
    r.receive_runs([([esp], 0), ([esp], 0)], [("198.51.100.1", 20001), ("198.51.100.1", 30001)], seen)
    assert spi in seen and ike.esp == [(spi, ("198.51.100.1", 30001))]
    r.receive_runs([([esp], 0)], [("198.51.100.1", 30001)], {})
    assert len(ike.esp) == 1  # refused once: not asked again for the same source
    forged = spi.to_bytes(4, "big")
    r.receive_runs([([b"forged" + forged], 0)], [("203.0.113.66", 4500)], {})
    assert len(ike.esp) == 1  # not an SA of ours by that SPI
    ike.accept = True
    r.receive_runs([([esp], 0)], [("198.51.100.1", 40001)], {})
    assert ike.esp[-1] == (spi, ("198.51.100.1", 40001)) and gw.pumped == [5.0]


def test_the_host_route_follows_first_and_a_virtual_ip_is_never_a_new_source():
    """A full tunnel: between networks the kernel routes the gateway into the TUN (source: the
    virtual IP). That is not a new path: no update; the host route is brought up to date before
    each look-up, so the next one answers with the new network's address."""
    ike = FakeIke([(1, ("192.168.1.7", 4500), PEER)])
    gw = _gateway(ike)
    gw.virtual_ips.addresses["10.3.0.1"] = 1
    r = Roaming(gw)
    order: list[str] = []
    gw.virtual_ips.follow_gateway_paths = lambda: order.append("follow")
    answers = {"192.0.2.2": "10.3.0.1"}

    def source(peer):
        order.append("lookup")
        return answers.get(peer)
    r.route_source = source
    r.check(10.0)
    assert ike.roamed == [] and order == ["follow", "lookup"]
    answers["192.0.2.2"] = "172.16.7.7"
    r.check(10.0 + roaming.CHECK_INTERVAL)
    assert ike.roamed == [(1, "172.16.7.7")]


def test_no_route_at_all_is_none_not_an_exception(monkeypatch):
    from pyroute2.netlink.exceptions import NetlinkError

    class Unreachable:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def route(self, *args, **kw):
            raise NetlinkError(101, "Network is unreachable")
    monkeypatch.setattr(roaming, "IPRoute", Unreachable)
    assert roaming.route_source("192.0.2.2") is None
