"""The kernel lab's scenarios: ordinary lab Python, run inside the guest by its agent.

Each scenario builds its own namespace lab (``tunnel.lab.netns.Lab``) in the guest, raises on
the first broken expectation, writes what it measured to ``figures.json`` in its results folder
and copies the daemons' logs there. By hand: ``python -m tunnel.lab.vm run NAME``.

interop-*: espgw (gwA) with strongSwan 5.9.8 (gwB) on its default kernel-netlink backend, so
ESP is the kernel's. The matrix covers every item at least once without the full cross product:

====================================  =========  ==========  ====  ========================
scenario                              initiator  ESP         DPD   deleted by
====================================  =========  ==========  ====  ========================
interop-gcm-raw-espgw-init            espgw      raw (50)    -     strongSwan
interop-cbc-udp-swan-init             strongSwan UDP 4500    yes   espgw
interop-chacha-udp-espgw-init         espgw      UDP 4500    -     espgw
====================================  =========  ==========  ====  ========================

Each one pings both ways, moves TCP data both ways with checksums, checks the kernel's SAs and
ends with a delete; the first two also have the CHILD SA rekeyed by strongSwan (swanctl
--rekey) and then by espgw (its rekey_time), with a ping running that may lose nothing. UDP
encapsulation is forced with ``encap = yes`` on strongSwan's side.

chaos-*: netem on both gateways' public interface (``kernel_lab.NETEM``: 10% loss, 50 ms +-
20 ms delay, 5% reordering, 1% duplication, each direction). espgw <-> espgw and espgw <->
strongSwan (kernel) come up by retransmission; a TCP transfer must arrive intact; the anti-replay
check must drop exactly the true duplicates (ESP sequence numbers that arrived twice, counted in
a capture at the receiving gateway); a CHILD and an IKE rekey under a ping and a TCP stream may
lose nothing the impairment did not (no ESP drop but duplicates, the stream intact).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ike.config import ConnectionConfig
from tunnel.lab.configs import site_to_site
from tunnel.lab.espgw import EspgwGateway, GatewaySettings, wait_until
from tunnel.lab.interop import SUITES
from tunnel.lab.netns import Lab, LabError
from tunnel.lab.vm.kernel_lab import (NETEM, KernelStrongSwan, PingStream, TcpStream, capture_esp_in,
                                      duplicates, esp_arrivals, have_rfc7539esp, ike_blocked, netem_stats,
                                      one_way_udp,
                                      set_netem, tcp_transfer, xfrm_states)

log = structlog.get_logger(__name__)
ESPGW_START_TIMEOUT = 120.0  # a Python start costs ~10 s under emulation, more on a busy host


class ScenarioSkipped(Exception):
    """The guest cannot run this scenario (e.g. the kernel lacks an algorithm); exit status 3."""


def check(condition: Any, message: str) -> None:
    """An expectation of the scenario (not an assert: it must hold under python -O too)."""
    if not condition:
        raise LabError(f"check failed: {message}")


class Results:
    """The scenario's results folder: figures.json and the logs."""

    def __init__(self, out: Path):
        self.out = out
        self.figures: dict[str, Any] = {}

    def save(self) -> None:
        (self.out / "figures.json").write_text(json.dumps(self.figures, indent=2, sort_keys=True) + "\n")

    def keep_logs(self, lab: Lab) -> None:
        """At the lab's close, copy its daemons' logs (not the captures) into the results."""
        def copy() -> None:
            for path in lab.workdir.rglob("*.log"):
                with contextlib.suppress(OSError):
                    shutil.copy(path, self.out / path.name.replace("charon", f"charon-{path.parent.name}"))
        lab.on_close(copy)


def step(what: str, **fields: Any) -> None:
    """A progress line in the job's log: where a slow or failed scenario was."""
    log.info("vm.step", step=what, **fields)


def _start_espgw(*gateways: EspgwGateway) -> None:
    """Start several espgw daemons at once: each start is mostly Python importing, in parallel."""
    import threading

    errors: list[BaseException] = []

    def start(gw: EspgwGateway) -> None:
        try:
            gw.start(timeout=ESPGW_START_TIMEOUT)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(gw,)) for gw in gateways]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _events(gw: EspgwGateway, name: str) -> int:
    """How many log lines of this event espgw wrote (its log is JSON lines)."""
    try:
        text = gw.log_path.read_text(errors="replace")
    except OSError:
        return 0
    return len(re.findall(rf'"event": "{re.escape(name)}"', text))


