"""The SPD: outbound selection (most specific first, cache) and the RFC 4301 inbound check."""

from __future__ import annotations

import ipaddress

import dpkt
import pytest

from ike.config import TrafficSelector
from tunnel.dataplane.policy import PolicyTable, parse_packet

TS = TrafficSelector.from_cidr


def udp4(src: str, dst: str, sport: int = 1000, dport: int = 53, frag_offset: int = 0) -> bytes:
    ip = dpkt.ip.IP(src=ipaddress.ip_address(src).packed, dst=ipaddress.ip_address(dst).packed, p=17,
                    data=dpkt.udp.UDP(sport=sport, dport=dport, data=b"x"))
    ip.offset = frag_offset  # dpkt: in 8 byte units
    return bytes(ip)


def tcp6(src: str, dst: str, sport: int = 1000, dport: int = 443) -> bytes:
    ip = dpkt.ip6.IP6(src=ipaddress.ip_address(src).packed, dst=ipaddress.ip_address(dst).packed, nxt=6, hlim=64,
                      data=dpkt.tcp.TCP(sport=sport, dport=dport))
    ip.plen = len(ip.data)
    return bytes(ip)


def icmp4(src: str, dst: str, icmp_type: int = 8) -> bytes:
    ip = dpkt.ip.IP(src=ipaddress.ip_address(src).packed, dst=ipaddress.ip_address(dst).packed, p=1,
                    data=dpkt.icmp.ICMP(type=icmp_type, data=dpkt.icmp.ICMP.Echo(id=1, seq=1)))
    return bytes(ip)


def test_address_only_selection_and_cache():
    table = PolicyTable()
    table.add("net", [TS("10.1.0.0/16")], [TS("10.2.0.0/16")], "sa-net")
    assert table.lookup_outbound(udp4("10.1.0.5", "10.2.3.4")) == "sa-net"
    assert table.lookup_outbound(udp4("10.1.0.5", "10.2.3.4")) == "sa-net"  # from the cache
    assert table.lookup_outbound(udp4("10.1.0.5", "10.3.0.1")) is None
    assert table.lookup_outbound(udp4("10.9.0.5", "10.2.0.1")) is None
    assert table.counters["no_policy"] == 2


def test_most_specific_wins_regardless_of_order():
    table = PolicyTable()
    table.add("wide", [TS("10.1.0.0/16")], [TS("10.0.0.0/8")], "sa-wide")
    table.add("host", [TS("10.1.0.0/16")], [TS("10.2.0.7/32")], "sa-host")
    table.add("mid", [TS("10.1.0.0/16")], [TS("10.2.0.0/24")], "sa-mid")
    assert table.lookup_outbound(udp4("10.1.1.1", "10.2.0.7")) == "sa-host"
    assert table.lookup_outbound(udp4("10.1.1.1", "10.2.0.8")) == "sa-mid"
    assert table.lookup_outbound(udp4("10.1.1.1", "10.3.0.8")) == "sa-wide"
    table.remove("host")  # invalidates the cache
    assert table.lookup_outbound(udp4("10.1.1.1", "10.2.0.7")) == "sa-mid"


def test_protocol_and_port_selectors_beat_address_only():
    table = PolicyTable()
    table.add("all", [TS("10.1.0.0/16")], [TS("10.2.0.0/16")], "sa-all")
    table.add("dns", [TS("10.1.0.0/16")], [TS("10.2.0.0/16", protocol=17, start_port=53, end_port=53)], "sa-dns")
    assert table.lookup_outbound(udp4("10.1.0.1", "10.2.0.1", dport=53)) == "sa-dns"
    assert table.lookup_outbound(udp4("10.1.0.1", "10.2.0.1", dport=54)) == "sa-all"
    # A non-first fragment has no ports (RFC 4301 OPAQUE): only the any-port policy may take it.
    assert table.lookup_outbound(udp4("10.1.0.1", "10.2.0.1", dport=53, frag_offset=100)) == "sa-all"
    table.remove("all")
    assert table.lookup_outbound(udp4("10.1.0.1", "10.2.0.1", dport=54)) is None
    assert table.lookup_outbound(udp4("10.1.0.1", "10.2.0.1", dport=53, frag_offset=100)) is None


def test_icmp_type_in_port_field():
    table = PolicyTable()
    echo = 8 << 8
    table.add("ping", [TS("10.1.0.0/16", protocol=1)], [TS("10.2.0.0/16", protocol=1, start_port=echo,
                                                            end_port=echo + 255)], "sa-ping")
    assert table.lookup_outbound(icmp4("10.1.0.1", "10.2.0.1", icmp_type=8)) == "sa-ping"
    assert table.lookup_outbound(icmp4("10.1.0.1", "10.2.0.1", icmp_type=13)) is None


