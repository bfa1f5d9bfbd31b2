"""Day-two operations on two real ``espgw run`` daemons in the namespace lab: ``espgw reload`` and
SIGHUP while traffic flows, a broken configuration refused, and ``espgw initiate`` waiting.

One lab and one pair of gateways serve the module (gwA traps, gwB responds, connection "lab");
the tests run in order and each leaves the tunnel up for the next:

1. a reload that adds a connection leaves the running one alone: a TCP transfer across it
   arrives whole (checksum) and both ends keep the same SPIs, with no drops;
2. a reload with errors is refused (the CLI prints them, exits 1) and the old config runs on;
3. a reload that removes "lab" deletes its SAs at the peer (gwB's SA goes at once, not at DPD);
4. SIGHUP does what reload does (adds "lab" back), logs a line, and the daemon keeps running;
   ``espgw initiate --child net`` then waits until the CHILD SA is up and exits 0;
5. ``espgw initiate`` to a peer that never answers exits 1 within its ``--timeout``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ike.config import TrafficSelector
from tunnel.lab.configs import site_to_site
from tunnel.lab.espgw import EspgwGateway, config_toml, wait_until
from tunnel.lab.netns import Lab

pytestmark = pytest.mark.lab

REPO = str(Path(__file__).resolve().parents[3])
PORT = 5101

# Sends SIZE pseudo-random bytes over about SECONDS (paced, so a reload lands mid-transfer) and
# prints 'BYTES SHA256' of what it sent.
PACED_SOURCE = """
import hashlib, random, socket, sys, time
host, port, size, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
data = random.Random(7).randbytes(size)
chunk, start = 32 * 1024, time.monotonic()
with socket.create_connection((host, port), timeout=60) as conn:
    for offset in range(0, size, chunk):
        conn.sendall(data[offset:offset + chunk])
        ahead = start + seconds * (offset + chunk) / size - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
print(size, hashlib.sha256(data).hexdigest(), flush=True)
"""


class Pair:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.lab_conn = site_to_site(lab, "A")
        for child in self.lab_conn.children:
            child.start_action = "trap"
        self.a = EspgwGateway(lab, lab.gwA, [self.lab_conn])
        self.b = EspgwGateway(lab, lab.gwB, [site_to_site(lab, "B")])

    def write_a(self, conns) -> None:
        """gwA's configuration file, as an operator edits it (the daemon does not notice by itself)."""
        self.a.conns = list(conns)
        self.a.config_path.write_text(config_toml(self.a.conns, self.a.settings, self.a.socket,
                                                  self.a.config_path.parent, self.a.name))

    def spis(self, gw: EspgwGateway) -> set[tuple[str, str, str]]:
        return {(c["name"], str(c["spi_in"]), str(c["spi_out"])) for c in gw.children()}

    def up(self) -> None:
        self.lab.ping(self.lab.hostA, self.lab.hostB.addr4, count=1, wait=2)  # the trap brings it up
        wait_until(lambda: self.a.children() and self.b.children(), 15, "the CHILD SA on both gateways",
                   on_timeout=self.logs)

    def logs(self) -> str:
        return f"--- gwA\n{self.a.log_tail()}\n--- gwB\n{self.b.log_tail()}"


def extra_connection(lab: Lab, name: str, remote: str):
    """A second connection of gwA on other subnets, started by nobody (start_action none)."""
    conn = site_to_site(lab, "A", name=name, child=f"{name}-net", ipv6_ts=False)
    conn.remote_addrs = [remote]
    child = conn.children[0]
    child.local_ts = [TrafficSelector.from_cidr("10.99.1.0/24")]
    child.remote_ts = [TrafficSelector.from_cidr("10.99.2.0/24")]
    child.start_action = "none"
    return conn


@pytest.fixture(scope="module")
def pair():
    with Lab(ipv6=False) as lab:
        p = Pair(lab)
        try:
            p.b.start()
            p.a.start()
            p.up()
            yield p
        finally:
            print(p.logs())  # shown for a failed test only
            p.a.stop()
            p.b.stop()


