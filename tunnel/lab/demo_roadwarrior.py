"""``espgw demo`` (the default): the road warrior, as the README tells it.

    laptop --- cafe Wi-Fi --- cafe router (NAT) --- internet --- office gateway --- office LAN --- dashboard
    192.168.1.7               192.168.1.1 | 192.0.2.1            192.0.2.2 | 10.0.5.1                10.0.5.9
    tunnel address 10.0.0.7

The laptop runs espgw itself (``vips = ["0.0.0.0"]``, connecting when it starts); the office
espgw lends it 10.0.0.7, the first address of its pool, so "the laptop 10.0.0.7" is its tunnel
address and the cafe Wi-Fi address only the outer one. The cafe router masquerades (nftables,
``tunnel.lab.nat.CafeLab``), so NAT detection moves IKE and ESP to UDP 4500. tcpdump records the
cafe Wi-Fi and the internet from the laptop's first packet; the laptop pings the dashboard and
fetches its page; the report lists every flow of both captures and searches them for the inner
addresses, ports and page.
"""

from __future__ import annotations

import shutil
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt

from ike.config import AuthConfig, ChildConfig, ConnectionConfig, TrafficSelector
from tunnel.lab.configs import LAB_PSK
from tunnel.lab.demo_common import (HTTP_PORT, LAB_PREFIX, DemoError, count_flows, fetch_outcome, key_exchange_lines,
                                    prepare_run, serve_dashboard, stop_keeping_logs, tshark_finds)
from tunnel.lab.nat import LAPTOP_INNER, CafeLab
from tunnel.lab.netns import PingResult

OFFICE_LAN = "10.0.5.0/24"
POOL = ("office", f"{LAPTOP_INNER}-10.0.0.20")  # the first laptop to connect gets 10.0.0.7
LAPTOP_ID, OFFICE_ID = "laptop.lab", "office.lab"
IKE_EXCHANGES = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL",
                 43: "IKE_INTERMEDIATE"}


class DemoCafe(CafeLab):
    """The cafe lab under the demo's fixed prefix. CafeLab puts 10.0.0.7 on the laptop's loopback
    (its tests use it as a fixed selector); here it comes from the office's pool, so it goes.
    The laptop and the office send each datagram as its own frame, so the captures hold what a
    wire would carry (see ``Lab.segment_on_send``)."""

    def __init__(self) -> None:
        super().__init__(LAB_PREFIX)
        try:
            self.run(self.laptop, "ip", "addr", "del", f"{LAPTOP_INNER}/32", "dev", "lo")
            self.segment_on_send(self.laptop, self.laptop.iface)
            self.segment_on_send(self.office, self.office.wan_iface)
        except BaseException:
            self.close()
            raise


def _proposals(proposals: list[str] | None) -> dict[str, Any]:
    return {"proposals": proposals} if proposals else {}


def laptop_connection(office: str, proposals: list[str] | None) -> ConnectionConfig:
    """From wherever the laptop is (%any) to the office, asking for a virtual IP; up at start."""
    child = ChildConfig(name="dashboard", local_ts=[], remote_ts=[TrafficSelector.from_cidr(OFFICE_LAN)],
                        local_dynamic=True, start_action="start")
    return ConnectionConfig(name="office", local_addrs=["%any"], remote_addrs=[office],
                            local=AuthConfig("psk", id=LAPTOP_ID), remote=AuthConfig("psk", id=OFFICE_ID),
                            psk=LAB_PSK, vips=["0.0.0.0"], children=[child],
                            **_proposals(proposals))


def office_connection(office: str, proposals: list[str] | None) -> ConnectionConfig:
    """The office gateway: any laptop address, an address from the pool, the office LAN."""
    child = ChildConfig(name="dashboard", local_ts=[TrafficSelector.from_cidr(OFFICE_LAN)], remote_ts=[],
                        remote_dynamic=True)
    return ConnectionConfig(name="laptops", local_addrs=[office], remote_addrs=["%any"],
                            local=AuthConfig("psk", id=OFFICE_ID), remote=AuthConfig("psk", id=LAPTOP_ID),
                            psk=LAB_PSK, pools=[POOL[0]], children=[child],
                            **_proposals(proposals))


def _use_certificates(laptop: ConnectionConfig, office: ConnectionConfig) -> None:
    """``--auth cert``: a fresh CA; the laptop's own client certificate and the office's."""
    from tunnel.lab.lab_pki import LabPki

    pki = LabPki.make()
    for conn, me, peer in ((laptop, LAPTOP_ID, OFFICE_ID), (office, OFFICE_ID, LAPTOP_ID)):
        conn.local = AuthConfig("pubkey", id=me, credential=pki.gateway(me, "ecdsa256"))
        conn.remote = AuthConfig("pubkey", id=peer, trust=pki.trust())


