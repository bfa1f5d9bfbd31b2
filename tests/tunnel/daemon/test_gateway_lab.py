"""espgw <-> espgw in the namespace lab: traffic, MTU, policy checks, restarts, rekeys, encapsulation.

One lab (IPv4 + IPv6 everywhere) is shared by the module; each test starts its own pair of
gateways (``pair`` fixture) and stops them afterwards, so tests do not leak SAs into each other.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import sys

import dpkt
from pathlib import Path
import pytest

from esp.sa import OutboundSA
from esp.transforms import transform_by_name
from ike.config import ChildConfig, TrafficSelector
from tunnel.dataplane.icmp import tunnel_mtu
from tunnel.lab.configs import site_to_site
from tunnel.lab.espgw import EspgwGateway, GatewaySettings, tcp_transfer, wait_until
from tunnel.lab.interop import wire_summary
from tunnel.lab.netns import Lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab():
    with Lab() as lab:
        yield lab


class Pair:
    """gwA initiates on demand (trap), gwB only responds, like the demo."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.a: EspgwGateway | None = None
        self.b: EspgwGateway | None = None

    def start(self, *, settings: GatewaySettings | None = None, trap: bool = True, **site_kw) -> Pair:
        conn_a, conn_b = site_to_site(self.lab, "A", **site_kw), site_to_site(self.lab, "B", **site_kw)
        for child in conn_a.children:
            child.start_action = "trap" if trap else "none"
        settings = settings or GatewaySettings()
        self.a = EspgwGateway(self.lab, self.lab.gwA, [conn_a], dataclasses.replace(settings)).start()
        self.b = EspgwGateway(self.lab, self.lab.gwB, [conn_b], dataclasses.replace(settings)).start()
        return self

    def stop(self) -> None:
        for gw in (self.a, self.b):
            if gw is not None:
                gw.stop()

    def logs(self, lines: int = 60) -> str:
        return "\n".join(f"--- {gw.name} log\n{gw.log_tail(lines)}" for gw in (self.a, self.b) if gw)


@pytest.fixture
def pair(lab):
    p = Pair(lab)
    yield p
    print(p.logs())  # pytest shows captured output only for a failed test
    if os.environ.get("ESPGW_GATEWAY_LOGS"):
        (Path(os.environ["ESPGW_GATEWAY_LOGS"]) / "last.log").write_text(p.logs(10000))
    p.stop()
    for host in (lab.hostA, lab.hostB):  # learned PMTUs would leak into the next test
        lab.run(host, "ip", "route", "flush", "cache", check=False)
        lab.run(host, "ip", "-6", "route", "flush", "cache", check=False)


def _ping_ok(lab, src, dst, **kw) -> bool:
    """On-demand: the first packets trigger the negotiation, so allow one warm-up round."""
    lab.ping(src, dst, count=1, wait=2)
    return lab.ping(src, dst, count=3, interval=0.1, **kw).ok


def test_ping_ipv4_and_ipv6_inner_over_ipv4_outer(lab, pair):
    assert not lab.untunnelled_reachable()  # only the tunnel joins the LANs
    pair.start()
    assert _ping_ok(lab, lab.hostA, lab.hostB.addr4)
    assert _ping_ok(lab, lab.hostA, lab.hostB.addr6)
    assert lab.ping(lab.hostB, lab.hostA.addr4, count=3, interval=0.1).ok
    assert lab.ping(lab.hostB, lab.hostA.addr6, count=3, interval=0.1).ok
    (child_a,) = pair.a.children()
    (child_b,) = pair.b.children()
    assert child_a["spi_out"] == child_b["spi_in"] and child_a["spi_in"] == child_b["spi_out"]
    assert child_a["packets_out"] >= 8 and child_b["packets_in"] == child_a["packets_out"]
    listing = pair.a.cli("list-sas").stdout  # what a user reads
    assert "lab: #1, ESTABLISHED, IKEv2" in listing and "net: #2, INSTALLED, TUNNEL, ESP:aes256gcm16" in listing
    assert f"in  {child_a['spi_in']}," in listing and f"out {child_a['spi_out']}," in listing
    status = pair.b.cli("status").stdout
    assert "lab: 192.0.2.2...192.0.2.1 IKEv2, up" in status and "drops: none" in status, status


@pytest.mark.parametrize("inner", [4, 6])
def test_tcp_50mb_with_checksum(lab, pair, inner):
    pair.start()
    dst = lab.hostB.addr4 if inner == 4 else lab.hostB.addr6
    assert _ping_ok(lab, lab.hostA, dst)
    sent, received = tcp_transfer(lab, lab.hostA, lab.hostB, dst, 50 * 1024 * 1024, seed=inner)
    assert sent == received and sent.startswith(str(50 * 1024 * 1024))