def _esp_drops(gw: EspgwGateway) -> dict[str, int]:
    return {k: v for k, v in gw.status()["drops"].items() if v}


# --- interop with strongSwan on kernel ESP ---------------------------------------------------------
@dataclass(frozen=True)
class Interop:
    suite: str
    espgw_initiates: bool
    encap: bool
    dpd: bool
    espgw_deletes: bool
    rekeys: bool = True  # the CHILD rekeys by each side (covered twice already without chacha's)
    version: str = "5.9"  # strongSwan: 5.9.8 from this machine, or 6.0 from its Debian 13 root


INTEROP = {
    "interop-gcm-raw-espgw-init": Interop("gcm", espgw_initiates=True, encap=False, dpd=False, espgw_deletes=False),
    "interop-cbc-udp-swan-init": Interop("cbc", espgw_initiates=False, encap=True, dpd=True, espgw_deletes=True),
    "interop-chacha-udp-espgw-init": Interop("chacha", espgw_initiates=True, encap=True, dpd=False,
                                             espgw_deletes=True, rekeys=False),
    # by hand only (not in the test module, for CI time): strongSwan 6.0 on kernel ESP
    "interop-gcm-raw-swan60-espgw-init": Interop("gcm", espgw_initiates=True, encap=False, dpd=False,
                                                 espgw_deletes=False, version="6.0"),
}


class Pair:
    """espgw on gwA, strongSwan (kernel-netlink) on gwB, one connection ``lab`` / child ``net``."""

    def __init__(self, lab: Lab, mine: ConnectionConfig, theirs: ConnectionConfig, settings: GatewaySettings,
                 swan_retransmit: tuple[float, float, int] | None = None, version: str = "5.9"):
        self.lab, self.mine, self.theirs = lab, mine, theirs
        self.swan = KernelStrongSwan(lab, lab.gwB, version, [theirs], retransmit=swan_retransmit)
        self.gw = EspgwGateway(lab, lab.gwA, [mine], settings, name="espgw-gwA")
        self._swan_log_start = 0

    def start(self) -> Pair:
        self.swan.start(timeout=60)
        _start_espgw(self.gw)
        return self

    def swan_log(self) -> str:
        return self.swan.log_text()[self._swan_log_start:]

    def logs(self) -> str:
        return f"--- espgw (gwA)\n{self.gw.log_tail(40)}\n--- strongSwan (gwB)\n{self.swan.log_tail(40)}"

    def pair(self) -> tuple[dict, dict] | None:
        mine, theirs = self.gw.children(), self.swan.child_sas("net")
        if len(mine) == 1 and len(theirs) == 1:
            e, s = mine[0], theirs[0]
            if e["spi_in"] == s["spi-out"] and e["spi_out"] == s["spi-in"]:
                return e, s
        return None

    def wait_pair(self, timeout: float, what: str, differs_from: dict | None = None) -> tuple[dict, dict]:
        def ready():
            found = self.pair()
            if found and differs_from is not None and found[0]["spi_in"] == differs_from["spi_in"]:
                return None
            return found
        return wait_until(ready, timeout, what, interval=0.25, on_timeout=self.logs)

    def initiate(self, by_espgw: bool, timeout: float) -> None:
        if by_espgw:
            self.gw.request("initiate", child="net")
        else:
            self.swan.initiate(child="net", timeout=timeout)

    def kernel_spis(self) -> set[int]:
        return {s["spi"] for s in xfrm_states(self.lab, self.lab.gwB)}

    def kernel_matches(self) -> bool:
        """gwB's kernel holds exactly the two SAs of the CHILD SA both sides show."""
        found = self.pair()
        if found is None:
            return False
        return self.kernel_spis() == {int(found[0]["spi_in"], 16), int(found[0]["spi_out"], 16)}


