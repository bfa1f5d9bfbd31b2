"""``espgw demo --site-to-site``: two gateways, a laptop behind one, the dashboard behind the other.

A laptop (10.0.0.7) on a cafe LAN behind gateway A, a dashboard (10.0.5.9) on an office LAN
behind gateway B, the gateways joined by a public link of documentation addresses. Two espgw
gateways bring the tunnel up on demand; the laptop pings the dashboard and fetches its page while
tcpdump records the public link and the cafe LAN. The report compares the two captures and names
the files (pcaps, Wireshark key tables, gateway logs) left in the output directory.
"""

from __future__ import annotations

import shutil
import socket
import struct
import time
from pathlib import Path

import dpkt

from tunnel.lab.demo_common import (HTTP_PORT, LAB_PREFIX, DemoError, count_flows, fetch_outcome, key_exchange_lines,
                             prepare_run, serve_dashboard, stop_keeping_logs, tshark_finds)

def _use_certificates(conn_a, conn_b) -> None:
    """``--auth cert``: a fresh CA, an ECDSA certificate per gateway (ids gwa.lab / gwb.lab)."""
    from ike.config import AuthConfig
    from tunnel.lab.lab_pki import LabPki

    pki = LabPki.make()
    for conn, me, peer in ((conn_a, "gwa.lab", "gwb.lab"), (conn_b, "gwb.lab", "gwa.lab")):
        conn.local = AuthConfig("pubkey", id=me, credential=pki.gateway(me, "ecdsa256"))
        conn.remote = AuthConfig("pubkey", id=peer, trust=pki.trust())

def run_site_to_site(out: Path, tshark: bool, auth: str = "psk", proposal: str | None = None) -> int:
    """The site-to-site scenario; prints the report, returns the exit code."""
    from tunnel.lab.configs import site_to_site
    from tunnel.lab.espgw import EspgwGateway, wait_until
    from tunnel.lab.netns import Lab, LabError

    started = time.monotonic()
    prepare_run(out)
    try:
        lab = Lab(prefix=LAB_PREFIX, ipv6=False)
    except LabError as exc:
        raise DemoError(f"cannot build the lab ({exc}); is another demo running?") from None
    with lab:
        proposals = [proposal] if proposal else None  # both ends: the responder must accept it
        conn_a, conn_b = (site_to_site(lab, side, name="office", proposals=proposals) for side in ("A", "B"))
        conn_a.children[0].start_action = "trap"  # the laptop's first packet brings the tunnel up
        if auth == "cert":
            _use_certificates(conn_a, conn_b)
        gw_a = EspgwGateway(lab, lab.gwA, [conn_a], name="gatewayA")
        gw_b = EspgwGateway(lab, lab.gwB, [conn_b], name="gatewayB")
        try:
            for gw in (gw_b, gw_a):
                gw.start()
            marker = serve_dashboard(lab)
            public, lan = out / "public.pcap", out / "cafe-lan.pcap"
            with lab.capture(lab.gwA, lab.gwA.wan_iface, public, bpf="not arp"), \
                    lab.capture(lab.gwA, lab.gwA.lan_iface, lan, bpf="not arp"):
                first = lab.ping(lab.hostA, lab.hostB.addr4, count=1, wait=3)
                ping = lab.ping(lab.hostA, lab.hostB.addr4, count=3, interval=0.2)
                url = f"http://{lab.hostB.addr4}:{HTTP_PORT}/"
                fetch = lab.run(lab.hostA, "curl", "-s", "-m", "5", "-w", r"\n%{http_code} %{size_download}",
                                url, check=False) if shutil.which("curl") else None
            keys = [gw.cli("keys", "--wireshark", str(out / "wireshark"), check=False) for gw in (gw_a, gw_b)]
            (ike,) = wait_until(gw_a.ike_sas, 2, "gateway A's IKE SA")
        finally:
            stop_keeping_logs((gw_a, gw_b), out)
    page_ok, fetch_line = fetch_outcome(fetch, marker, url)
    report = _report(lab, ike, first, ping, page_ok, fetch_line, public, lan, marker, out, keys,
                     tshark and public.exists(), time.monotonic() - started, show_key_exchanges=proposal is not None)
    print(report)
    return 0 if page_ok and ping.ok else 1

def _needles(lab, lan: Path, marker: str) -> list[tuple[str, bytes]]:
    """What would give the conversation away: inner addresses, the TCP ports, the page."""
    a, b = lab.hostA.addr4, lab.hostB.addr4
    needles = [(f"laptop address {a}", socket.inet_aton(a)), (f"dashboard address {b}", socket.inet_aton(b)),
               (f"address pair {a} -> {b}", socket.inet_aton(a) + socket.inet_aton(b))]
    ports = _client_ports(lan, b)
    if ports:
        needles.append((f"TCP ports {ports[0]} -> {ports[1]}", struct.pack("!HH", *ports)))
    needles += [(f'page marker "{marker}"', marker.encode()), ('"Office dashboard"', b"Office dashboard"),
                (f'"Host: {b}:{HTTP_PORT}"', f"Host: {b}:{HTTP_PORT}".encode())]
    return needles