@pytest.mark.parametrize("outer,encap", [(6, "raw"), (4, "udp"), (6, "udp")])
def test_outer_family_and_esp_in_udp(lab, pair, outer, encap):
    pair.start(ipv6_outer=outer == 6, settings=GatewaySettings(esp_encap=encap))
    pcap = lab.workdir / f"wan-{outer}-{encap}.pcap"
    with lab.capture(lab.gwA, lab.gwA.wan_iface, pcap, bpf="not arp"):
        assert _ping_ok(lab, lab.hostA, lab.hostB.addr4)
        assert _ping_ok(lab, lab.hostA, lab.hostB.addr6)
        sent, received = tcp_transfer(lab, lab.hostA, lab.hostB, lab.hostB.addr4, 2 * 1024 * 1024)
        assert sent == received
    (child,) = pair.a.children()
    spis = {int(child["spi_in"], 16), int(child["spi_out"], 16)}
    wire = wire_summary(pcap)
    assert wire[f"esp_{encap}"] == spis and not wire["esp_udp" if encap == "raw" else "esp_raw"]
    assert wire["ike"] >= 4 and wire["clear"] == 0
    (ike,) = pair.a.ike_sas()
    assert (":" in ike["remote_addr"]) == (outer == 6)
    assert child.get("encap") == (encap == "udp")


def test_two_children_on_one_ike_sa(lab, pair):
    """IPv4 and IPv6 LANs as two CHILD SAs: the second is a CREATE_CHILD_SA on the same IKE SA."""
    pair.start(ipv6_ts=False)
    for gw, me, peer in ((pair.a, lab.gwA, lab.gwB), (pair.b, lab.gwB, lab.gwA)):
        gw.conns[0].children.append(ChildConfig(
            name="net6", local_ts=[TrafficSelector.from_cidr(str(me.lan_net6))],
            remote_ts=[TrafficSelector.from_cidr(str(peer.lan_net6))],
            start_action="trap" if gw is pair.a else "none"))
        gw.restart()
    assert _ping_ok(lab, lab.hostA, lab.hostB.addr4)
    assert _ping_ok(lab, lab.hostA, lab.hostB.addr6)
    (ike_a,) = pair.a.ike_sas()
    (ike_b,) = pair.b.ike_sas()
    assert sorted(c["name"] for c in ike_a["children"]) == ["net", "net6"]
    assert sorted(c["name"] for c in ike_b["children"]) == ["net", "net6"]
    by_name = {c["name"]: c for c in ike_a["children"]}
    assert by_name["net"]["packets_out"] >= 3 and by_name["net6"]["packets_out"] >= 3
    assert by_name["net"]["remote_ts"][-1] == str(lab.gwB.lan_net4)
    # (the first selector may be the trapped packet's own /128, RFC 7296 s2.9)
    assert by_name["net6"]["remote_ts"][-1] == str(lab.gwB.lan_net6)


