"""The gateway under faults and attacks, in the namespace lab (root): ``python -m bench.reliability``.

Six scenarios, each with its own pair of espgw gateways (gwA initiates, gwB responds):

- hostile: captured ESP replayed, bit-flipped (at an unseen sequence number, so only the ICV can
  reject it), with unknown SPIs, truncated, oversized (60 kB, IP-fragmented); junk on UDP 500
  and 4500. Each set is sent alone from gwA's namespace (IP_HDRINCL) and gwB's ``status`` drop
  counters must grow by exactly the set's size under the expected reason, while a ping stream
  and a checksummed TCP transfer go on.
- hostile6: the same sets with IKE and ESP over the public link's IPv6 addresses (the raw IPv6
  ESP socket, UDP over IPv6; the 60 kB packets behind IPv6 fragment headers).
- loss: random loss on both directions of the public link; time until the IKE and CHILD SAs are
  up (by retransmission) and the time of a checksummed TCP transfer.
- rekey: the CHILD SA rekeys every REKEY seconds while iperf3 (TCP, 0.5 s intervals) runs. A
  stall is a run of consecutive 0-byte intervals; its length is the run's duration. Passes when
  no run is 2 intervals or longer (no stall of 1 s) and no ESP packet was dropped as a replay,
  an ICV failure or an unknown SPI on either side.
- restart: one gateway killed with SIGKILL and started again; both LANs ping each other every
  50 ms; recovery is the longest gap between replies, and the survivor must drop the stale IKE
  SA (INITIAL_CONTACT in the restarted side's new IKE SA).
- flood: COUNT spoofed IKE_SA_INIT requests over SECONDS from 198.51.100.0/24 (RFC 5737) to a
  responder that accepts any peer; it must answer with cookies, keep its RSS bounded, and a real
  peer must still connect meanwhile.
- half_open: no lab: bench/reliability_half_open.py drives the IKE responder in memory with a
  simulated clock: 200,000 spoofed initiators that answer the cookie within 60 s (the half-open
  caps of RFC 8019, replayed cookies, RSS, a real peer connecting meanwhile) and the worst-case
  CPU of one unauthenticated datagram.

The CI tests (tests/test_reliability_lab.py) run the same functions with shorter settings; this
script runs the full ones and writes bench/results/reliability.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tunnel.lab import attack
from tunnel.lab.configs import site_to_site
from tunnel.lab.espgw import EspgwGateway, GatewaySettings, tcp_transfer, wait_until
from tunnel.lab.netns import Lab, LabError

RESULTS = Path(__file__).resolve().parent / "results" / "reliability.json"
FLOOD_SOURCES = "198.51.100.0/24"
ESP_REJECTIONS = ("replay", "auth_failed", "unknown_spi")
_REPO = str(Path(__file__).resolve().parents[1])


# --- helpers -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def gateways(lab: Lab, *, a_child: dict | None = None, b_child: dict | None = None, a_conn: dict | None = None,
             b_conn: dict | None = None, a_start: str = "trap", b_start: str = "none",
             settings: GatewaySettings | None = None, ipv6_outer: bool = False):
    """An espgw pair over IPv4, or IPv6 with ``ipv6_outer`` (IPv4 LANs only); stopped on exit, also
    on failure."""
    conns = []
    for side, child_kw, conn_kw, start in (("A", a_child, a_conn, a_start), ("B", b_child, b_conn, b_start)):
        conn = site_to_site(lab, side, ipv6_ts=False, ipv6_outer=ipv6_outer)
        for key, value in (conn_kw or {}).items():
            setattr(conn, key, value)
        for child in conn.children:
            child.start_action = start
            for key, value in (child_kw or {}).items():
                setattr(child, key, value)
        conns.append(conn)
    settings = settings or GatewaySettings()
    a = EspgwGateway(lab, lab.gwA, [conns[0]], dataclasses.replace(settings))
    b = EspgwGateway(lab, lab.gwB, [conns[1]], dataclasses.replace(settings))
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        for gw in (a, b):
            with contextlib.suppress(Exception):
                gw.stop()


def tunnel_up(lab: Lab, timeout: float = 20) -> None:
    """Trigger gwA's trap and wait until pings pass both ways."""
    wait_until(lambda: lab.ping(lab.hostA, lab.hostB.addr4, count=1, wait=1).ok, timeout, "the tunnel")


