"""IPv4 pre-fragmentation and the per-packet MTU decision (unit level; see test_tun_lab for a real stack)."""

from __future__ import annotations

import ipaddress
import os

import dpkt
import pytest

from tunnel.dataplane.fragment import FragmentError, fit_to_mtu, fragment_ipv4, ipv4_header_checksum


def ip4(size: int, df: bool = False, options: bytes = b"", ident: int = 0x1234) -> bytes:
    body = os.urandom(size - 20 - len(options))
    ip = dpkt.ip.IP(src=ipaddress.ip_address("10.1.0.5").packed, dst=ipaddress.ip_address("10.2.0.9").packed,
                    p=17, id=ident, opts=options, hl=5 + len(options) // 4, data=body)
    ip.df = int(df)
    return bytes(ip)


def reassemble(fragments: list[bytes]) -> bytes:
    """A minimal reassembler for checking; the lab test lets Linux do it for real."""
    first = dpkt.ip.IP(fragments[0])
    data = bytearray()
    for frag in sorted(fragments, key=lambda f: dpkt.ip.IP(f).offset):
        ip = dpkt.ip.IP(frag)
        assert ip.offset * 8 == len(data)  # dpkt reports the offset field in 8 byte units
        data += bytes(ip.data)
    assert not dpkt.ip.IP(fragments[-1]).mf
    ip = dpkt.ip.IP(id=first.id, src=first.src, dst=first.dst, p=first.p, ttl=first.ttl, opts=first.opts,
                    hl=first.hl, data=bytes(data))
    return bytes(ip)


@pytest.mark.parametrize("size,mtu", [(1500, 1400), (1500, 576), (65000, 1438), (100, 68), (1439, 1438)])
def test_fragments_fit_and_reassemble(size, mtu):
    packet = ip4(size)
    fragments = fragment_ipv4(packet, mtu)
    assert len(fragments) > 1
    for frag in fragments:
        assert len(frag) <= mtu
        assert ipv4_header_checksum(frag[:20]) == 0  # a valid header sums to zero
        assert dpkt.ip.IP(frag).id == 0x1234
    for frag in fragments[:-1]:
        assert (len(frag) - 20) % 8 == 0 and dpkt.ip.IP(frag).mf
    assert reassemble(fragments) == packet


def test_packet_that_fits_is_returned_as_is():
    packet = ip4(1000)
    assert fragment_ipv4(packet, 1000) == [packet]
    assert fit_to_mtu(packet, 1000) == ([packet], None)


def test_only_copied_options_repeat():
    # Security option (130, copied) and a record-route option (7, not copied), padded.
    security = bytes([130, 11]) + bytes(9)
    record_route = bytes([7, 7, 4]) + bytes(4)
    options = security + record_route + b"\x00\x00"
    fragments = fragment_ipv4(ip4(1000, options=options), 300)
    assert fragments[0][20:40] == options
    for frag in fragments[1:]:
        assert frag[0] & 0x0F == 8  # 20 + 12 bytes (11 of option, 1 pad)
        assert frag[20:31] == security
        assert ipv4_header_checksum(frag[:32]) == 0


def test_refragmenting_a_fragment_keeps_offsets_and_mf():
    original = ip4(3000)
    big = fragment_ipv4(original, 1500)
    small = [piece for frag in big for piece in fragment_ipv4(frag, 600)]
    assert all(len(p) <= 600 for p in small)
    assert reassemble(small) == original


def test_df_and_bad_input():
    with pytest.raises(FragmentError):
        fragment_ipv4(ip4(1500, df=True), 1400)
    with pytest.raises(FragmentError):
        fragment_ipv4(ip4(1500), 60)
    with pytest.raises(FragmentError):
        fragment_ipv4(b"\x45" + bytes(10), 1400)
    truncated = ip4(1500)[:1000]
    with pytest.raises(FragmentError):
        fragment_ipv4(truncated, 500)
    with pytest.raises(FragmentError):
        fragment_ipv4(ip4(1000, options=bytes([130, 40]) + bytes(2)), 300)


def test_fit_to_mtu_decisions():
    verdict = fit_to_mtu(ip4(1500), 1400)
    assert len(verdict.packets) == 2 and verdict.icmp_reply is None

    verdict = fit_to_mtu(ip4(1500, df=True), 1400, icmp_source_v4="10.1.0.1")
    assert verdict.packets == [] and dpkt.ip.IP(verdict.icmp_reply).data.data.mtu == 1400

    v6 = dpkt.ip6.IP6(src=ipaddress.ip_address("fd01::5").packed, dst=ipaddress.ip_address("fd02::9").packed,
                      nxt=17, hlim=64, plen=1460, data=bytes(1460))
    verdict = fit_to_mtu(bytes(v6), 1400, icmp_source_v6="fd01::1")
    assert verdict.packets == [] and dpkt.ip6.IP6(verdict.icmp_reply).data.type == 2

    assert fit_to_mtu(b"\x45" + bytes(1500), 1400) == ([], None)  # malformed: dropped
    assert fit_to_mtu(b"\x00" * 1500, 1400) == ([], None)


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.integers(min_value=0, max_value=400))
def test_fuzz_fit_to_mtu_never_raises(data, mtu):
    verdict = fit_to_mtu(data, mtu, icmp_source_v4="10.1.0.1", icmp_source_v6="fd01::1")
    assert all(len(p) <= max(mtu, len(data) if len(data) <= mtu else 0) for p in verdict.packets)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40).map(lambda o: o[: len(o) // 4 * 4]), st.integers(min_value=200, max_value=3000),
       st.integers(min_value=0, max_value=1600))
def test_fuzz_options_and_sizes(options, size, mtu):
    packet = ip4(max(size, 20 + len(options)), options=options)
    try:
        fragments = fragment_ipv4(packet, mtu)
    except FragmentError:
        return
    assert all(len(f) <= mtu for f in fragments) or fragments == [packet]
    assert b"".join(f[(f[0] & 0x0F) * 4:] for f in fragments) == packet[(packet[0] & 0x0F) * 4:]