def interop(results: Results, case: Interop) -> None:
    figures = results.figures
    figures["case"] = case.__dict__
    with Lab(ipv6=False) as lab:
        results.keep_logs(lab)
        if case.suite == "chacha" and not have_rfc7539esp():
            raise ScenarioSkipped("the guest kernel has no rfc7539esp(chacha20,poly1305)")
        kw: dict[str, Any] = {"proposals": [SUITES[case.suite].ike], "esp_proposals": [SUITES[case.suite].esp]}
        mine, theirs = site_to_site(lab, "A", **kw), site_to_site(lab, "B", **kw)
        theirs.encap = case.encap
        # espgw rekeys its CHILD SA on its own timer; the hard lifetime is long, so a slow
        # (emulated) peer delays a rekey and never expires an SA
        child = mine.children[0]
        child.rekey_time, child.rand_time, child.life_time = 10, 0.5, 300
        if case.dpd:
            mine.dpd_delay, theirs.dpd_delay = 1, 2
        pair = Pair(lab, mine, theirs, GatewaySettings(log_level="info"), version=case.version).start()
        figures["strongswan"] = pair.swan.version_string()
        check(not lab.untunnelled_reachable(), "hostA reaches hostB without a tunnel")

        step("initiate", by="espgw" if case.espgw_initiates else "strongSwan")
        started = time.monotonic()
        pair.initiate(case.espgw_initiates, timeout=60)
        e, s = pair.wait_pair(60, "the CHILD SA on both sides")
        figures["up_seconds"] = round(time.monotonic() - started, 2)
        ike, = pair.gw.ike_sas()
        check(ike["initiator"] == case.espgw_initiates, f"espgw's initiator flag: {ike['initiator']}")
        check(bool(e["encap"]) == case.encap, f"espgw's encap flag is {e['encap']}, expected {case.encap}")
        # (espgw may already be rekeying: compare with the pair of the moment, until they agree)
        wait_until(pair.kernel_matches, 30, "gwB's kernel to hold exactly the SAs both sides show", interval=0.5,
                   on_timeout=lambda: f"kernel: {xfrm_states(lab, lab.gwB)}\n{pair.logs()}")
        states = xfrm_states(lab, lab.gwB)
        figures["kernel_sas"] = [{"algs": st["algs"], "encap": st["encap"]} for st in states]
        check(all((st["encap"] == "espinudp") == case.encap for st in states), f"kernel encap: {states}")

        step("ping and TCP both ways")
        for src, dst in ((lab.hostA, lab.hostB), (lab.hostB, lab.hostA)):
            ping = lab.ping(src, dst.addr4, count=5, interval=0.2, wait=3)
            check(ping.ok, f"ping {src.role} -> {dst.role}: {ping.output}")
        transfers = {}
        for src, dst, size, seed in ((lab.hostA, lab.hostB, 256 << 10, 1), (lab.hostB, lab.hostA, 128 << 10, 2)):
            sent, received, seconds = tcp_transfer(src, dst, dst.addr4, size, seed=seed)
            check(sent == received and sent.startswith(f"{size} "),
                  f"TCP {src.role} -> {dst.role}: {sent} / {received}")
            transfers[f"{src.role}->{dst.role}"] = {"bytes": size, "seconds": seconds}
        figures["tcp"] = transfers
        packets = sum(st["packets"] for st in xfrm_states(lab, lab.gwB))
        check(packets > 0, "the kernel's SAs carried no packets")

        # CHILD rekeys: strongSwan's (swanctl --rekey), then espgw's own (rekey_time), under a ping
        if case.rekeys:
            _interop_rekeys(pair, figures)
        if case.dpd:
            step("DPD both ways")
            # one-way traffic: only the receiving gateway hears ESP, the sending one must check
            one_way_udp(lab.hostA, lab.hostB, seconds=4)
            log_text = pair.swan_log()
            check(re.search(r"parsed INFORMATIONAL request \d+ \[ \]", log_text), "no liveness check from espgw")
            check(re.search(r"generating INFORMATIONAL response \d+ \[ \]", log_text), "strongSwan did not answer")
            one_way_udp(lab.hostB, lab.hostA, seconds=5)
            log_text = pair.swan_log()
            check(re.search(r"generating INFORMATIONAL request \d+ \[ \]", log_text),
                  "no liveness check from strongSwan")
            check(re.search(r"parsed INFORMATIONAL response \d+ \[ \]", log_text), "espgw did not answer")
            check(len(pair.gw.ike_sas()) == 1 and len(pair.swan.list_sas()) == 1, "the SAs survived DPD")
            figures["dpd"] = "both ways"

        step("delete", by="espgw" if case.espgw_deletes else "strongSwan")
        if case.espgw_deletes:
            pair.gw.request("terminate", ike=mine.name)
        else:
            pair.swan.terminate(ike=theirs.name, timeout=20)
        wait_until(lambda: not pair.gw.ike_sas() and not pair.swan.list_sas(), 30, "no SAs on either side",
                   interval=0.25, on_timeout=pair.logs)
        wait_until(lambda: not pair.kernel_spis(), 10, "no SAs in gwB's kernel", interval=0.25)
        check(re.search(r"INFORMATIONAL (request|response) \d+ \[ D \]", pair.swan_log()), "no Delete exchanged")
        espgw_log = pair.gw.log_path.read_text(errors="replace")
        check("Traceback" not in espgw_log, "espgw logged a traceback")
        figures["deleted_by"] = "espgw" if case.espgw_deletes else "strongSwan"