def drops(gw: EspgwGateway) -> dict[str, int]:
    """``espgw status``'s drop counters, by reason."""
    return dict(gw.status()["drops"])


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))
            if after.get(k, 0) != before.get(k, 0)}


def _ike_drops(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k.startswith("ike_"))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LabError(f"no VmRSS for {pid}")


def send_packets(lab: Lab, node, packets: list[bytes], name: str) -> dict:
    path = lab.workdir / f"attack-{name}.hex"
    attack.write_packets(path, packets)
    done = lab.run(node, sys.executable, "-m", "tunnel.lab.attack", "send", path, env=None)
    return json.loads(done.stdout)


class Pinger:
    """``ping -D`` in the background; the longest gap between replies and the loss at the end."""

    def __init__(self, lab: Lab, src, dst: str, interval: float = 0.05):
        self.lab, self.interval = lab, interval
        self.proc = lab.spawn(src, "ping", "-n", "-D", "-i", interval, "-W", "1", dst,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.started = time.time()

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGINT)  # ping prints its summary on SIGINT
        output, _ = self.proc.communicate(timeout=10)
        self.lab.stop(self.proc)
        found = re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)", output, re.M)
        replies = [float(t) for t, _ in found]
        seqs = {int(n) for _, n in found}
        sent = re.search(r"(\d+) packets transmitted", output)
        times = [self.started] + replies
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        # echoes still in flight at SIGINT are not losses: count the holes before the last reply
        return {"sent": int(sent.group(1)) if sent else 0, "received": len(replies),
                "lost": max(seqs, default=0) - len(seqs), "max_gap_s": round(max(gaps), 3) if gaps else None,
                "replies": replies}