def _client_ports(lan: Path, server: str) -> tuple[int, int] | None:
    with open(lan, "rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.tcp.TCP) and socket.inet_ntoa(ip.dst) == server:
                return ip.data.sport, ip.data.dport
    return None

def _report(lab, ike, first, ping, page_ok, fetch_line, public, lan, marker, out, keys, tshark, elapsed,
            show_key_exchanges: bool = False) -> str:
    child = (ike.get("children") or [{}])[0]
    w = 12
    lines = [
        "espgw demo: a laptop on a cafe LAN reaches the office dashboard through two espgw gateways",
        "",
        f"  {'laptop':<{w}}{lab.hostA.addr4:<11}cafe LAN {lab.gwA.lan_net4}, behind gateway A {lab.gwA.wan_addr4}",
        f"  {'dashboard':<{w}}{lab.hostB.addr4:<11}office LAN {lab.gwB.lan_net4}, behind gateway B {lab.gwB.wan_addr4}",
        f"  {'public link':<{w}}{lab.gwA.wan4.network} (RFC 5737 documentation addresses)",
        "",
        f"  {'tunnel':<{w}}IKE SA {ike.get('proposal')}, CHILD SA {child.get('name')} ESP {child.get('proposal')}",
        f"  {'':<{w}}{' '.join(child.get('local_ts', []))} === {' '.join(child.get('remote_ts', []))}, "
        f"SPIs {child.get('spi_out')} (out) / {child.get('spi_in')} (in)",
        f"  {'ping':<{w}}{ping.received}/{ping.transmitted} replies, rtt avg {ping.rtt_avg_ms} ms"
        + (f" (the first ping, which brought the tunnel up: {first.rtt_avg_ms} ms)" if first.received else
           " (the first ping, sent while the tunnel came up, was lost)"),
        f"  {'page':<{w}}{fetch_line}",
        "",
        f"what an eavesdropper on the public link sees ({public.name}):",
    ]
    flows, _, public_bytes = count_flows(public, _public_flow)
    lines += [f"  {key:<44}{packets:>5} packets {size:>7} bytes" for key, packets, size in flows]
    if show_key_exchanges:  # --proposal / --pq: the default run's report stays as it was
        lines += [""] + key_exchange_lines(ike, public)
    lan_bytes = b"".join(buf for _, buf in dpkt.pcap.Reader(open(lan, "rb")))
    lines += ["", "  searching the captured bytes for the conversation   public link   cafe LAN"]
    leaked = 0
    for label, needle in _needles(lab, lan, marker):
        hits_public, hits_lan = public_bytes.count(needle), lan_bytes.count(needle)
        leaked += hits_public
        lines.append(f"    {label:<48}{hits_public:>8}{hits_lan:>11}")
    lines.append(f"  none of it on the public link ({len(public_bytes)} bytes captured), all of it on the "
                 f"cafe LAN ({len(lan_bytes)} bytes)" if not leaked else f"  LEAK: {leaked} hits on the public link")
    keydir = out / "wireshark"
    exported = all(k.returncode == 0 for k in keys)
    if tshark and exported:
        frames, err = tshark_finds(public, keydir, marker)
        lines.append(f"  with the exported keys, tshark decrypts {public.name} and finds the page in {frames} frame(s)"
                     if frames else
                     f"  tshark did not find the page with the exported keys ({err[-200:] or 'no match'})")
    lines += [
        "",
        f"files in {out}:",
        f"  {public.name:<18}the public link (encrypted)",
        f"  {lan.name:<18}the cafe LAN (in the clear)",
        f"  {'wireshark/':<18}esp_sa and ikev2_decryption_table from both gateways"
        + ("" if exported else " (export FAILED: " + "; ".join(k.stderr.strip() for k in keys if k.returncode) + ")"),
        f"  {'gatewayA.log':<18}gateway A's log (JSON lines)",
        f"  {'gatewayB.log':<18}gateway B's log",
        "  to look inside: copy wireshark/* into ~/.config/wireshark/, then",
        f"    wireshark -o esp.enable_encryption_decode:TRUE -r {public}",
        "",
        f"done in {elapsed:.1f} s; the namespaces are removed",
    ]
    return "\n".join(lines)

__all__ = ["run_site_to_site"]


def _public_flow(ip: dpkt.ip.IP) -> str:
    """One packet of the public link, described for the report's flow table."""
    src, dst = socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)
    payload = bytes(ip.data)
    if ip.p == 50 and len(payload) >= 8:
        what = f"ESP       SPI {struct.unpack('!I', payload[:4])[0]:08x}"
    elif ip.p == 17 and len(payload) >= 8:
        sport, dport = struct.unpack("!HH", payload[:4])
        if 4500 in (sport, dport) and payload[8:12] != bytes(4) and len(payload) > 9:
            what = f"ESP/UDP   SPI {struct.unpack('!I', payload[8:12])[0]:08x}"
        elif {sport, dport} & {500, 4500}:
            what = f"UDP {dport:<5} IKE"
        else:
            what = f"UDP {sport}->{dport}"
    else:
        what = f"IP proto {ip.p}"
    return f"{src:<10} -> {dst:<10} {what}"
