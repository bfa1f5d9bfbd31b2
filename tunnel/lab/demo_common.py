"""What both demo scenarios share: the lab's fixed prefix, the dashboard's page, the checks before a
run, the flow table of a capture, the tshark check and the key-exchange lines of the report."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import dpkt

LAB_PREFIX = "egdemo"  # fixed, so a crashed run's namespaces are found and removed next time
HTTP_PORT = 8080
class DemoError(Exception):
    """The demo could not run; the message says why."""


def prepare_run(out: Path) -> None:
    """Refuse when another demo runs; remove what a killed run left; an empty ``out``."""
    from tunnel.lab.netns import cleanup_stale

    owner = _running_owner()
    if owner:
        raise DemoError(f"another demo (pid {owner}) is running; wait for it or stop it")
    cleanup_stale(LAB_PREFIX, force=True)  # what a killed run left behind
    clear_output(out)


# what a demo leaves in its output directory (either scenario, this version or an older one)
OUTPUT_NAMES = {".espgw-demo", "wireshark", "public.pcap", "cafe-lan.pcap", "cafe-wifi.pcap", "internet.pcap",
                "gatewayA.log", "gatewayB.log", "laptop.log", "office.log"}


def clear_output(out: Path) -> None:
    """An empty ``out``. A directory already there is emptied only if it holds nothing but a
    demo's files: ``--out ~`` must not remove a home directory."""
    try:
        if out.is_dir():
            strangers = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_NAMES)
            if strangers:
                raise DemoError(f"--out {out}: the directory holds files that are not a demo's "
                                f"({', '.join(strangers[:3])}{', ...' if len(strangers) > 3 else ''}); "
                                "choose another directory")
            shutil.rmtree(out)
        elif out.exists():
            raise DemoError(f"--out {out}: not a directory")
        out.mkdir(parents=True)
        (out / ".espgw-demo").write_text("espgw demo output; the next run replaces this directory\n")
    except OSError as exc:
        raise DemoError(f"--out {out}: {exc.strerror or exc}") from None


def serve_dashboard(lab) -> str:
    """The dashboard's web server on hostB (HTTP_PORT), its page holding a fresh random marker."""
    marker = f"espgw-demo-{secrets.token_hex(6)}"
    www = lab.workdir / "www"
    www.mkdir()
    (www / "index.html").write_text(_PAGE.format(marker=marker))
    server = lab.spawn(lab.hostB, sys.executable, "-u", "-m", "http.server", HTTP_PORT, "--bind",
                       lab.hostB.addr4, "--directory", www, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert server.stdout is not None  # stdout=PIPE
    if b"Serving HTTP" not in server.stdout.readline():
        raise DemoError("the dashboard's web server did not start")
    return marker


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


def stop_keeping_logs(gateways, out: Path) -> None:
    """Stop the demo's espgw daemons and keep each one's log in the output directory."""
    for gw in gateways:
        gw.stop()
        if gw.log_path.exists():
            shutil.copy(gw.log_path, out / f"{gw.name}.log")


def fetch_outcome(fetch, marker: str, url: str) -> tuple[bool, str]:
    if fetch is None:
        return False, "curl is not installed: no page fetched"
    body, _, status = fetch.stdout.rpartition("\n")
    code, _, size = status.partition(" ")
    if fetch.returncode != 0 or code != "200":
        return False, f"{url} failed (curl exit {fetch.returncode}, HTTP {code or '-'})"
    found = marker in body
    return found, f"{url}  HTTP 200, {size} bytes, marker {'found' if found else 'MISSING'}"


def count_flows(pcap: Path, classify: Callable[[dpkt.ip.IP], Hashable]
                ) -> tuple[list[tuple[Any, int, int]], int, bytes]:
    """Each IPv4 flow of a capture, as ``classify`` names it, with its packets and bytes, in order
    of first appearance; the number of other frames (not IPv4); and every captured byte."""
    packets: Counter = Counter()
    sizes: Counter = Counter()
    other = 0
    everything = bytearray()
    with open(pcap, "rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            everything += buf
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, dpkt.ip.IP):
                other += 1
                continue
            flow = classify(ip)
            packets[flow] += 1
            sizes[flow] += len(buf)
    return [(flow, packets[flow], sizes[flow]) for flow in packets], other, bytes(everything)


def tshark_finds(pcap: Path, keydir: Path, marker: str) -> tuple[int, str]:
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


def key_exchange_lines(ike: dict, public: Path) -> list[str]:
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