@dataclass
class Run:
    """What the run produced, for the report."""

    lab: DemoCafe
    laptop_sa: dict
    office_sa: dict
    ping: PingResult
    page_ok: bool
    fetch_line: str
    inner: tuple[str, int] | None  # the page's TCP connection as the laptop saw it: (address, port)
    cafe: Path
    internet: Path
    marker: str
    keys: list


def run_road_warrior(out: Path, tshark: bool, auth: str = "psk", proposal: str | None = None) -> int:
    """The road-warrior scenario; prints the report, returns the exit code."""
    from ike.pools import AddressPool
    from tunnel.lab.espgw import EspgwGateway, wait_until
    from tunnel.lab.netns import LabError

    started = time.monotonic()
    prepare_run(out)
    try:
        lab = DemoCafe()
    except LabError as exc:
        raise DemoError(f"cannot build the lab ({exc}); is another demo running?") from None
    with lab:
        proposals = [proposal] if proposal else None  # both ends: the responder must accept it
        office_addr = lab.office.wan_addr4
        laptop_conn, office_conn = laptop_connection(office_addr, proposals), office_connection(office_addr, proposals)
        if auth == "cert":
            _use_certificates(laptop_conn, office_conn)
        office = EspgwGateway(lab, lab.office, [office_conn], name="office", pools=[AddressPool(*POOL)])
        laptop = EspgwGateway(lab, lab.laptop, [laptop_conn], name="laptop")
        try:
            office.start()
            marker = serve_dashboard(lab)
            cafe, internet = out / "cafe-wifi.pcap", out / "internet.pcap"
            with lab.capture(lab.cafe, lab.cafe.lan_iface, cafe, bpf="not arp"), \
                    lab.capture(lab.cafe, lab.cafe.wan_iface, internet, bpf="not arp"):
                laptop.start()  # connects at start: the captures hold its very first packet
                wait_until(lambda: laptop.status().get("virtual_ips"), 15, "the laptop's virtual IP",
                           interval=0.1, on_timeout=laptop.log_tail)
                wait_until(laptop.children, 10, "the laptop's CHILD SA", on_timeout=laptop.log_tail)
                ping = lab.ping(lab.laptop, lab.hostB.addr4, count=3, interval=0.2)
                url = f"http://{lab.hostB.addr4}:{HTTP_PORT}/"
                fetch = lab.run(lab.laptop, "curl", "-s", "-m", "5", "-w",
                                r"\n%{local_ip} %{local_port}\n%{http_code} %{size_download}",
                                url, check=False) if shutil.which("curl") else None
            keys = [gw.cli("keys", "--wireshark", str(out / "wireshark"), check=False) for gw in (laptop, office)]
            (laptop_sa,) = wait_until(laptop.ike_sas, 2, "the laptop's IKE SA")
            (office_sa,) = wait_until(office.ike_sas, 2, "the office's IKE SA")
        finally:
            stop_keeping_logs((laptop, office), out)
    page_ok, fetch_line = fetch_outcome(fetch, marker, url)
    run = Run(lab, laptop_sa, office_sa, ping, page_ok, fetch_line, _inner_endpoint(fetch), cafe, internet,
              marker, keys)
    print(_report(run, out, tshark and internet.exists(), time.monotonic() - started,
                  show_key_exchanges=proposal is not None))
    return 0 if page_ok and ping.ok else 1


def _inner_endpoint(fetch) -> tuple[str, int] | None:
    """curl's own address and port for the page (the line before the status in its output)."""
    if fetch is None:
        return None
    lines = fetch.stdout.rsplit("\n", 2)
    try:
        addr, port = lines[-2].rsplit(" ", 1)
        return addr, int(port)
    except (IndexError, ValueError):
        return None


# --- reading a capture ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Flow:
    src: str
    sport: int
    dst: str
    dport: int
    what: str  # "IKE_SA_INIT", "IKE_AUTH", "ESP-in-UDP SPI 1234abcd", "NAT keepalive", ...

    def ports(self) -> set[int]:
        return {self.sport, self.dport}