def _interop_rekeys(pair: Pair, figures: dict) -> None:
    """strongSwan rekeys the CHILD SA (swanctl --rekey), then espgw on its rekey_time, under a
    ping that may lose nothing; afterwards the kernel holds only the newest SAs."""
    step("CHILD rekeys by strongSwan, then espgw")
    lab = pair.lab
    e = pair.wait_pair(10, "the CHILD SA")[0]
    pinger = PingStream(lab, lab.hostA, lab.hostB.addr4, interval=0.1)
    before = pair.swan_log().count("CREATE_CHILD_SA")
    out = pair.swan.rekey(child="net")
    check("rekey completed" in out, f"swanctl --rekey: {out}")
    e2, _ = pair.wait_pair(30, "strongSwan's CHILD rekey", differs_from=e)
    check(re.search(r"generating CREATE_CHILD_SA request \d+ \[ N\(REKEY_SA\)", pair.swan_log()),
          "strongSwan sent no CHILD rekey request")
    # espgw's timer (rekey_time after the last install) makes the next rekey espgw's
    since = len(pair.swan_log())
    wait_until(lambda: re.search(r"parsed CREATE_CHILD_SA request \d+ \[ N\(REKEY_SA\)", pair.swan_log()[since:]),
               40, "espgw's own CHILD rekey", interval=0.5, on_timeout=pair.logs)
    e3, _ = pair.wait_pair(30, "espgw's CHILD rekey to settle", differs_from=e2)
    time.sleep(1)
    ping_figures = pinger.stop()
    figures["rekeys"] = {"ping": ping_figures,
                         "create_child_sa_lines": pair.swan_log().count("CREATE_CHILD_SA") - before}
    check(ping_figures["lost"] == 0 and ping_figures["answered"] > 10, f"ping across the rekeys: {ping_figures}")
    wait_until(pair.kernel_matches, 20, "the kernel to drop the rekeyed SAs", interval=0.5, on_timeout=pair.logs)


# --- chaos: netem on the public link -----------------------------------------------------------------
CHAOS_RETRANSMIT = (2.0, 1.4, 6)  # timeout, base, tries: ~2+2.8+3.9+5.5+7.7+10.8 s, then give up


def _chaos_settings() -> GatewaySettings:
    timeout, base, tries = CHAOS_RETRANSMIT
    return GatewaySettings(log_level="info", retransmit_timeout=timeout, retransmit_base=base,
                           retransmit_tries=tries)


def _handshakes(lab: Lab, results: Results, count: int, initiate: Callable[[int], None], wait_up: Callable[[], Any],
                terminate: Callable[[], None], wait_gone: Callable[[], Any], retransmits: Callable[[], int]) -> None:
    """Bring the tunnel up ``count`` times (down again in between, up at the end). gwA's first
    IKE request is dropped on top of netem's loss (``ike_blocked`` until it retransmits), so at
    least one handshake comes up by retransmission whatever the dice say."""
    seconds = []
    for n in range(count):
        step("handshake under netem", n=n + 1, of=count)
        started = time.monotonic()
        if n == 0:
            with ike_blocked(lab, lab.gwA):
                initiate(n)
                wait_until(lambda: retransmits() >= 1, 30, "gwA to retransmit its first IKE request", interval=0.2)
        else:
            initiate(n)
        wait_up()
        seconds.append(round(time.monotonic() - started, 2))
        if n < count - 1:
            terminate()
            wait_gone()
    results.figures["handshakes"] = {"count": count, "seconds": seconds, "ike_retransmits": retransmits()}