def _paced_transfer(lab: Lab, size: int, seconds: float) -> tuple[subprocess.Popen, subprocess.Popen]:
    sink = lab.spawn(lab.hostB, sys.executable, "-m", "tunnel.lab.espgw", "sink", "0.0.0.0", PORT,
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    assert sink.stdout is not None and sink.stdout.readline().strip() == b"listening"
    source = lab.spawn(lab.hostA, sys.executable, "-c", PACED_SOURCE, lab.hostB.addr4, PORT, size, seconds,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    return source, sink


def _drops(gw: EspgwGateway) -> dict:
    return {k: v for k, v in gw.status()["drops"].items() if k not in ("ike_unknown_spi",)}


def test_reload_adding_a_connection_keeps_the_running_one_and_its_traffic(pair):
    spis_a, spis_b = pair.spis(pair.a), pair.spis(pair.b)
    drops_a, drops_b = _drops(pair.a), _drops(pair.b)
    source, sink = _paced_transfer(pair.lab, 24 * 1024 * 1024, 6.0)
    try:
        time.sleep(1.5)
        assert source.poll() is None  # the transfer is under way
        pair.write_a([pair.lab_conn, extra_connection(pair.lab, "extra", pair.lab.gwB.wan_addr4)])
        done = pair.a.cli("reload")
        assert source.poll() is None, "the transfer ended before the reload: make it longer"
        assert done.stdout.strip().endswith("added extra; 1 unchanged"), done.stdout
        sent = source.communicate(timeout=60)[0].decode().strip()
        received = sink.communicate(timeout=30)[0].decode().strip()
    finally:
        pair.lab.stop(source, timeout=2)
        pair.lab.stop(sink, timeout=2)
    assert sent == received and sent.startswith(str(24 * 1024 * 1024))
    assert pair.spis(pair.a) == spis_a and pair.spis(pair.b) == spis_b  # the same SAs throughout
    assert _drops(pair.a) == drops_a and _drops(pair.b) == drops_b
    names = [c["name"] for c in pair.a.request("list-conns")["connections"]]
    assert names == ["lab", "extra"]


def test_a_broken_configuration_is_refused_and_the_old_one_keeps_running(pair):
    spis_a = pair.spis(pair.a)
    good = pair.a.config_path.read_text()
    pair.a.config_path.write_text(good.replace('start_action = "trap"', 'start_action = "sometimes"'))
    try:
        done = pair.a.cli("reload", check=False)
    finally:
        pair.a.config_path.write_text(good)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0] == "espgw: configuration not reloaded (the running one stays):"
    assert any("start_action" in line and "sometimes" in line for line in lines[1:]), done.stderr
    assert pair.a.proc is not None and pair.a.proc.poll() is None
    assert pair.spis(pair.a) == spis_a
    assert pair.lab.ping(pair.lab.hostA, pair.lab.hostB.addr4, count=2, interval=0.1).ok


def test_reload_removing_a_connection_deletes_its_sas_at_the_peer(pair):
    assert pair.b.children()
    pair.write_a([extra_connection(pair.lab, "extra", pair.lab.gwB.wan_addr4)])
    started = time.monotonic()
    done = pair.a.cli("reload")
    assert "removed lab" in done.stdout
    wait_until(lambda: not pair.b.ike_sas(), 5, "gwB's IKE SA to go after gwA's DELETE", on_timeout=pair.logs)
    assert time.monotonic() - started < 5  # the DELETE, not DPD (off here) or a lifetime
    assert not pair.a.ike_sas()
    assert "deleted by peer" in pair.b.log_tail(200)


def test_sighup_reloads_like_the_command(pair):
    pair.write_a([pair.lab_conn, extra_connection(pair.lab, "extra", pair.lab.gwB.wan_addr4)])
    assert pair.a.proc is not None
    pair.a.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "lab" in [c["name"] for c in pair.a.request("list-conns")["connections"]], 5,
               "gwA to take 'lab' back on SIGHUP", on_timeout=pair.logs)
    assert pair.a.proc.poll() is None
    log = pair.a.log_tail(200)
    assert '"reload.signal"' in log and '"reload.done"' in log
    done = pair.a.cli("initiate", "--child", "net", "--timeout", "20")
    assert done.stdout.splitlines()[-1] == "initiate completed successfully", done.stdout
    assert any("CHILD SA net" in line and "established" in line for line in done.stdout.splitlines())
    assert pair.lab.ping(pair.lab.hostA, pair.lab.hostB.addr4, count=2, interval=0.1).ok


def test_initiate_to_a_peer_that_never_answers_exits_1_within_its_timeout(pair):
    # hostA is on gwA's LAN and runs no IKE: the IKE_SA_INIT goes unanswered
    pair.write_a([pair.lab_conn, extra_connection(pair.lab, "void", pair.lab.hostA.addr4)])
    pair.a.cli("reload")
    started = time.monotonic()
    done = pair.a.cli("initiate", "--child", "void-net", "--timeout", "3", check=False)
    elapsed = time.monotonic() - started
    assert done.returncode == 1 and 3 <= elapsed < 8, (elapsed, done.stdout, done.stderr)
    assert done.stderr.startswith("espgw: initiate timed out after 3s")
    assert "[CHD] initiating CHILD SA void-net of void" in done.stdout
    assert f"to {pair.lab.hostA.addr4} (attempt 1)" in done.stdout  # where the IKE_SA_INIT went
    pair.a.cli("terminate", "--ike", "void")  # the daemon was still trying: stop it
    assert pair.a.cli("terminate", "--ike", "nosuch", check=False).returncode == 1
    assert pair.a.cli("rekey", "--child", "nosuch", check=False).returncode == 1
    assert pair.a.cli("initiate", "--child", "nosuch", check=False).returncode == 1