def _classify(ip: dpkt.ip.IP) -> Flow:
    src, dst = socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)
    data = bytes(ip.data) if not isinstance(ip.data, bytes) else ip.data
    if ip.p == 50 and len(data) >= 8:
        return Flow(src, 0, dst, 0, f"ESP SPI {struct.unpack('!I', data[:4])[0]:08x}")
    if ip.p != 17 or len(data) < 8:
        return Flow(src, 0, dst, 0, f"IP protocol {ip.p}")
    sport, dport = struct.unpack("!HH", data[:4])
    payload = data[8:]
    if 4500 in (sport, dport) and payload == b"\xff":
        return Flow(src, sport, dst, dport, "NAT keepalive")
    if 4500 in (sport, dport) and len(payload) >= 8 and payload[:4] != bytes(4):
        return Flow(src, sport, dst, dport, f"ESP-in-UDP SPI {struct.unpack('!I', payload[:4])[0]:08x}")
    ike = payload[4:] if 4500 in (sport, dport) else payload
    if {sport, dport} & {500, 4500} and len(ike) >= 28:
        return Flow(src, sport, dst, dport, IKE_EXCHANGES.get(ike[18], f"IKE exchange {ike[18]}"))
    return Flow(src, sport, dst, dport, "UDP")


def read_capture(pcap: Path) -> tuple[list[tuple[Flow, int, int]], int, bytes]:
    """Each IPv4 flow as (flow, packets, bytes) in order of first appearance, the number of other
    frames (not IPv4), and every captured byte."""
    return count_flows(pcap, _classify)


def _flow_lines(flows: list[tuple[Flow, int, int]], other: int) -> list[str]:
    lines = []
    for flow, packets, size in flows:
        what = flow.what + (" (cleartext key exchange)" if flow.what == "IKE_SA_INIT" else
                            " (encrypted)" if flow.what in IKE_EXCHANGES.values() else "")
        ends = (f"{flow.src}:{flow.sport}", f"{flow.dst}:{flow.dport}") if flow.sport else (flow.src, flow.dst)
        unit = "packet " if packets == 1 else "packets"
        lines.append(f"  {ends[0]:<18} -> {ends[1]:<18} {what:<36}{packets:>4} {unit} {size:>7} bytes")
    if other:
        lines.append(f"  {other} frame(s) that are not IPv4")
    return lines


def _summary(flows: list[tuple[Flow, int, int]], other: int, near: str, office: str) -> str:
    """What the flows amount to: the UDP 500 handshake, everything else UDP 4500 between the two
    outer addresses; anything beyond that is named."""
    pair = {near, office}
    on_500 = [(f, n) for f, n, _ in flows if {f.src, f.dst} == pair and 500 in f.ports() and 4500 not in f.ports()]
    on_4500 = [(f, n) for f, n, _ in flows if {f.src, f.dst} == pair and 4500 in f.ports()]
    rest = sum(n for f, n, _ in flows if (f, n) not in on_500 and (f, n) not in on_4500) + other
    first = ", ".join(sorted({f.what for f, _ in on_500}))
    text = f"  only {near} <-> {office}: "
    if on_500:
        text += (f"the {sum(n for _, n in on_500)} {first} packets on UDP 500 (the cleartext key exchange:\n"
                 "  nonces and public keys, nothing of the traffic), then ")
    text += f"{sum(n for _, n in on_4500)} packets on UDP 4500 (IKE and ESP-in-UDP, encrypted)"
    return text if not rest else f"  ALSO SEEN: {rest} packet(s) outside the tunnel's flows (listed above)"


def _needles(run: Run) -> list[tuple[str, bytes]]:
    """What would give the conversation away: inner addresses, the TCP ports, the page."""
    vip, dashboard = LAPTOP_INNER, run.lab.hostB.addr4
    vips = run.laptop_sa.get("local_vips") or []
    if vips:
        vip = vips[0]
    needles = [(f"laptop tunnel address {vip}", socket.inet_aton(vip)),
               (f"dashboard address {dashboard}", socket.inet_aton(dashboard))]
    if run.inner is not None:
        port = run.inner[1]
        needles += [(f"TCP ports {port} -> {HTTP_PORT}", struct.pack("!HH", port, HTTP_PORT)),
                    (f"TCP ports {HTTP_PORT} -> {port}", struct.pack("!HH", HTTP_PORT, port))]
    needles += [(f'page marker "{run.marker}"', run.marker.encode()), ('"Office dashboard"', b"Office dashboard"),
                (f'"Host: {dashboard}:{HTTP_PORT}"', f"Host: {dashboard}:{HTTP_PORT}".encode())]
    return needles