def _replay_accounting(lab: Lab, pcap: Path, drops: dict[str, int]) -> dict:
    arrivals = esp_arrivals(pcap)
    dups = duplicates(arrivals)
    rejected = drops.get("replay", 0) + drops.get("unknown_spi", 0)
    return {"esp_arrived": sum(sum(c.values()) for c in arrivals.values()), "true_duplicates": dups,
            "replay_drops": drops.get("replay", 0), "unknown_spi_drops": drops.get("unknown_spi", 0),
            "auth_failed": drops.get("auth_failed", 0), "only_duplicates_dropped": rejected == dups}


def _stream_through_rekeys(lab: Lab, rekeyed: Callable[[], bool], min_seconds: float, max_seconds: float,
                           port: int) -> dict:
    """A paced TCP stream and a 10/s ping hostA -> hostB until ``rekeyed()`` (and min_seconds)."""
    stream = TcpStream(lab.hostA, lab.hostB, lab.hostB.addr4, seconds=max_seconds, rate=24 << 10, port=port,
                       timeout=300)
    step("stream and ping through the rekeys")
    pinger = PingStream(lab, lab.hostA, lab.hostB.addr4, interval=0.1)
    started = time.monotonic()
    stream.start()
    try:
        wait_until(lambda: time.monotonic() - started >= min_seconds and rekeyed(), max_seconds + 60,
                   "the rekeys under netem", interval=0.5)
    finally:
        ping = pinger.stop()
        stream.stop()
    sent, received = stream.result()
    check(sent == received, f"the TCP stream across the rekeys: sent {sent}, received {received}")
    return {"ping": ping, "stream": {"bytes": int(sent.split()[0]), "seconds": stream.elapsed, "intact": True},
            "seconds": round(time.monotonic() - started, 1)}


