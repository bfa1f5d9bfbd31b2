"""espgw <-> strongSwan in the namespace lab: espgw on gwA, a strongSwan reference peer on gwB.

``Peering`` configures both ends for one proposal pair from the same ``site_to_site`` configs,
brings the CHILD SA up from the chosen side, waits for states on both sides to agree, and
clears both sides afterwards; ``peerings`` makes them for a test (a named suite or explicit
proposals, the initiator by ROLES) and closes them after it. ``FastStrongSwan`` is a
``StrongSwan`` whose retransmissions give up within a few seconds, so dead-peer detection fits
in a test. ``PacedTransfer`` keeps a TCP stream running for a while (across rekeys),
``one_way_udp`` sends traffic nothing answers, ``wire_summary`` says what crossed the public link.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dpkt

from ike.config import ConnectionConfig
from tunnel.lab.configs import site_to_site
from tunnel.lab.espgw import EspgwGateway, GatewaySettings, tcp_sink, wait_until
from tunnel.lab.netns import Lab, LabError
from tunnel.lab.strongswan import StrongSwan


@dataclass(frozen=True)
class Suite:
    ike: str
    esp: str


SUITES = {
    "gcm": Suite("aes256gcm16-prfsha256-ecp256", "aes256gcm16"),
    "cbc": Suite("aes128-sha256-modp2048", "aes128-sha256"),
    "chacha": Suite("chacha20poly1305-prfsha256-x25519", "chacha20poly1305"),
}
# strongSwan's names for what each suite negotiates (swanctl --list-sas fields)
SWAN_ALGS = {
    "gcm": {"encr-alg": "AES_GCM_16", "encr-keysize": "256", "prf-alg": "PRF_HMAC_SHA2_256", "dh-group": "ECP_256"},
    "cbc": {"encr-alg": "AES_CBC", "encr-keysize": "128", "integ-alg": "HMAC_SHA2_256_128",
            "prf-alg": "PRF_HMAC_SHA2_256", "dh-group": "MODP_2048"},
    "chacha": {"encr-alg": "CHACHA20_POLY1305", "prf-alg": "PRF_HMAC_SHA2_256", "dh-group": "CURVE_25519"},
}
SWAN_CHILD_ALGS = {
    "gcm": {"encr-alg": "AES_GCM_16", "encr-keysize": "256"},
    "cbc": {"encr-alg": "AES_CBC", "encr-keysize": "128", "integ-alg": "HMAC_SHA2_256_128"},
    "chacha": {"encr-alg": "CHACHA20_POLY1305"},
}


ROLES = {"espgw-init": True, "swan-init": False}  # test ids -> whether espgw initiates


class FastStrongSwan(StrongSwan):
    """charon retransmitting after 1 s, twice, then giving up (about 3 s instead of 165 s)."""

    RETRANSMIT = "    retransmit_timeout = 1\n    retransmit_base = 1\n    retransmit_tries = 2\n"

    def strongswan_conf(self) -> str:
        text = super().strongswan_conf()
        return text.replace("\ncharon {\n", "\ncharon {\n" + self.RETRANSMIT, 1)


class Peering:
    """espgw (gwA) and strongSwan (gwB) configured for one suite; ``up()``, ``down()``.

    ``espgw_conn``/``swan_conn`` may be changed (e.g. rekey times, DPD, a wrong PSK) before
    ``start()``. Call ``close()`` to stop espgw and clear strongSwan's SAs and connections.
    """

    def __init__(self, lab: Lab, swan: StrongSwan, suite: str, *, espgw_initiates: bool,
                 settings: GatewaySettings | None = None):
        self.lab, self.swan, self.suite = lab, swan, suite
        self.espgw_initiates = espgw_initiates
        kw: dict[str, Any] = {"proposals": [SUITES[suite].ike], "esp_proposals": [SUITES[suite].esp]}
        self.espgw_conn: ConnectionConfig = site_to_site(lab, "A", **kw)
        self.swan_conn: ConnectionConfig = site_to_site(lab, "B", **kw)
        self.settings = settings or GatewaySettings(log_level="debug")
        self.espgw: EspgwGateway | None = None
        self._swan_log_start = 0
        Peering._count += 1
        self.name = f"gwA-{Peering._count}"  # own log, socket and config file per peering

    _count = 0

    @property
    def gw(self) -> EspgwGateway:
        """espgw's side, from start() on."""
        if self.espgw is None:
            raise LabError("the peering is not started")
        return self.espgw

    @property
    def child(self) -> str:
        return self.espgw_conn.children[0].name

    def start(self) -> Peering:
        """Load strongSwan's connection and start espgw; nothing is negotiated yet."""
        self._swan_log_start = len(self.swan.log_text())
        self.swan.load_all([self.swan_conn])
        self.espgw = EspgwGateway(self.lab, self.lab.gwA, [self.espgw_conn], dataclasses.replace(self.settings),
                                  name=self.name)
        self.espgw.start()
        return self

    def initiate(self) -> None:
        if self.espgw_initiates:
            self.gw.request("initiate", child=self.child)
        else:
            self.swan.initiate(child=self.child, timeout=10)

    def up(self, timeout: float = 10) -> tuple[dict, dict]:
        """Initiate and wait until both sides have the CHILD SA; returns (espgw's, strongSwan's)."""
        self.initiate()
        return self.wait_child(lambda e, s: True, timeout, "the CHILD SA on both sides")

    def pairs(self) -> tuple[list[dict], list[dict]]:
        return self.gw.children(), self.swan.child_sas(self.child)

    def wait_child(self, predicate, timeout: float, what: str) -> tuple[dict, dict]:
        """Wait for exactly one installed CHILD SA per side, with matching SPIs, and predicate(e, s)."""
        def check():
            mine, theirs = self.pairs()
            if len(mine) == 1 and len(theirs) == 1:
                e, s = mine[0], theirs[0]
                if e["spi_in"] == s["spi-out"] and e["spi_out"] == s["spi-in"] and predicate(e, s):
                    return e, s
            return None
        return wait_until(check, timeout, what, interval=0.1, on_timeout=self.logs)

    def ike_pair(self) -> tuple[dict, dict]:
        (mine,) = self.gw.ike_sas()
        (theirs,) = self.swan.list_sas()
        return mine, theirs

    def wait_gone(self, timeout: float = 10) -> None:
        """Both sides without any IKE or CHILD SA."""
        wait_until(lambda: not self.gw.ike_sas() and not self.swan.list_sas(), timeout,
                   "no SAs left on either side", interval=0.1, on_timeout=self.logs)

    def swan_log(self) -> str:
        """What charon logged since ``start()`` (one charon serves many peerings)."""
        return self.swan.log_text()[self._swan_log_start:]

    def espgw_log(self) -> str:
        return self.espgw.log_path.read_text(errors="replace") if self.espgw else ""

    def logs(self) -> str:
        espgw = self.espgw.log_tail(60) if self.espgw else ""
        swan = "\n".join(self.swan_log().splitlines()[-60:])
        return f"--- espgw (gwA)\n{espgw}\n--- strongSwan {self.swan.version} (gwB)\n{swan}"

    def close(self) -> None:
        if self.espgw is not None:
            self.espgw.stop()
        if self.swan.running:
            for sa in self.swan.list_sas():
                self.swan.terminate(ike=sa["name"], timeout=3, check=False)
            self.swan.load_all([])


