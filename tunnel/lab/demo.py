"""``espgw demo``: the seed's scenario in network namespaces, and what an eavesdropper sees.

A laptop (10.0.0.7) on a cafe LAN behind gateway A, a dashboard (10.0.5.9) on an office LAN
behind gateway B, the gateways joined by a public link of documentation addresses. Two espgw
gateways bring the tunnel up on demand; the laptop pings the dashboard and fetches its page while
tcpdump records the public link and the cafe LAN. The report compares the two captures and names
the files (pcaps, Wireshark key tables, gateway logs) left in the output directory.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from collections.abc import Sequence

import dpkt

DEFAULT_OUT = "/tmp/espgw-demo"
LAB_PREFIX = "egdemo"  # fixed, so a crashed run's namespaces are found and removed next time
HTTP_PORT = 8080
# --pq: the hybrid strongSwan's docs and espgw's README show (classic ECP-384, then ML-KEM-768)
PQ_PROPOSAL = "aes256gcm16-prfsha384-ecp384-ke1_mlkem768"


class DemoError(Exception):
    """The demo could not run; the message says why."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="espgw demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"where to keep the artefacts ({DEFAULT_OUT})")
    parser.add_argument("--no-tshark", action="store_true", help="skip the decryption check with tshark")
    parser.add_argument("--auth", choices=("psk", "cert"), default="psk",
                        help="authenticate the gateways with a pre-shared key or with certificates from a fresh CA")
    kex = parser.add_mutually_exclusive_group()
    kex.add_argument("--proposal", metavar="IKE_PROPOSAL",
                     help="both gateways' IKE proposals, strongSwan syntax, e.g. "
                          "aes256gcm16-prfsha256-x25519-ke1_mlkem768 (default: espgw's)")
    kex.add_argument("--pq", action="store_const", dest="proposal", const=PQ_PROPOSAL,
                     help=f"post-quantum hybrid key exchange: --proposal {PQ_PROPOSAL}")
    args = parser.parse_args([] if argv is None else argv)  # the CLI passes only what follows "demo"
    problem = _proposal_problem(args.proposal) if args.proposal is not None else None
    if problem:
        print(f"espgw demo: --proposal: {problem}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("espgw demo: needs root to create network namespaces; run: sudo espgw demo", file=sys.stderr)
        return 1
    for tool in ("ip", "tcpdump"):
        if shutil.which(tool) is None:
            print(f"espgw demo: needs {tool} (iproute2, tcpdump) on the PATH", file=sys.stderr)
            return 1
    from tunnel.ops.log import configure_logging

    configure_logging("warning", "console")  # the lab's own chatter stays out of the report
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run_demo(Path(args.out).resolve(), tshark=not args.no_tshark and shutil.which("tshark") is not None,
                        auth=args.auth, proposal=args.proposal)
    except KeyboardInterrupt:
        print("\nespgw demo: interrupted; the lab is removed", file=sys.stderr)
        return 130
    except DemoError as exc:
        print(f"espgw demo: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


_MAIN_PID = os.getpid()


def _interrupt(signum, frame):
    if os.getpid() != _MAIN_PID:  # a forked helper (pyroute2 forks into namespaces) just dies
        os._exit(128 + signum)
    raise KeyboardInterrupt


def _use_certificates(conn_a, conn_b) -> None:
    """``--auth cert``: a fresh CA, an ECDSA certificate per gateway (ids gwa.lab / gwb.lab)."""
    from ike.config import AuthConfig
    from tunnel.lab.lab_pki import LabPki

    pki = LabPki.make()
    for conn, me, peer in ((conn_a, "gwa.lab", "gwb.lab"), (conn_b, "gwb.lab", "gwa.lab")):
        conn.local = AuthConfig("pubkey", id=me, credential=pki.gateway(me, "ecdsa256"))
        conn.remote = AuthConfig("pubkey", id=peer, trust=pki.trust())


def _proposal_problem(text: str) -> str | None:
    """What espgw's config reader says of ``text`` as a connection's ``proposals``, or None."""
    from tunnel.ops.config import ConfigError, parse_config_data

    where = "--proposal: connections.demo.proposals: "
    try:  # the table lacks children and auth: only the problems with its proposals count here
        parse_config_data({"connections": {"demo": {"proposals": text}}}, "--proposal", require_connections=False)
    except ConfigError as exc:
        return next((p.removeprefix(where) for p in exc.problems if p.startswith(where)), None)
    return None


def run_demo(out: Path, tshark: bool, auth: str = "psk", proposal: str | None = None) -> int:
    from tunnel.lab.configs import site_to_site
    from tunnel.lab.espgw import EspgwGateway, wait_until
    from tunnel.lab.netns import Lab, LabError, cleanup_stale

    started = time.monotonic()
    owner = _running_owner()
    if owner:
        raise DemoError(f"another demo (pid {owner}) is running; wait for it or stop it")
    cleanup_stale(LAB_PREFIX, force=True)  # what a killed run left behind
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
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
            marker = f"espgw-demo-{secrets.token_hex(6)}"
            www = lab.workdir / "www"
            www.mkdir()
            (www / "index.html").write_text(_PAGE.format(marker=marker))
            server = lab.spawn(lab.hostB, sys.executable, "-u", "-m", "http.server", HTTP_PORT, "--bind",
                               lab.hostB.addr4, "--directory", www, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert server.stdout is not None  # stdout=PIPE
            if b"Serving HTTP" not in server.stdout.readline():
                raise DemoError("the dashboard's web server did not start")
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
            for gw in (gw_a, gw_b):
                gw.stop()
                if gw.log_path.exists():
                    shutil.copy(gw.log_path, out / f"{gw.name}.log")
    page_ok, fetch_line = _fetch_outcome(fetch, marker, url)
    report = _report(lab, ike, first, ping, page_ok, fetch_line, public, lan, marker, out, keys,
                     tshark and public.exists(), time.monotonic() - started, show_key_exchanges=proposal is not None)
    print(report)
    return 0 if page_ok and ping.ok else 1


def _running_owner() -> int | None:
    """The pid of a live (not zombie) process that owns the demo lab, if any."""
    from tunnel.lab.netns import WORK_BASE

    try:
        pid = int((WORK_BASE / LAB_PREFIX / "owner.pid").read_text())
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return pid if state not in ("Z", "X") and pid != os.getpid() else None


_PAGE = """<!doctype html>
<title>Office dashboard</title>
<h1>Office dashboard</h1>
<p>Quarterly revenue: confidential. Marker: {marker}</p>
"""


def _fetch_outcome(fetch, marker: str, url: str) -> tuple[bool, str]:
    if fetch is None:
        return False, "curl is not installed: no page fetched"
    body, _, status = fetch.stdout.rpartition("\n")
    code, _, size = status.partition(" ")
    if fetch.returncode != 0 or code != "200":
        return False, f"{url} failed (curl exit {fetch.returncode}, HTTP {code or '-'})"
    found = marker in body
    return found, f"{url}  HTTP 200, {size} bytes, marker {'found' if found else 'MISSING'}"


def _flows(pcap: Path) -> tuple[list[tuple[str, int, int]], bytes]:
    """Each flow of an outer capture as (description, packets, bytes), and all captured bytes."""
    flows: Counter = Counter()
    sizes: Counter = Counter()
    everything = bytearray()
    with open(pcap, "rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            everything += buf
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, dpkt.ip.IP):
                continue
            src, dst = socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)
            payload = bytes(buf)[14 + ip.hl * 4:]
            if ip.p == 50 and len(payload) >= 8:
                spi, seq = struct.unpack("!II", payload[:8])
                what = f"ESP       SPI {spi:08x}"
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
            key = f"{src:<10} -> {dst:<10} {what}"
            flows[key] += 1
            sizes[key] += len(buf)
    return [(key, flows[key], sizes[key]) for key in flows], bytes(everything)


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


def _tshark_finds(pcap: Path, keydir: Path, marker: str) -> tuple[int, str]:
    """Decrypt the public capture with the exported tables; frames whose plaintext holds the marker."""
    home = keydir.parent / ".tshark-home"
    profile = home / ".config" / "wireshark"
    profile.mkdir(parents=True, exist_ok=True)
    for name in ("esp_sa", "ikev2_decryption_table"):
        if (keydir / name).exists():
            shutil.copy(keydir / name, profile / name)
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    try:
        done = subprocess.run(["tshark", "-n", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE",
                               "-Y", f'frame contains "{marker}" || http', "-T", "fields", "-e", "frame.number",
                               "-e", "http.response.code", "-e", "http.file_data"],
                              capture_output=True, text=True, env=env, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 0, f"tshark failed: {exc}"
    finally:
        shutil.rmtree(home, ignore_errors=True)
    hits = sum(1 for line in done.stdout.splitlines() if marker in line or "\t200\t" in line)
    marker_seen = marker in done.stdout or marker.encode().hex() in done.stdout
    return (hits if marker_seen else 0), done.stderr.strip()


def key_exchanges(proposal: str | None) -> list[str]:
    """The negotiated IKE proposal's key exchanges in order, as charon names them: the IKE_SA_INIT
    group first, then RFC 9370's additional ones (ake1..ake7), each done in an IKE_INTERMEDIATE."""
    from tunnel.ops.vici.algorithms import algorithms

    fields = algorithms(proposal, ike=True)
    return [str(fields[key]) for key in ("dh-group", *(f"ake{n}" for n in range(1, 8))) if key in fields]


def _key_exchange_lines(ike: dict, public: Path) -> list[str]:
    """Which key exchanges keyed the tunnel (the IKE SA's negotiated proposal), checked against
    the IKE_INTERMEDIATE exchanges the public capture holds, and what that means for a recording."""
    from tunnel.lab.ike_pcap import read_ike_frames

    methods = key_exchanges(ike.get("proposal"))
    if not methods:
        return ["  key exchanges: unknown (the IKE SA names no proposal)"]
    first, extra = methods[0], methods[1:]
    if not extra:
        return [f"  key exchanges: {first} only (classic: a recording is safe only while {first} is unbroken)"]
    intermediate = len({(f.spi_i, f.message_id) for f in read_ike_frames(public)  # retransmits count once
                        if f.exchange == "IKE_INTERMEDIATE" and not f.is_response})
    quantum = ("hybrid post-quantum" if any(m.startswith("ML_KEM") for m in methods)
               else "all classic: no post-quantum protection")
    exchanges = f"{intermediate} IKE_INTERMEDIATE exchange{'s' if intermediate != 1 else ''}"
    lines = [f"  key exchanges: {' + '.join([first] + [f'{m} (IKE_INTERMEDIATE)' for m in extra])}",
             f"    on the wire: IKE_SA_INIT, then {exchanges} (encrypted)",
             f"    decrypting a recording later takes breaking {' and '.join(methods)} ({quantum})"]
    if intermediate != len(extra):
        lines.append(f"    MISMATCH: {len(extra)} additional key exchange(s) negotiated, {intermediate} seen")
    return lines


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
    flows, public_bytes = _flows(public)
    lines += [f"  {key:<44}{packets:>5} packets {size:>7} bytes" for key, packets, size in flows]
    if show_key_exchanges:  # --proposal / --pq: the default run's report stays as it was
        lines += [""] + _key_exchange_lines(ike, public)
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
        frames, err = _tshark_finds(public, keydir, marker)
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


__all__ = ["main", "run_demo", "DemoError"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