def chaos_espgw(results: Results, handshakes: int = 2, transfer: int = 256 << 10) -> None:
    figures = results.figures
    figures["netem"] = " ".join(NETEM) + " (each gateway's egress on the public link)"
    with Lab(ipv6=False) as lab:
        results.keep_logs(lab)
        a, b = site_to_site(lab, "A"), site_to_site(lab, "B")
        # gwA rekeys: its CHILD SA after 20 s, its IKE SA after 30 s (rand 1 s); gwB only answers
        a.children[0].rekey_time, a.children[0].rand_time, a.children[0].life_time = 20, 1, 600
        a.rekey_time, a.over_time = 30, 600
        gw_a = EspgwGateway(lab, lab.gwA, [a], _chaos_settings(), name="espgw-gwA")
        gw_b = EspgwGateway(lab, lab.gwB, [b], _chaos_settings(), name="espgw-gwB")
        _start_espgw(gw_a, gw_b)
        for node in (lab.gwA, lab.gwB):
            set_netem(lab, node, *NETEM)

        def up() -> Any:
            return wait_until(lambda: len(gw_a.children()) == 1 and len(gw_b.children()) == 1, 90,
                              "the tunnel under netem", interval=0.25, on_timeout=gw_a.log_tail)
        _handshakes(lab, results, handshakes, lambda n: gw_a.request("initiate", child="net"), up,
                    lambda: gw_a.request("terminate", ike=a.name),
                    lambda: wait_until(lambda: not gw_a.ike_sas() and not gw_b.ike_sas(), 60, "the SAs to go",
                                       interval=0.25),
                    lambda: _events(gw_a, "retransmit") + _events(gw_b, "retransmit"))
        ike0, child0 = gw_a.ike_sas()[0]["spi_i"], gw_a.children()[0]["spi_in"]
        drops0 = {"A": _esp_drops(gw_a), "B": _esp_drops(gw_b)}

        pcap_a, pcap_b = lab.workdir / "in-gwA.pcap", lab.workdir / "in-gwB.pcap"
        with capture_esp_in(lab, lab.gwA, pcap_a), capture_esp_in(lab, lab.gwB, pcap_b):
            step("TCP transfer under netem", bytes=transfer)
            sent, received, seconds = tcp_transfer(lab.hostA, lab.hostB, lab.hostB.addr4, transfer, seed=3, timeout=300)
            check(sent == received and sent.startswith(f"{transfer} "), f"TCP under netem: {sent} / {received}")
            figures["tcp"] = {"bytes": transfer, "seconds": seconds, "intact": True}

            seen = {"ike": {ike0}, "child": {child0}}

            def rekeyed() -> bool:
                with contextlib.suppress(IndexError):
                    seen["ike"].add(gw_a.ike_sas()[0]["spi_i"])
                    seen["child"].add(gw_a.children()[0]["spi_in"])
                return len(seen["ike"]) > 1 and len(seen["child"]) > 1
            figures["rekey"] = _stream_through_rekeys(lab, rekeyed, 10, 90, port=5002)
            figures["rekey"]["child_rekeys"] = len(seen["child"]) - 1
            figures["rekey"]["ike_rekeys"] = len(seen["ike"]) - 1
            time.sleep(1)
        figures["netem_gwA"] = netem_stats(lab, lab.gwA).split("\n")[1:3]
        accounting = {}
        for side, gw, pcap in (("A", gw_a, pcap_a), ("B", gw_b, pcap_b)):
            drops = _esp_drops(gw)
            delta = {k: v - drops0[side].get(k, 0) for k, v in drops.items() if v != drops0[side].get(k, 0)}
            accounting[f"gw{side}"] = {**_replay_accounting(lab, pcap, delta), "drops": delta}
        figures["anti_replay"] = accounting
        figures["ike_retransmits_total"] = _events(gw_a, "retransmit") + _events(gw_b, "retransmit")
        for side, acc in accounting.items():
            check(acc["only_duplicates_dropped"] and acc["auth_failed"] == 0,
                  f"{side} dropped other ESP than the true duplicates: {acc}")
        check(len(gw_a.children()) == 1 and len(gw_b.children()) == 1, "one CHILD SA per side at the end")
        for gw in (gw_a, gw_b):
            check('"expired"' not in gw.log_path.read_text(errors="replace"), f"an SA of {gw.name} expired")