@contextlib.contextmanager
def peerings(lab: Lab, swan: StrongSwan) -> Iterator[Callable[..., Peering]]:
    """A factory ``make(proposals, role, *, esp=None, **tweak) -> Peering`` (not started) for one
    test; every peering it made is closed afterwards, its logs printed (pytest shows them when
    the test failed).

    ``proposals`` is a SUITES name or an IKE proposal string (then ``esp``, default aes256gcm16,
    is the ESP one); ``role`` a ROLES key. ``tweak``: ConnectionConfig fields of espgw's side,
    ``child_``-prefixed ones of its CHILD config (e.g. ``child_rekey_time=3``, ``dpd_delay=1``).
    """
    made: list[Peering] = []

    def make(proposals: str, role: str, *, esp: str | None = None, **tweak) -> Peering:
        p = Peering(lab, swan, proposals if proposals in SUITES else "gcm", espgw_initiates=ROLES[role])
        if proposals not in SUITES or esp is not None:
            ike = SUITES[proposals].ike if proposals in SUITES else proposals
            for conn in (p.espgw_conn, p.swan_conn):
                conn.proposals = [ike]
                conn.children[0].esp_proposals = [esp or "aes256gcm16"]
        for key, value in tweak.items():
            target = p.espgw_conn.children[0] if key.startswith("child_") else p.espgw_conn
            setattr(target, key.removeprefix("child_"), value)
        made.append(p)
        return p

    try:
        yield make
    finally:
        for p in made:
            print(p.logs())
            p.close()