def _report(run: Run, out: Path, tshark: bool, elapsed: float, show_key_exchanges: bool = False) -> str:
    lab, sa = run.lab, run.laptop_sa
    child = (sa.get("children") or [{}])[0]
    vips = ", ".join(sa.get("local_vips") or []) or "none"
    cafe_ip, cafe_public, office = lab.laptop.addr4, lab.cafe.wan_addr4, lab.office.wan_addr4
    w = 13
    nat = "the laptop is behind a NAT" if sa.get("nat_local") else "no NAT detected"
    lines = [
        "espgw demo: a laptop on cafe Wi-Fi, behind the cafe's NAT, opens the office dashboard through espgw",
        "",
        f"  {'laptop':<{w}}{cafe_ip:<12}on the cafe Wi-Fi {lab.laptop.ip4.network}, runs espgw (asks for a virtual IP)",
        f"  {'cafe router':<{w}}{lab.cafe.lan4.ip!s:<12}NAT (nftables masquerade) to its public address {cafe_public}",
        f"  {'office':<{w}}{office:<12}the office's espgw gateway, pool {POOL[1]}, office LAN {OFFICE_LAN}",
        f"  {'dashboard':<{w}}{lab.hostB.addr4:<12}on the office LAN, serving a page on port {HTTP_PORT}",
        "",
        f"  {'virtual IP':<{w}}{vips} (the laptop's address in the tunnel; {cafe_ip} is only the outer one)",
        f"  {'IKE SA':<{w}}{sa.get('local_addr')}:{sa.get('local_port')} -> {sa.get('remote_addr')}:"
        f"{sa.get('remote_port')}, {nat}; the office sees {run.office_sa.get('remote_addr')}:"
        f"{run.office_sa.get('remote_port')}",
        f"  {'':<{w}}{sa.get('proposal')}, {sa.get('local_id')} ({sa.get('local_auth')}) / "
        f"{sa.get('remote_id')} ({sa.get('remote_auth')})",
        f"  {'CHILD SA':<{w}}{' '.join(child.get('local_ts', []))} === {' '.join(child.get('remote_ts', []))}, "
        f"ESP {child.get('proposal')}, SPIs {child.get('spi_out')} (out) / {child.get('spi_in')} (in)",
        f"  {'ping':<{w}}{run.ping.received}/{run.ping.transmitted} replies, rtt avg {run.ping.rtt_avg_ms} ms",
        f"  {'page':<{w}}{run.fetch_line}"
        + (f", from {run.inner[0]}:{run.inner[1]}" if run.inner else ""),
    ]
    captures = []
    for pcap, where, near in ((run.cafe, "the cafe Wi-Fi (laptop <-> cafe router)", cafe_ip),
                              (run.internet, "the internet (cafe router <-> office)", cafe_public)):
        flows, other, data = read_capture(pcap)
        captures.append(data)
        lines += ["", f"what an eavesdropper on {where} sees ({pcap.name}):", *_flow_lines(flows, other),
                  _summary(flows, other, near, office)]
    if show_key_exchanges:  # --proposal / --pq
        lines += [""] + key_exchange_lines(sa, run.internet)
    lines += ["", f"  searching the captured bytes for the conversation{'cafe Wi-Fi':>15}{'internet':>11}"]
    leaked = 0
    for label, needle in _needles(run):
        hits = [data.count(needle) for data in captures]
        leaked += sum(hits)
        lines.append(f"    {label:<58}{hits[0]:>5}{hits[1]:>11}")
    lines.append("  none of it in either capture: no inner address, port or byte of the page" if not leaked
                 else f"  LEAK: {leaked} hits")
    keydir = out / "wireshark"
    exported = all(k.returncode == 0 for k in run.keys)
    if tshark and exported:
        frames, err = tshark_finds(run.internet, keydir, run.marker)
        lines.append(f"  with the exported keys, tshark decrypts {run.internet.name} (ESP in UDP 4500) and finds "
                     f"the page in {frames} frame(s)" if frames else
                     f"  tshark did not find the page with the exported keys ({err[-200:] or 'no match'})")
    lines += [
        "",
        f"files in {out}:",
        f"  {run.cafe.name:<18}the cafe Wi-Fi",
        f"  {run.internet.name:<18}the internet",
        f"  {'wireshark/':<18}esp_sa and ikev2_decryption_table from the laptop and the office"
        + ("" if exported else " (export FAILED: " + "; ".join(k.stderr.strip() for k in run.keys if k.returncode)
           + ")"),
        f"  {'laptop.log':<18}the laptop's espgw log (JSON lines)",
        f"  {'office.log':<18}the office gateway's log",
        "  to look inside: copy wireshark/* into ~/.config/wireshark/, then",
        f"    wireshark -o esp.enable_encryption_decode:TRUE -r {run.internet}",
        "",
        f"done in {elapsed:.1f} s; the namespaces are removed",
    ]
    return "\n".join(lines)


__all__ = ["DemoCafe", "laptop_connection", "office_connection", "read_capture", "run_road_warrior"]