# --- scenarios -----------------------------------------------------------------------------------------
def hostile_esp(lab: Lab, per_set: int = 20, family: int = 4) -> dict:
    """Inject each hostile set into gwB from gwA's side; per set, the drop counters' growth.

    ``family`` 6 runs IKE and ESP over the public link's IPv6 addresses (a lab with IPv6), so the
    same sets arrive in IPv6 packets: on the raw IPv6 ESP socket and UDP over IPv6, the 60 KB
    packets behind IPv6 fragment headers."""
    wan_a, wan_b = (lab.gwA.wan_addr6, lab.gwB.wan_addr6) if family == 6 else (lab.gwA.wan_addr4, lab.gwB.wan_addr4)
    with gateways(lab, ipv6_outer=family == 6) as (a, b):
        tunnel_up(lab)
        pcap = lab.workdir / f"hostile{family}.pcap"
        proto = "ip6" if family == 6 else "ip"
        with lab.capture(lab.gwB, lab.gwB.wan_iface, pcap, bpf=f"{proto} proto 50 and src host {wan_a}"):
            assert lab.ping(lab.hostA, lab.hostB.addr4, count=per_set, interval=0.02).ok
        captured = attack.esp_from_pcap(pcap, wan_a, wan_b)[-per_set:]
        if len(captured) < per_set:
            raise LabError(f"captured {len(captured)} ESP packets, wanted {per_set}")
        spi, top = attack.esp_header(captured[-1])
        live = {int(c["spi_in"], 16) for c in b.children()}
        (ike_before,) = b.ike_sas()

        def esp(payloads):
            return [p for e in payloads for p in attack.ip_packets(wan_a, wan_b, attack.IPPROTO_ESP, e)]

        def udp(port, payloads):
            return [p for d in payloads for p in attack.ip_packets(
                wan_a, wan_b, attack.IPPROTO_UDP, attack.udp_datagram(wan_a, wan_b, 40000 + port % 1000, port, d))]

        junk = attack.ike_junk(per_set)
        fake_spis = [s for s in range(0xDEAD0001, 0xDEAD0001 + per_set + len(live)) if s not in live][:per_set]
        sets = {
            "replayed": (esp(captured), {"replay": per_set}),
            "bit_flipped": (esp(attack.bit_flipped(e, bit=i * 8 + 3) for i, e in enumerate(captured)),
                            {"auth_failed": per_set}),
            "unknown_spi": (esp(attack.with_spi(e, s) for e, s in zip(captured, fake_spis, strict=False)),
                            {"unknown_spi": per_set}),
            "truncated_esp_header": (esp(captured[0][:n] for n in (0, 1, 4, 7)), {"truncated": 4}),
            "truncated_esp_body": (esp(captured[0][:n] for n in (8, 12, 16, 24, 31)), {"truncated": 5}),
            "oversized_60k": ([p for i in range(3) for p in attack.ip_packets(
                wan_a, wan_b, attack.IPPROTO_ESP, attack.oversized_esp(spi, top + (1 << 24) + i, 60000),
                ident=4242 + i)],
                {"auth_failed": 3}),
            "udp500_junk": (udp(500, junk), {"ike_": per_set}),
            "udp4500_junk_ike": (udp(4500, (b"\0\0\0\0" + j for j in junk)), {"ike_": per_set}),
            "udp4500_junk_esp": (udp(4500, (s.to_bytes(4, "big") + j for s, j in zip(fake_spis, junk, strict=False))),
                                 {"unknown_spi": per_set}),
            "udp4500_runt": (udp(4500, [b"\1", b"\1\2\3", b"\0\0\0\0", b"\1\2\3\4\5\6\7"]), {"udp_malformed": 4}),
        }
        pinger = Pinger(lab, lab.hostA, lab.hostB.addr4, interval=0.02)
        results = {}
        try:
            for name, (packets, expected) in sets.items():
                before = drops(b)
                sent = send_packets(lab, lab.gwA, packets, name)
                grown = {}

                def settled(before=before, expected=expected):
                    nonlocal grown
                    grown = delta(drops(b), before)
                    return all((_ike_drops(grown) if k == "ike_" else grown.get(k, 0)) >= n
                               for k, n in expected.items())

                with contextlib.suppress(LabError):
                    wait_until(settled, 5, name, interval=0.1)
                time.sleep(0.3)  # anything late would show up as an extra count
                grown = delta(drops(b), before)
                seen = {k: (_ike_drops(grown) if k == "ike_" else grown.get(k, 0)) for k in expected}
                results[name] = {"packets": len(packets), "sent": sent["sent"], "expected": expected,
                                 "counted": grown, "ok": seen == expected and sum(
                                     v for k, v in grown.items() if not k.startswith("ike_")
                                 ) == sum(v for k, v in expected.items() if k != "ike_")}
        finally:
            ping = pinger.stop()
        transfer_sent, transfer_received = tcp_transfer(lab, lab.hostA, lab.hostB, lab.hostB.addr4, 4 << 20)
        (ike_after,) = b.ike_sas()
        return {"sets": results, "ping_during": {k: v for k, v in ping.items() if k != "replies"},
                "tcp_after_ok": transfer_sent == transfer_received,
                "same_ike_sa": ike_after["unique_id"] == ike_before["unique_id"],
                "ike_peer_b": ike_after["remote_addr"],
                "status_drops_b": b.status()["drops"], "raw_esp6_b": b.status()["counters"]["raw_esp6"]}


def loss(lab: Lab, percent: float = 10.0, transfer_bytes: int = 4 << 20, handshakes: int = 1) -> dict:
    """Loss both ways on the public link: time to IKE/CHILD SA up (``handshakes`` times, torn down
    in between), then a checksummed TCP transfer.

    Each gateway drops ``percent`` of what arrives on its WAN interface (ingress): egress rules
    would not see raw ESP that leaves through a TX ring, which skips the sender's IP output path."""
    for gw in (lab.gwA, lab.gwB):
        lab.set_loss(gw, gw.wan_iface, percent, direction="ingress")
    try:
        with gateways(lab, a_start="none") as (a, b):
            up_times = []
            for attempt in range(handshakes):
                if attempt:
                    a.request("terminate", ike="lab")
                    wait_until(lambda: not a.ike_sas() and not b.ike_sas(), 120, "the IKE SAs to go", interval=0.1)
                start = time.monotonic()
                a.request("initiate", ike="lab")
                wait_until(lambda: a.children() and b.children(), 120, "the SAs under loss", interval=0.1,
                           on_timeout=a.log_tail)
                up_times.append(round(time.monotonic() - start, 2))
            retransmits = a.log_path.read_text().count('"event": "retransmit"')
            start = time.monotonic()
            sent, received = tcp_transfer(lab, lab.hostA, lab.hostB, lab.hostB.addr4, transfer_bytes, timeout=300)
            transfer = time.monotonic() - start
            return {"loss_percent_each_way": percent, "ike_child_up_s": up_times, "ike_child_up_max_s": max(up_times),
                    "initiator_retransmits": retransmits, "transfer_bytes": transfer_bytes,
                    "transfer_s": round(transfer, 2), "transfer_ok": sent == received,
                    "checksum": received.split()[-1] if received else None}
    finally:
        for gw in (lab.gwA, lab.gwB):
            lab.set_loss(gw, gw.wan_iface, 0, direction="ingress")