_ND_TYPES = range(133, 138)  # router/neighbour solicitation and advertisement, redirect
_MLD_TYPES = (130, 131, 132, 143)  # multicast listener query, report, done; MLDv2 report


def _link_control_v6(next_header: int, payload: bytes) -> bool:
    """Neighbour discovery, or an MLD message behind its hop-by-hop Router Alert header: the
    link's own control traffic, sent whenever an interface or address comes up, not a leak."""
    if next_header == 58:
        return bool(payload) and payload[0] in _ND_TYPES
    if next_header == 0 and len(payload) >= 8:
        end = (payload[1] + 1) * 8
        return payload[0] == 58 and len(payload) > end and payload[end] in _MLD_TYPES
    return False


def wire_summary(pcap_path: str | Path) -> dict:
    """What crossed a link: SPIs of raw ESP and of ESP-in-UDP, IKE messages, anything else.

    ``esp_unreachable`` counts ICMP "protocol 50 unreachable" errors: a Linux host whose only
    ESP receiver is a raw socket (strongSwan 6.0's libipsec) now and then answers an ESP
    packet with one under load. They quote ciphertext only, so they are not a leak.
    """
    esp_raw: set[int] = set()
    esp_udp: set[int] = set()
    counts = {"ike": 0, "esp_unreachable": 0, "clear": 0}
    with open(pcap_path, "rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                continue
            v4 = isinstance(ip, dpkt.ip.IP)
            proto = ip.p if v4 else ip.nxt
            payload = bytes(buf)[14 + (ip.hl * 4 if v4 else 40):]
            ports = struct.unpack("!HH", payload[:4]) if proto == 17 and len(payload) >= 8 else ()
            if proto == 50:
                esp_raw.add(struct.unpack("!I", payload[:4])[0])
            elif 4500 in ports and payload[8:12] == bytes(4):
                counts["ike"] += 1  # non-ESP marker: IKE on port 4500
            elif 4500 in ports:
                if len(payload) > 9:  # a 1-byte 0xff is a NAT-T keepalive
                    esp_udp.add(struct.unpack("!I", payload[8:12])[0])
            elif 500 in ports:
                counts["ike"] += 1
            elif proto == 1 and payload[:2] == b"\x03\x02" and len(payload) >= 28 and payload[17] == 50:
                counts["esp_unreachable"] += 1
            elif not (not v4 and _link_control_v6(proto, payload)):
                counts["clear"] += 1
    return {"esp_raw": esp_raw, "esp_udp": esp_udp, **counts}


class PacedTransfer:
    """A TCP stream client -> server (dst = the server's address) lasting ``seconds``.

    ``start()`` returns once the sink listens; ``result()`` waits and returns
    (what the client sent, what the server received), each 'BYTES SHA256'.
    """

    def __init__(self, lab: Lab, client, server, dst: str, *, seconds: float, rate: int = 4 << 20,
                 port: int = 5002):
        self.lab, self.client, self.server, self.dst = lab, client, server, dst
        self.seconds, self.rate, self.port = seconds, rate, port
        self._sent: str | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._sink: subprocess.Popen | None = None

    def start(self) -> PacedTransfer:
        bind = "::" if ":" in self.dst else "0.0.0.0"
        self._sink = self.lab.spawn(self.server, sys.executable, "-m", "tunnel.lab.interop", "sink", bind,
                                    self.port, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    cwd=_repo_root())
        assert self._sink.stdout is not None  # stdout=PIPE
        if self._sink.stdout.readline().strip() != b"listening":
            raise LabError("TCP sink did not start")
        self._thread = threading.Thread(target=self._run_source, daemon=True)
        self._thread.start()
        return self

    def _run_source(self) -> None:
        try:
            self._sent = self.lab.run(self.client, sys.executable, "-m", "tunnel.lab.interop", "source",
                                      self.dst, self.port, self.seconds, self.rate,
                                      timeout=self.seconds + 60).stdout.strip()
        except BaseException as exc:  # reported by result()
            self._error = exc

    def result(self) -> tuple[str, str]:
        if self._thread is None or self._sink is None:
            raise LabError("the transfer was not started")
        try:
            self._thread.join(self.seconds + 70)
            if self._error is not None:
                raise self._error
            received = self._sink.communicate(timeout=30)[0].decode().strip()
            return self._sent or "", received
        finally:
            self.lab.stop(self._sink, timeout=2)


def one_way_udp(lab: Lab, src, dst, seconds: float, *, interval: float = 0.05, port: int = 5003) -> None:
    """Send small UDP datagrams host src -> host dst (IPv4) for ``seconds``, to a socket that
    only reads, so nothing (not even an ICMP port unreachable) comes back: only the receiving
    gateway sees inbound ESP, and the sending side's gateway must check liveness itself."""
    sink = lab.spawn(dst, sys.executable, "-c",
                     "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                     f"s.bind(('0.0.0.0',{port}))\nprint('listening',flush=True)\n"
                     "while True: s.recv(2048)\n", stdout=subprocess.PIPE)
    try:
        assert sink.stdout is not None  # stdout=PIPE
        if sink.stdout.readline().strip() != b"listening":
            raise LabError("UDP sink did not start")
        code = ("import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                f"end=time.monotonic()+{seconds}\n"
                f"while time.monotonic()<end:\n s.sendto(b'x'*32,('{dst.addr4}',{port}));time.sleep({interval})\n")
        lab.run(src, sys.executable, "-c", code, timeout=seconds + 10)
    finally:
        lab.stop(sink, timeout=2)


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])


# --- the two ends of a paced transfer, run in the host namespaces: python -m tunnel.lab.interop ---
# (the receiving end is the same as tunnel.lab.espgw's)
def _source(host: str, port: int, seconds: float, rate: int) -> None:
    """Send counter-derived data at about ``rate`` bytes/s for ``seconds``; print 'BYTES SHA256'."""
    digest, total, block = hashlib.sha256(), 0, 1 << 14
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=30) as conn:
        while (elapsed := time.monotonic() - start) < seconds:
            if total > rate * elapsed:
                time.sleep(0.005)
                continue
            chunk = hashlib.sha512(total.to_bytes(8, "big")).digest() * (block // 64)
            conn.sendall(chunk)
            digest.update(chunk)
            total += len(chunk)
    print(total, digest.hexdigest(), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["sink"]:
        tcp_sink(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1:2] == ["source"]:
        _source(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit("usage: python -m tunnel.lab.interop sink BIND PORT | source HOST PORT SECONDS RATE")
