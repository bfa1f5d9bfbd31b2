"""Two IkeEndpoints in memory for the IKE harnesses: configs, a seeded rng and a message pump.

Kept apart from tests/ike/harness.py so that the harnesses depend only on ike/ (and are
instrumented as a unit); the timing model is the same: nothing moves unless pumped.
"""

from __future__ import annotations

import random

from ike.config import AuthConfig, ChildConfig, ConnectionConfig, TrafficSelector
from ike.endpoint import IkeEndpoint

INITIATOR_IP, RESPONDER_IP = "192.0.2.1", "198.51.100.2"
PSK = b"fuzzing-psk-not-a-secret-0123456789"
IKE_PROPOSAL = "aes128gcm16-prfsha256-x25519"  # cheapest key exchange: many handshakes per second
ESP_PROPOSAL = "aes128gcm16"


def seeded_rng(seed: int):
    return random.Random(seed).randbytes


def config(local: str, remote: str, local_ts: str, remote_ts: str, *, psk: bytes = PSK,
           ike: str = IKE_PROPOSAL, esp: str = ESP_PROPOSAL) -> ConnectionConfig:
    child = ChildConfig("net", [TrafficSelector.from_cidr(local_ts)], [TrafficSelector.from_cidr(remote_ts)],
                        esp_proposals=[esp], rekey_time=0.0, life_time=86400.0)
    return ConnectionConfig("site", [local], [remote], AuthConfig(), AuthConfig(), psk=psk,
                            children=[child], proposals=[ike], rekey_time=0.0)


def initiator_config(**kw) -> ConnectionConfig:
    return config(INITIATOR_IP, RESPONDER_IP, "10.1.0.0/16", "10.2.0.0/16", **kw)


def responder_config(**kw) -> ConnectionConfig:
    return config(RESPONDER_IP, INITIATOR_IP, "10.2.0.0/16", "10.1.0.0/16", **kw)


def endpoint(cfg: ConnectionConfig, seed: int, now: float = 0.0) -> IkeEndpoint:
    return IkeEndpoint([cfg], rng=seeded_rng(seed), now=now)


def pump(endpoints: dict[str, IkeEndpoint], now: float, *, on_deliver=None, max_rounds: int = 200) -> None:
    """Deliver datagrams between endpoints (by destination IP) until none are left.

    ``on_deliver(sender, datagram)`` sees every datagram before delivery.
    """
    for _ in range(max_rounds):
        moved = False
        for ep in endpoints.values():
            for d in ep.datagrams_to_send(now):
                if on_deliver is not None:
                    on_deliver(ep, d)
                target = endpoints.get(d.dst[0])
                if target is not None:
                    target.receive_datagram(d.data, d.src, d.dst, now)
                    moved = True
        if not moved:
            return
    raise AssertionError("endpoints kept exchanging messages")


def drain(ep: IkeEndpoint) -> list:
    out = []
    while (ev := ep.next_event()) is not None:
        out.append(ev)
    return out
