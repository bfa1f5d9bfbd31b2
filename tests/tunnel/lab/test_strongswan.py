"""strongSwan <-> strongSwan in the lab: 5.9.8 (ESP-in-UDP) and 6.0 (raw ESP, IP protocol 50)."""

from __future__ import annotations

import json
import os
import struct

import dpkt
import pytest
from pyroute2 import netns

from tunnel.lab.configs import site_to_site
from tunnel.lab.netns import Lab
from tunnel.lab.record_fixtures import record as record_fixture
from tunnel.lab.strongswan import StrongSwan, StrongSwanError

pytestmark = [pytest.mark.lab, pytest.mark.strongswan]
# ARP and ICMPv6 neighbour discovery (types 133-137) are the only plain traffic allowed
NOT_NEIGHBOUR_DISCOVERY = "not arp and not (icmp6 and ip6[40] >= 133 and ip6[40] <= 137)"


def _wire_summary(pcap_path) -> dict:
    """Count what crossed the public link: ESP-in-UDP, raw ESP, IKE, anything in the clear."""
    seen = {"esp_udp": set(), "esp_raw": set(), "ike": 0, "clear": 0}
    with open(pcap_path, "rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                continue
            proto = ip.p if isinstance(ip, dpkt.ip.IP) else ip.nxt
            payload = bytes(ip.data)
            if proto == 50:
                seen["esp_raw"].add(struct.unpack("!I", payload[:4])[0])
            elif proto == 17 and 4500 in struct.unpack("!HH", payload[:4]):
                body = payload[8:]
                if body[:4] == b"\0\0\0\0":
                    seen["ike"] += 1  # non-ESP marker: IKE on 4500
                elif len(body) > 1:  # (a 1-byte 0xff is a NAT-T keepalive)
                    seen["esp_udp"].add(struct.unpack("!I", body[:4])[0])
            elif proto == 17 and 500 in struct.unpack("!HH", payload[:4]):
                seen["ike"] += 1
            elif proto in (1, 58, 6):
                seen["clear"] += 1
    return seen


@pytest.mark.parametrize("version", ["5.9", "6.0"])
def test_strongswan_pair_tunnel(version):
    with Lab() as lab:
        gw_a = StrongSwan(lab, lab.gwA, version, [site_to_site(lab, "A")]).start()
        gw_b = StrongSwan(lab, lab.gwB, version, [site_to_site(lab, "B")]).start()
        try:
            assert not lab.untunnelled_reachable()
            gw_a.initiate(child="net")
            (child_a,) = gw_a.child_sas("net")
            gw_b.wait_for(lambda _: gw_b.child_sas("net"), what="CHILD_SA installed on gwB")
            (child_b,) = gw_b.child_sas("net")
            assert child_a["spi-out"] == child_b["spi-in"]

            pcap = lab.workdir / "wan.pcap"
            with lab.capture(lab.gwA, lab.gwA.wan_iface, pcap, bpf=NOT_NEIGHBOUR_DISCOVERY):
                for src, dst in ((lab.hostA, lab.hostB), (lab.hostB, lab.hostA)):
                    assert lab.ping(src, dst.addr4, count=3, interval=0.1).ok
                    assert lab.ping(src, dst.addr6, count=3, interval=0.1).ok
            wire = _wire_summary(pcap)
            spis = {int(child_a["spi-out"], 16), int(child_a["spi-in"], 16)}
            if version == "5.9":
                assert wire["esp_udp"] == spis and not wire["esp_raw"]
            else:
                assert wire["esp_raw"] == spis and not wire["esp_udp"]
            assert wire["clear"] == 0
        except BaseException:
            print(f"--- gwA charon.log\n{gw_a.log_tail(60)}\n--- gwB charon.log\n{gw_b.log_tail(60)}")
            raise
    assert not [n for n in netns.listnetns() if n.startswith(lab.prefix)]


def test_bad_config_is_a_typed_error():
    with Lab(ipv6=False) as lab:
        gw = StrongSwan(lab, lab.gwA, "5.9").start()
        with pytest.raises(StrongSwanError, match="load-all"):
            gw.load_all([site_to_site(lab, "A", proposals=["no-such-cipher"])])
        assert gw.running
        pid = gw.pid
    assert not os.path.exists(f"/proc/{pid}")


def test_rekey_terminate_and_logged_keys(tmp_path):
    """The fixture recorder end to end: both rekeys, delete, keys that open every SK payload."""
    record = json.loads(record_fixture("6.0", "gcm", tmp_path).read_text())
    assert record["encrypted_messages_checked"] == 12
    assert (tmp_path / record["pcap"]).stat().st_size > 0