def test_ipv6_and_mixed_versions():
    table = PolicyTable()
    table.add("both", [TS("10.1.0.0/16"), TS("fd01::/64")], [TS("10.2.0.0/16"), TS("fd02::/64")], "sa-both")
    assert table.lookup_outbound(tcp6("fd01::1", "fd02::2")) == "sa-both"
    assert table.lookup_outbound(udp4("10.1.0.1", "10.2.0.1")) == "sa-both"
    assert table.lookup_outbound(tcp6("fd01::1", "fd03::2")) is None
    table.add("https", [TS("fd01::/64")], [TS("fd02::/64", protocol=6, start_port=443, end_port=443)], "sa-https")
    assert table.lookup_outbound(tcp6("fd01::1", "fd02::2", dport=443)) == "sa-https"
    assert table.lookup_outbound(tcp6("fd01::1", "fd02::2", dport=80)) == "sa-both"


def test_newest_of_equal_policies_wins_for_rekey():
    table = PolicyTable()
    table.add("old", [TS("10.1.0.0/16")], [TS("10.2.0.0/16")], "sa-old")
    table.add("new", [TS("10.1.0.0/16")], [TS("10.2.0.0/16")], "sa-new")
    assert table.lookup_outbound(udp4("10.1.0.1", "10.2.0.1")) == "sa-new"
    table.remove("old")
    assert table.lookup_outbound(udp4("10.1.0.1", "10.2.0.1")) == "sa-new"


def test_inbound_check():
    table = PolicyTable()
    outbound, inbound = object(), object()
    table.add("c", [TS("10.1.0.0/16")], [TS("10.2.0.0/16", protocol=17, start_port=53, end_port=53)], outbound)
    table.bind_inbound("c", inbound)
    reply = udp4("10.2.0.9", "10.1.0.9", sport=53, dport=40000)
    assert table.check_inbound(inbound, reply)
    assert table.check_inbound(outbound, reply)
    assert not table.check_inbound(inbound, udp4("10.2.0.9", "10.1.0.9", sport=54, dport=40000))
    assert not table.check_inbound(inbound, udp4("10.9.0.9", "10.1.0.9", sport=53))  # spoofed source
    assert not table.check_inbound(inbound, udp4("10.1.0.9", "10.2.0.9", sport=53))  # reversed
    assert not table.check_inbound(object(), reply)  # unknown SA
    assert not table.check_inbound(inbound, b"\x45garbage")
    table.remove("c")
    assert not table.check_inbound(inbound, reply)
    with pytest.raises(KeyError):
        table.bind_inbound("c", inbound)


@pytest.mark.parametrize("junk", [b"", b"\x45", b"\x60" * 39, b"\x00" * 40, b"\x4f" + b"\x00" * 19, b"\xff" * 64])
def test_malformed_packets_are_counted_not_raised(junk):
    table = PolicyTable()
    table.add("c", [TS("0.0.0.0/0")], [TS("0.0.0.0/0", protocol=6)], "sa")
    table.add("c6", [TS("::/0")], [TS("::/0", protocol=6)], "sa6")
    assert table.lookup_outbound(junk) is None
    assert not table.check_inbound("sa", junk)
    parse_packet(junk)


def test_invalid_selectors_rejected():
    table = PolicyTable()
    with pytest.raises(ValueError):
        table.add("x", [TS("10.0.0.0/8")], [TS("fd00::/8")], "sa")
    bad = TrafficSelector(ipaddress.ip_address("10.0.0.9"), ipaddress.ip_address("10.0.0.1"))
    with pytest.raises(ValueError):
        table.add("x", [bad], [TS("10.0.0.0/8")], "sa")
    assert len(table) == 0


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_never_raises(data):
    table = PolicyTable()
    table.add("v4", [TS("0.0.0.0/0")], [TS("10.0.0.0/8", protocol=17, start_port=53, end_port=53)], "sa4")
    table.add("v6", [TS("::/0")], [TS("fd00::/8")], "sa6")
    table.lookup_outbound(data)
    table.check_inbound("sa4", data)
    table.check_inbound("sa6", data)


def test_incremental_insert_and_remove_keep_the_sorted_order_and_bindings():
    import random

    table, r = PolicyTable(), random.Random(5)
    live: set[str] = set()
    for step in range(600):
        name = f"c{r.randrange(120)}"
        if name in live and r.random() < 0.4:
            assert table.remove(name)
            live.discard(name)
        else:
            prefix = r.choice([8, 16, 24, 32])
            remote = TS(f"10.{r.randrange(4)}.{r.randrange(4)}.{r.randrange(4)}/{prefix}")
            table.add(name, [TS("192.168.0.0/16"), TS(f"172.16.{r.randrange(4)}.0/24")], [remote], f"sa-{name}")
            table.bind_inbound(name, f"in-{name}-{step}")
            live.add(name)
        expected = sorted((rule for rules in table._by_child.values() for rule in rules), key=lambda x: x.rank)
        assert table._rules == expected
        assert set(table._inbound.values()) == live
        assert sorted(o for bound in table._inbound_of.values() for o in bound) == sorted(table._inbound)
    for name in list(live):
        table.remove(name)
    assert not table._rules and not table._inbound and not table._inbound_of