def _ping_raw(lab, src, *argv) -> str:
    done = lab.run(src, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", *argv, check=False)
    return done.stdout + done.stderr


def test_df_and_pmtu(lab, pair):
    """TUN MTU 1500 > the SA's MTU, so the daemon itself must answer too-big or fragment.
    (The pair fixture flushes the PMTUs the hosts learn here.)"""
    pair.start(settings=GatewaySettings(mtu=1500))
    assert _ping_ok(lab, lab.hostA, lab.hostB.addr4)
    (child,) = pair.a.children()
    sa_mtu = child["mtu"]
    assert 1400 < sa_mtu < 1500
    big = sa_mtu + 20  # ICMP payload: the IPv4 packet is sa_mtu + 48 bytes
    out = _ping_raw(lab, lab.hostA, "-M", "do", "-s", big, lab.hostB.addr4)
    assert f"mtu = {sa_mtu}" in out or f"mtu={sa_mtu}" in out, out
    assert " 0 received" in out
    out = _ping_raw(lab, lab.hostA, "-M", "dont", "-s", big, lab.hostB.addr4)
    assert "2 received" in out, out  # fragmented by gwA, reassembled by hostB
    assert _ping_ok(lab, lab.hostA, lab.hostB.addr6)
    out = _ping_raw(lab, lab.hostA, "-M", "do", "-s", big - 20, lab.hostB.addr6)  # 40-byte header
    assert f"mtu={sa_mtu}" in out or f"mtu = {sa_mtu}" in out, out
    out = _ping_raw(lab, lab.hostA, "-s", sa_mtu - 48 - 20, lab.hostB.addr4)  # exactly fits
    assert "2 received" in out, out


def test_sa_mtu_follows_the_path_mtu(lab, pair):
    """A 1300-byte public link: the SA's MTU comes from the kernel's path MTU, not a constant."""
    lab.run(lab.gwA, "ip", "link", "set", lab.gwA.wan_iface, "mtu", "1300")
    try:
        pair.start(settings=GatewaySettings(mtu=1500))
        assert _ping_ok(lab, lab.hostA, lab.hostB.addr4)
        (child,) = pair.a.children()
        t = transform_by_name(child["proposal"].split("-")[0])
        expected = tunnel_mtu(1300, iv_len=t.iv_len, icv_len=t.icv_len, align=t.align)
        assert child["mtu"] == expected
        out = _ping_raw(lab, lab.hostA, "-M", "do", "-s", expected, lab.hostB.addr4)
        assert f"mtu = {expected}" in out or f"mtu={expected}" in out, out
    finally:
        lab.run(lab.gwA, "ip", "link", "set", lab.gwA.wan_iface, "mtu", "1500")


def _crafted_esp(keys: dict, src: str, dst: str, inner_src: str, inner_dst: str, seq: int) -> bytes:
    """An ICMP echo from inner_src to inner_dst, sealed with the src -> dst SA's real keys."""
    row = next(r for r in keys["child_sas"] if r["src"] == src and r["dst"] == dst)
    echo = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=7, seq=1, data=b"crafted"))
    inner = dpkt.ip.IP(src=socket.inet_aton(inner_src), dst=socket.inet_aton(inner_dst), p=1, ttl=64, data=echo)
    inner.len = len(bytes(inner))
    sa = OutboundSA(row["spi"], row["esp_transform"], bytes.fromhex(row["keymat"]), initial_seq=seq)
    return sa.encapsulate(bytes(inner), 4)


def test_inner_address_outside_the_sa_is_dropped_and_counted(lab, pair):
    """gwA's real SA keys seal a packet from 10.0.9.9 (not in gwA's LAN): gwB must drop it."""
    pair.start()
    assert _ping_ok(lab, lab.hostA, lab.hostB.addr4)
    keys = pair.a.request("keys")
    wan_a, wan_b = lab.gwA.wan_addr4, lab.gwB.wan_addr4
    spoofed = _crafted_esp(keys, wan_a, wan_b, "10.0.9.9", lab.hostB.addr4, seq=1_000_000)
    genuine = _crafted_esp(keys, wan_a, wan_b, lab.hostA.addr4, lab.hostB.addr4, seq=1_000_001)
    (before,) = pair.b.children()
    send = ("import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)\n"
            "for h in sys.argv[2:]: s.sendto(bytes.fromhex(h), (sys.argv[1], 0))")
    lab.run(lab.gwA, sys.executable, "-c", send, wan_b, spoofed.hex(), genuine.hex())
    wait_until(lambda: pair.b.children()[0]["packets_in"] > before["packets_in"], 5, "the genuine packet")
    status = pair.b.status()
    assert status["drops"] == {"inner_mismatch": 1}, status["drops"]  # counted once, not per layer
    (after,) = pair.b.children()
    assert after["drops"] == {"inner_mismatch": 1}
    assert after["packets_in"] == before["packets_in"] + 2  # both authenticated; one was dropped after
    text = pair.b.cli("status").stdout
    assert "inner_mismatch 1" in text, text


def _spis(gw: EspgwGateway) -> set[str]:
    return {c["spi_in"] for c in gw.children()}


def test_child_rekey_under_traffic_loses_nothing(lab, pair):
    """Both sides rekey every ~2.5 s (so collisions happen too) while pings fly every 10 ms."""
    pair.start(ipv6_ts=False)
    for gw in (pair.a, pair.b):
        child = gw.conns[0].children[0]
        child.rekey_time, child.life_time, child.rand_time = 2.5, 6.0, 0.5
        gw.restart()
    assert _ping_ok(lab, lab.hostA, lab.hostB.addr4)
    first_a, first_b = _spis(pair.a), _spis(pair.b)
    result = lab.ping(lab.hostA, lab.hostB.addr4, count=700, interval=0.01, wait=1)
    assert result.transmitted == 700 and result.received == 700, result.output[-300:]
    sent, received = tcp_transfer(lab, lab.hostA, lab.hostB, lab.hostB.addr4, 20 * 1024 * 1024)
    assert sent == received
    assert not _spis(pair.a) & first_a and not _spis(pair.b) & first_b
    for gw in (pair.a, pair.b):
        log = gw.log_path.read_text()
        assert len(re.findall(r'"rekeyed_from": \d', log)) >= 2 and '"child_sa.switched"' in log
        status = gw.status()
        assert not {k: v for k, v in status["drops"].items() if not k.startswith("ike_")}, status["drops"]


