"""The tunnels compared: which gateway program runs on gwA and gwB, and how ESP travels.

``tunnel_up(lab, setup, esp)`` brings one tunnel up in a running Lab and yields the gateway
processes' PIDs (for CPU time); leaving the block stops both gateways, so the next setup starts
from a clean lab. gwA always initiates (strongSwan: ``swanctl --initiate``; espgw: a trap policy
and a warm-up ping), gwB responds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from dataclasses import dataclass
from collections.abc import Iterator

from tunnel.lab.configs import site_to_site
from tunnel.lab.espgw import EspgwGateway, GatewaySettings, wait_until
from tunnel.lab.netns import Lab, LabError
from tunnel.lab.strongswan import StrongSwan

IKE_PROPOSALS = {"aes256gcm16": "aes256gcm16-prfsha256-ecp256",
                 "chacha20poly1305": "chacha20poly1305-prfsha256-x25519"}
ESP_SUITES = tuple(IKE_PROPOSALS)
TUNNEL_MTU = 1400  # espgw's TUN MTU; strongSwan's libipsec TUN (ipsec0) also defaults to 1400
# strongSwan 6.0's raw ESP socket drops under load with the default receive buffer; give it
# 4 MB as the CEO's baseline did (BOOST_RMEM=1), so it is measured at its best
SSWAN6_RMEM = 4 << 20


@dataclass(frozen=True)
class Setup:
    name: str
    gw_a: str  # "espgw" | "sswan6.0" | "sswan5.9" | "none"
    gw_b: str
    encap: str  # "raw" (IP protocol 50) | "udp" (ESP in UDP 4500) | "none"
    label: str

    @property
    def gateways(self) -> tuple[str, str]:
        return self.gw_a, self.gw_b


SETUPS = [
    Setup("plain", "none", "none", "none", "plain forwarding"),
    Setup("sswan6-raw", "sswan6.0", "sswan6.0", "raw", "strongSwan 6.0 <-> 6.0, raw ESP"),
    Setup("sswan59-udp", "sswan5.9", "sswan5.9", "udp", "strongSwan 5.9.8 <-> 5.9.8, ESP-in-UDP"),
    Setup("espgw-raw", "espgw", "espgw", "raw", "espgw <-> espgw, raw ESP"),
    Setup("espgw-udp", "espgw", "espgw", "udp", "espgw <-> espgw, ESP-in-UDP"),
    Setup("espgw-sswan6-raw", "espgw", "sswan6.0", "raw", "espgw -> strongSwan 6.0, raw ESP"),
    Setup("espgw-sswan59-udp", "espgw", "sswan5.9", "udp", "espgw -> strongSwan 5.9.8, ESP-in-UDP"),
]
BY_NAME = {s.name: s for s in SETUPS}


def lab_prefix() -> str:
    """Namespace prefix of the benchmark's labs ("bn..."), apart from the test suite's ("eg...")."""
    return "bn" + secrets.token_hex(3)


def _espgw(lab: Lab, node, conn, encap: str, name: str) -> EspgwGateway:
    settings = GatewaySettings(esp_encap=encap, mtu=TUNNEL_MTU, log_level="warning")
    return EspgwGateway(lab, node, [conn], dataclasses.replace(settings), name=f"bench-{name}").start()


@contextlib.contextmanager
def tunnel_up(lab: Lab, setup: Setup, esp: str) -> Iterator[dict[str, int]]:
    """Bring the tunnel up; yields {"gwA": pid, "gwB": pid} (empty for plain forwarding)."""
    if setup.encap == "none":
        with lab.plain_routing():
            yield {}
        return
    conns = {side: site_to_site(lab, side, proposals=[IKE_PROPOSALS[esp]], esp_proposals=[esp],
                                ipv6_ts=False) for side in ("A", "B")}
    for child in conns["A"].children:
        child.start_action = "trap" if setup.gw_a == "espgw" else "none"
    with contextlib.ExitStack() as stack:
        procs: dict[str, object] = {}
        # the responder first, so the initiator's first message finds it listening
        for role, side, kind in (("gwB", "B", setup.gw_b), ("gwA", "A", setup.gw_a)):
            node = getattr(lab, role)
            if kind == "espgw":
                gw = _espgw(lab, node, conns[side], setup.encap, role)
                stack.callback(gw.stop)
            else:
                version = kind.removeprefix("sswan")
                gw = StrongSwan(lab, node, version, [conns[side]],
                                rmem_default=SSWAN6_RMEM if version == "6.0" else None).start()
                stack.callback(gw.stop)
            procs[role] = gw
        a = procs["gwA"]
        if isinstance(a, StrongSwan):
            a.initiate(child="net")
        else:
            lab.ping(lab.hostA, lab.hostB.addr4, count=1, wait=3)  # the trap starts IKE
            wait_until(a.children, 15, "espgw on gwA to install its CHILD SA", interval=0.1)
        if not lab.ping(lab.hostA, lab.hostB.addr4, count=3, interval=0.1, wait=2).ok:
            raise LabError(f"{setup.name}/{esp}: tunnel up but hostA cannot ping hostB")
        yield {role: _pid(gw) for role, gw in procs.items()}


def _pid(gw) -> int:
    if isinstance(gw, StrongSwan):
        return gw.pid
    return gw.proc.pid