def stalls(intervals: list[dict]) -> dict:
    """Runs of consecutive 0-byte iperf3 intervals: the longest (s) and how many runs of 2+."""
    longest = run = runs_2 = 0
    seconds = 0.0
    longest_s = 0.0
    for iv in intervals:
        s = iv["sum"]
        if s["bytes"] == 0:
            run += 1
            seconds += s["seconds"]
            if run == 2:
                runs_2 += 1
        else:
            run, seconds = 0, 0.0
        longest = max(longest, run)
        longest_s = max(longest_s, seconds)
    return {"longest_zero_run_intervals": longest, "longest_zero_run_s": round(longest_s, 2),
            "zero_runs_of_2_or_more": runs_2}


def _events(gw: EspgwGateway, names: tuple[str, ...], since: float) -> list[tuple[float, str]]:
    """(seconds after ``since``, event) for the gateway's log lines of these events."""
    out = []
    for line in gw.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError, KeyError):
            entry = json.loads(line)
            if entry["event"] in names:
                when = datetime.datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
                if when >= since:
                    out.append((round(when - since, 2), entry["event"]))
    return out


def _socket_losses(gw: EspgwGateway) -> dict[str, int]:
    c = gw.status()["counters"]
    tun = gw.settings.tun_name
    kernel = gw.lab.run(gw.node, "cat", f"/sys/class/net/{tun}/statistics/tx_dropped", check=False).stdout.strip()
    return {"tun_kernel_tx_dropped": int(kernel or 0),  # the kernel's TUN queue full: the daemon fell behind
            "tun_write_dropped": c["tun"].get("write_dropped", 0), "tun_read_dropped": c["tun"].get("read_dropped", 0),
            "raw_send_dropped": c["raw_esp"].get("send_dropped", 0),
            "udp_send_dropped": c["udp"].get("send_dropped", 0)}


def _tcp_counters(lab: Lab, node) -> dict[str, int]:
    """The sender's TCP loss counters: timeouts that ``TCPLossUndo`` later undid were spurious
    (segments late, not lost: the gateways were short of CPU), not losses."""
    wanted = ("TcpRetransSegs", "TcpExtTCPTimeouts", "TcpExtTCPLossUndo", "TcpExtTCPSpuriousRTOs")
    with contextlib.suppress(Exception):
        kernel = json.loads(lab.run(node, "nstat", "-az", "--json").stdout)["kernel"]
        return {k: int(kernel.get(k, 0)) for k in wanted}
    return {}