def chaos_strongswan(results: Results, handshakes: int = 2, transfer: int = 256 << 10) -> None:
    figures = results.figures
    figures["netem"] = " ".join(NETEM) + " (each gateway's egress on the public link)"
    with Lab(ipv6=False) as lab:
        results.keep_logs(lab)
        mine, theirs = site_to_site(lab, "A"), site_to_site(lab, "B")
        mine.over_time = 600
        pair = Pair(lab, mine, theirs, _chaos_settings(), swan_retransmit=CHAOS_RETRANSMIT).start()
        for gw in (lab.gwA, lab.gwB):
            set_netem(lab, gw, *NETEM)

        def swan_retransmits() -> int:
            return len(re.findall(r"retransmit \d+ of request", pair.swan_log()))
        # alternately espgw and strongSwan initiate
        _handshakes(lab, results, handshakes, lambda n: pair.initiate(n % 2 == 0, timeout=60),
                    lambda: pair.wait_pair(90, "the tunnel under netem"),
                    lambda: pair.gw.request("terminate", ike=mine.name),
                    lambda: wait_until(lambda: not pair.gw.ike_sas() and not pair.swan.list_sas(), 60,
                                       "the SAs to go", interval=0.25, on_timeout=pair.logs),
                    lambda: _events(pair.gw, "retransmit") + swan_retransmits())
        drops0 = _esp_drops(pair.gw)
        xfrm0 = _kernel_xfrm_errors(lab)
        e0, _ = pair.wait_pair(10, "the CHILD SA")
        ike0 = pair.gw.ike_sas()[0]["spi_i"]

        pcap_a, pcap_b = lab.workdir / "in-gwA.pcap", lab.workdir / "in-gwB.pcap"
        with capture_esp_in(lab, lab.gwA, pcap_a), capture_esp_in(lab, lab.gwB, pcap_b):
            step("TCP transfer under netem", bytes=transfer)
            sent, received, seconds = tcp_transfer(lab.hostA, lab.hostB, lab.hostB.addr4, transfer, seed=4, timeout=300)
            check(sent == received and sent.startswith(f"{transfer} "), f"TCP under netem: {sent} / {received}")
            figures["tcp"] = {"bytes": transfer, "seconds": seconds, "intact": True}

            state = {"step": 0}

            def rekeyed() -> bool:
                # strongSwan rekeys the CHILD SA, then the IKE SA; each waits for the last to land
                if state["step"] == 0:
                    pair.swan.rekey(child="net")
                    state["step"] = 1
                elif state["step"] == 1 and (p := pair.pair()) and p[0]["spi_in"] != e0["spi_in"]:
                    pair.swan.rekey(ike=theirs.name)
                    state["step"] = 2
                elif state["step"] == 2 and pair.gw.ike_sas() and pair.gw.ike_sas()[0]["spi_i"] != ike0 \
                        and len(pair.swan.list_sas()) == 1:
                    state["step"] = 3
                return state["step"] == 3
            figures["rekey"] = _stream_through_rekeys(lab, rekeyed, 10, 90, port=5002)
            figures["rekey"].update(child_rekeys=1, ike_rekeys=1, started_by="strongSwan")
            pair.wait_pair(30, "one CHILD SA per side after the rekeys")
            time.sleep(1)
        drops = _esp_drops(pair.gw)
        delta = {k: v - drops0.get(k, 0) for k, v in drops.items() if v != drops0.get(k, 0)}
        xfrm = {k: v - xfrm0.get(k, 0) for k, v in _kernel_xfrm_errors(lab).items() if v != xfrm0.get(k, 0)}
        arrivals_b = esp_arrivals(pcap_b)
        figures["anti_replay"] = {
            "espgw_gwA": {**_replay_accounting(lab, pcap_a, delta), "drops": delta},
            "kernel_gwB": {"true_duplicates": duplicates(arrivals_b), "xfrm_errors": xfrm,
                           "esp_arrived": sum(sum(c.values()) for c in arrivals_b.values())},
        }
        figures["ike_retransmits_total"] = _events(pair.gw, "retransmit") + swan_retransmits()
        acc = figures["anti_replay"]["espgw_gwA"]
        check(acc["only_duplicates_dropped"] and acc["auth_failed"] == 0,
              f"espgw dropped other ESP than the true duplicates: {acc}")
        check('"expired"' not in pair.gw.log_path.read_text(errors="replace"), "an SA of espgw expired")


def _kernel_xfrm_errors(lab: Lab) -> dict[str, int]:
    """gwB's /proc/net/xfrm_stat (per namespace): XfrmInStateSeqError counts replay drops."""
    text = lab.run(lab.gwB, "cat", "/proc/net/xfrm_stat").stdout
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", text, re.M) if int(v)}


# --- registry ------------------------------------------------------------------------------------
def smoke(results: Results) -> None:
    """The guest works: its kernel has ESP and netem, and a namespace lab comes up in it."""
    with Lab(ipv6=False) as lab:
        set_netem(lab, lab.gwA, "delay", "20ms")
        ping = lab.ping(lab.gwA, lab.gwB.wan_addr4, count=3, interval=0.2)
        check(ping.ok and (ping.rtt_min_ms or 0) >= 19, f"netem delay: {ping.output}")
        results.figures["kernel"] = lab.run(lab.gwA, "uname", "-r").stdout.strip()
        results.figures["rtt_min_ms"] = ping.rtt_min_ms


SCENARIOS: dict[str, Callable[..., None]] = {
    "smoke": smoke,
    **{name: (lambda results, case=case: interop(results, case)) for name, case in INTEROP.items()},
    "chaos-espgw": chaos_espgw,
    "chaos-strongswan": chaos_strongswan,
}


def run(name: str, out: Path, params: dict) -> None:
    """Run one scenario; its figures.json is written also when it fails (what it got so far)."""
    results = Results(out)
    started = time.monotonic()
    try:
        SCENARIOS[name](results, **params)
        results.figures["ok"] = True
    except ScenarioSkipped as exc:
        results.figures["skipped"] = str(exc)
        print(f"SKIPPED: {exc}", flush=True)
        raise SystemExit(3) from None
    finally:
        results.figures["scenario_seconds"] = round(time.monotonic() - started, 1)
        results.save()