@pytest.mark.parametrize("victim", ["gwA", "gwB"])
def test_gateway_killed_and_restarted_recovers(lab, pair, victim):
    """SIGKILL leaves the survivor with stale SAs; the restarted side's new IKE SA carries
    INITIAL_CONTACT, so the survivor drops the old ones. Both sides are on-demand here."""
    pair.start()
    for child in pair.b.conns[0].children:
        child.start_action = "trap"
    pair.b.restart()
    assert _ping_ok(lab, lab.hostA, lab.hostB.addr4)
    gw, survivor = (pair.a, pair.b) if victim == "gwA" else (pair.b, pair.a)
    (old_ike,) = survivor.ike_sas()
    gw.kill()
    gw.start()
    # traffic from the restarted side's LAN triggers its new IKE SA
    near, far = (lab.hostA, lab.hostB) if victim == "gwA" else (lab.hostB, lab.hostA)
    assert _ping_ok(lab, near, far.addr4)
    assert lab.ping(far, near.addr4, count=3, interval=0.1).ok
    (new_ike,) = wait_until(lambda: len(survivor.ike_sas()) == 1 and survivor.ike_sas(), 5,
                            "the survivor to drop its stale IKE SA")
    assert new_ike["unique_id"] != old_ike["unique_id"]


def test_narrowed_selectors_have_no_redundant_entries(lab, pair):
    pair.start(ipv6_ts=False)
    assert _ping_ok(lab, lab.hostA, lab.hostB.addr4)
    (child,) = pair.b.children()
    assert child["local_ts"] == [str(lab.gwB.lan_net4)] and child["remote_ts"] == [str(lab.gwA.lan_net4)]


@pytest.mark.parametrize("case", ["ok", "untrusted"])
def test_certificates_between_two_espgw(lab, pair, case):
    """Both gateways authenticate with certificates (ECDSA gwA, RSA-PSS gwB); with a CA gwB does not
    trust, gwA's IKE_AUTH is refused and neither side keeps anything."""
    from ike.config import AuthConfig
    from tunnel.lab.lab_pki import LabPki
    ours, stranger = LabPki.make(), LabPki.make(name="Stranger CA")
    conn_a, conn_b = site_to_site(lab, "A"), site_to_site(lab, "B")
    conn_a.local = AuthConfig("pubkey", id="gwa.lab", credential=ours.gateway("gwa.lab", "ecdsa256"))
    conn_a.remote = AuthConfig("pubkey", id="gwb.lab", trust=ours.trust())
    conn_b.local = AuthConfig("pubkey", id="gwb.lab", credential=ours.gateway("gwb.lab", "rsa3072"), rsa_pss=True)
    conn_b.remote = AuthConfig("pubkey", id="gwa.lab", trust=(stranger if case == "untrusted" else ours).trust())
    pair.a = EspgwGateway(lab, lab.gwA, [conn_a]).start()
    pair.b = EspgwGateway(lab, lab.gwB, [conn_b]).start()
    pair.a.request("initiate", child="net")
    if case == "ok":
        wait_until(lambda: pair.a.children() and pair.b.children(), 10, "the CHILD SA on both", on_timeout=pair.logs)
        assert lab.ping(lab.hostA, lab.hostB.addr4, count=3, interval=0.1).ok
        sent, received = tcp_transfer(lab, lab.hostA, lab.hostB, lab.hostB.addr4, 1 << 20, seed=4)
        assert sent == received
        (sa,) = pair.a.ike_sas()
        assert sa["local_auth"] == "pubkey ecdsa-with-sha256" and "PSS" in sa["remote_auth"]
    else:
        wait_until(lambda: "untrusted" in pair.b.log_path.read_text(), 10, "gwB's refusal", on_timeout=pair.logs)
        wait_until(lambda: not pair.a.ike_sas() and not pair.b.ike_sas(), 10, "no SAs", on_timeout=pair.logs)
        assert "Traceback" not in pair.a.log_path.read_text() + pair.b.log_path.read_text()