def rekey_under_load(lab: Lab, seconds: float = 120, rekey_every: float = 10, bitrate: str | None = None) -> dict:
    """iperf3 (TCP, unlimited unless ``bitrate``) while gwA rekeys its CHILD SA every ~rekey_every s.

    Event times are seconds after iperf3's start, which it reports in whole seconds (so +-1 s).
    A stall counts as a rekey's when a rekey falls within 1 s of it."""
    child = {"rekey_time": rekey_every, "life_time": rekey_every * 1.5, "rand_time": rekey_every * 0.1}
    with gateways(lab, a_child=child) as (a, b):
        tunnel_up(lab)
        before = {"A": drops(a), "B": drops(b)}
        losses_before = {"A": _socket_losses(a), "B": _socket_losses(b)}
        first_spi = {c["spi_in"] for c in a.children()}
        tcp_before = _tcp_counters(lab, lab.hostA)
        load_before = os.getloadavg()[0]
        # -O 1: the first second (slow start, path MTU discovery) is not part of the verdict
        result = lab.iperf3(lab.hostA, lab.hostB, lab.hostB.addr4, seconds=seconds, bitrate=bitrate,
                            extra=["-i", "0.5", "-O", "1"])
        intervals = [iv for iv in result["intervals"] if not iv["sum"].get("omitted")]
        tcp = delta(_tcp_counters(lab, lab.hostA), tcp_before)
        grown = {"A": delta(drops(a), before["A"]), "B": delta(drops(b), before["B"])}
        losses = {"A": delta(_socket_losses(a), losses_before["A"]), "B": delta(_socket_losses(b), losses_before["B"])}
        began = result["start"]["timestamp"]["timesecs"]
        rekeys = [t for t, _ in _events(a, ("child_sa.switched",), began)]
        zero_at = [round(iv["sum"]["start"], 1) for iv in intervals if iv["sum"]["bytes"] == 0]
        near_rekey = [t for t in zero_at if any(-1.5 <= t - r <= 1.0 for r in rekeys)]
        end = result["end"]
        rejected = {side: {k: v for k, v in d.items() if k in ESP_REJECTIONS} for side, d in grown.items()}
        return {"seconds": seconds, "rekey_every_s": rekey_every, "rekeys": len(rekeys), "rekeys_at_s": rekeys,
                "spi_changed": not first_spi & {c["spi_in"] for c in a.children()},
                "interval_s": 0.5, **stalls(intervals), "zero_intervals_at_s": zero_at,
                "zero_intervals_near_a_rekey": len(near_rekey), "bitrate_cap": bitrate,
                "min_interval_mbit": round(min(iv["sum"]["bits_per_second"] for iv in intervals) / 1e6, 2),
                "mean_mbit": round(end["sum_received"]["bits_per_second"] / 1e6, 1),
                "tcp_retransmits": end["sum_sent"].get("retransmits"),
                "esp_rejections": rejected, "drops_during": grown, "socket_losses_during": losses,
                "sender_tcp_counters": tcp, "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)]}


def restart(lab: Lab, victim: str = "gwB") -> dict:
    """SIGKILL one gateway (both trap on demand), start it again, measure until traffic is back."""
    with gateways(lab, b_start="trap") as (a, b):
        tunnel_up(lab)
        assert lab.ping(lab.hostB, lab.hostA.addr4, count=1, wait=1).ok
        gw, survivor = (a, b) if victim == "gwA" else (b, a)
        (old_ike,) = survivor.ike_sas()
        forward = Pinger(lab, lab.hostA, lab.hostB.addr4)
        backward = Pinger(lab, lab.hostB, lab.hostA.addr4)
        try:
            time.sleep(1)
            killed = time.time()
            gw.kill()
            gw.start()
            started = time.time()

            def recovered():
                ids = [s["unique_id"] for s in survivor.ike_sas()]
                return len(ids) == 1 and ids[0] != old_ike["unique_id"] and bool(gw.children())

            wait_until(recovered, 30, "a fresh IKE SA on both sides", interval=0.05, on_timeout=survivor.log_tail)
            clean = time.time()
            time.sleep(1.5)
        finally:
            fwd, back = forward.stop(), backward.stop()
        first_reply = max(min((t for t in p["replies"] if t > started), default=float("inf")) for p in (fwd, back))
        survivor_log = survivor.log_path.read_text()
        return {"victim": victim, "daemon_start_s": round(started - killed, 2),
                "stale_sa_removed_after_kill_s": round(clean - killed, 2),
                "traffic_back_after_kill_s": round(first_reply - killed, 2),
                "traffic_back_after_start_s": round(first_reply - started, 2),
                "max_reply_gap_s": {"hostA_to_hostB": fwd["max_gap_s"], "hostB_to_hostA": back["max_gap_s"]},
                # with unique = no, only an INITIAL_CONTACT in the new IKE_AUTH replaces the old IKE SA
                "initial_contact_seen": '"event": "replaced"' in survivor_log}


def flood(lab: Lab, count: int = 20000, seconds: float = 10.0) -> dict:
    """Spoofed IKE_SA_INIT flood at a responder for any peer; a real peer connects meanwhile."""
    routes = [(lab.gwB, ["ip", "route", "add", FLOOD_SOURCES, "via", lab.gwA.wan_addr4]),
              (lab.gwA, ["ip", "route", "add", "blackhole", FLOOD_SOURCES])]  # answers vanish at gwA
    for node, argv in routes:
        lab.run(node, *argv)
    try:
        with gateways(lab, a_start="none", b_conn={"remote_addrs": ["%any"]}) as (a, b):
            pid = b.status()["pid"]
            rss_before = rss_kb(pid)
            before = drops(b)
            udp_before = b.status()["counters"]["udp"]["ike"]
            template = attack.ike_sa_init_template(lab.gwA.wan_addr4, lab.gwB.wan_addr4)
            flooder = lab.spawn(lab.gwA, sys.executable, "-m", "tunnel.lab.attack", "flood", template.hex(),
                                lab.gwB.wan_addr4, FLOOD_SOURCES, count, seconds,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=_REPO)
            samples = []
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    with contextlib.suppress(Exception):
                        samples.append(rss_kb(pid))
                    stop.wait(0.2)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                time.sleep(min(1.0, seconds / 4))
                start = time.monotonic()
                a.request("initiate", ike="lab")
                wait_until(lambda: a.children(), 30, "the real peer's CHILD SA during the flood", interval=0.05,
                           on_timeout=a.log_tail)
                connect = time.monotonic() - start
                during = flooder.poll() is None
                ping_ok = lab.ping(lab.hostA, lab.hostB.addr4, count=5, interval=0.1).ok
                out, err = flooder.communicate(timeout=seconds + 60)
            finally:
                stop.set()
                sampler.join(2)
                lab.stop(flooder)
            sent = json.loads(out)
            time.sleep(0.5)
            grown = delta(drops(b), before)
            status = b.status()
            return {"requests": count, "flood_seconds": seconds, "sent": sent["sent"],
                    "send_failed": sent["failed"], "sender_seconds": sent["seconds"],
                    "ike_datagrams_received": status["counters"]["udp"]["ike"] - udp_before,
                    "cookies_sent": grown.get("ike_cookie required", 0),
                    "half_open_sas_left": sum(1 for s in status["ike_sas"] if s["state"] != "ESTABLISHED"),
                    "rss_kb_before": rss_before, "rss_kb_max": max(samples, default=rss_before),
                    "rss_kb_after": rss_kb(pid), "peer_connect_s": round(connect, 2),
                    "peer_connected_while_flooding": during, "ping_after_connect_ok": ping_ok,
                    "drops_during": grown}
    finally:
        for node, argv in routes:
            lab.run(node, *[w if w != "add" else "del" for w in argv], check=False)


# --- the full run ---------------------------------------------------------------------------------------
FULL = {"hostile": {"per_set": 50}, "hostile6": {"per_set": 50, "family": 6},
        "loss": {"percent": 10.0, "transfer_bytes": 16 << 20, "handshakes": 10},
        "rekey": {"seconds": 120, "rekey_every": 10}, "restart": {}, "flood": {"count": 20000, "seconds": 10},
        "half_open": {"count": 200_000, "seconds": 60}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", choices=list(FULL), help="run only this scenario (repeatable)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    results: dict = json.loads(args.out.read_text()) if args.out.exists() else {}
    names = args.only or list(FULL)
    with contextlib.ExitStack() as stack:
        labs: dict[bool, Lab] = {}  # hostile6 needs the public link's IPv6 addresses, the rest IPv4 only
        for name in names:
            if name == "half_open":  # in memory, no lab
                from bench import reliability_half_open as half_open
                results[name] = {"worst_case_per_datagram": half_open.worst_case(),
                                 "flood": half_open.flood(**FULL[name]), "where": "in memory"}
                args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
                continue
            ipv6 = name == "hostile6"
            if ipv6 not in labs:
                labs[ipv6] = stack.enter_context(Lab(prefix=None, ipv6=ipv6))
            lab = labs[ipv6]
            began = time.monotonic()
            print(f"reliability: {name} ...", file=sys.stderr, flush=True)
            if name == "restart":
                value = {victim: restart(lab, victim) for victim in ("gwA", "gwB")}
            else:
                value = {"hostile": hostile_esp, "hostile6": hostile_esp, "loss": loss, "rekey": rekey_under_load,
                         "flood": flood}[name](lab, **FULL[name])
            results[name] = {**value, "scenario_seconds": round(time.monotonic() - began, 1)} \
                if isinstance(value, dict) else value
            results["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(json.dumps(results, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
