"""Connection configuration as the IKE core sees it.

The tables mirror swanctl.conf (``connections.NAME`` with ``children.CHILD``) so a strongSwan user
recognises every field; ``tunnel.ops.config`` parses the TOML file into these objects. Proposal
strings stay in strongSwan's syntax and are parsed by ``ike.crypto.proposals``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ANY_ADDRS = frozenset({"%any", "%any4", "%any6"})  # swanctl.conf's wildcard addresses


def is_any_addr(addr: str) -> bool:
    """Whether a configured address is a wildcard (``%any``, ``%any4``, ``%any6``)."""
    return addr in ANY_ADDRS


def concrete_addrs(addrs: list[str]) -> list[str]:
    """The configured addresses that name a host (not a wildcard), in order."""
    return [a for a in addrs if a not in ANY_ADDRS]

# strongSwan's defaults (swanctl.conf(5))
DEFAULT_IKE_PROPOSALS = ("aes256gcm16-prfsha256-ecp256", "aes128-sha256-modp2048")
DEFAULT_ESP_PROPOSALS = ("aes256gcm16", "aes128-sha256")
DEFAULT_IKE_REKEY_TIME = 4 * 3600.0
DEFAULT_CHILD_REKEY_TIME = 3600.0


@dataclass(frozen=True)
class TrafficSelector:
    """One IKEv2 traffic selector (RFC 7296 s3.13.1): an address range, protocol and port range."""

    start_addr: IPAddress
    end_addr: IPAddress
    protocol: int = 0  # 0 = any
    start_port: int = 0
    end_port: int = 65535

    @classmethod
    def from_cidr(cls, text: str, protocol: int = 0, start_port: int = 0, end_port: int = 65535) -> TrafficSelector:
        net = ipaddress.ip_network(text, strict=False)
        return cls(net.network_address, net.broadcast_address, protocol, start_port, end_port)

    @property
    def version(self) -> int:
        return self.start_addr.version

    def contains_addr(self, addr: IPAddress) -> bool:
        # the versions are equal before addresses are compared
        return addr.version == self.start_addr.version and self.start_addr <= addr <= self.end_addr  # type: ignore[operator]

    def __str__(self) -> str:
        nets = list(ipaddress.summarize_address_range(self.start_addr, self.end_addr))
        addr = str(nets[0]) if len(nets) == 1 else f"{self.start_addr}..{self.end_addr}"
        if self.protocol == 0 and (self.start_port, self.end_port) == (0, 65535):
            return addr
        ports = "" if (self.start_port, self.end_port) == (0, 65535) else (
            f"/{self.start_port}" if self.start_port == self.end_port else f"/{self.start_port}-{self.end_port}")
        return f"{addr}[{self.protocol}{ports}]"


@dataclass
class ChildConfig:
    """``connections.NAME.children.CHILD``."""

    name: str
    local_ts: list[TrafficSelector]
    remote_ts: list[TrafficSelector]
    esp_proposals: list[str] = field(default_factory=lambda: list(DEFAULT_ESP_PROPOSALS))
    mode: str = "tunnel"
    start_action: str = "none"  # none | trap | start
    dpd_action: str = "clear"  # clear | trap | restart
    close_action: str = "none"
    rekey_time: float = DEFAULT_CHILD_REKEY_TIME
    life_time: float | None = None  # default: rekey_time * 1.1, as strongSwan
    rand_time: float | None = None  # default: life_time - rekey_time
    rekey_packets: int = 0  # 0 = off
    rekey_bytes: int = 0
    replay_window: int = 1024  # packets; strongSwan uses 32, a fast link wants more
    tfc_padding: int = 0
    # swanctl's ``dynamic`` selector: this side's virtual IP(s), else its outer address; resolved
    # per IKE SA (ike.tasks.ike_config), in addition to the subnets in local_ts/remote_ts
    local_dynamic: bool = False
    remote_dynamic: bool = False

    @property
    def effective_life_time(self) -> float:
        return self.life_time if self.life_time is not None else self.rekey_time * 1.1


@dataclass
class AuthConfig:
    """``local`` / ``remote`` sections: ``auth = "psk"`` or ``"pubkey"`` (certificates).

    For ``pubkey``, the local side carries its ``credential`` (certificate, key, intermediates) and
    the remote side the ``trust`` its peer's certificate must chain to. The IKE core sees only the
    monotonic ``now`` of its caller; ``clock_offset`` turns it into wall-clock (Unix) time for
    certificate validity, set by whoever picks the clock (``time.time() - time.monotonic()`` for
    the daemon).
    """

    auth: str = "psk"
    id: str | None = None  # None: the certificate's subject with pubkey, else the IP address (as strongSwan)
    # ike.crypto.certs.LocalCredential / TrustStore (typed loosely: this vocabulary sits below crypto)
    credential: Any = None
    trust: Any = None
    rsa_pss: bool = False  # swanctl's auth = rsa/pss: sign with RSASSA-PSS
    clock_offset: float = 0.0


@dataclass
class ConnectionConfig:
    """``connections.NAME``: one IKE SA with its CHILD SAs."""

    name: str
    local_addrs: list[str]
    remote_addrs: list[str]
    local: AuthConfig
    remote: AuthConfig
    psk: bytes = field(default=b"", repr=False)  # from secrets.ike-NAME
    children: list[ChildConfig] = field(default_factory=list)
    proposals: list[str] = field(default_factory=lambda: list(DEFAULT_IKE_PROPOSALS))
    version: int = 2
    local_port: int = 500
    remote_port: int = 500
    encap: bool = False  # force UDP encapsulation of ESP (swanctl: encap = yes)
    dpd_delay: float = 0.0  # 0 = no liveness checks
    dpd_timeout: float = 0.0  # IKEv2 uses the retransmission schedule
    rekey_time: float = DEFAULT_IKE_REKEY_TIME
    over_time: float | None = None
    reauth_time: float = 0.0
    fragmentation: str = "yes"  # yes | accept | force | no
    fragment_size: int = 1280  # bytes of the whole IP datagram, strongSwan's default for IPv4
    keyingtries: int = 1
    mobike: bool = True  # RFC 4555, on by default as in strongSwan (ike.tasks.ike_mobike)
    unique: str = "no"
    vips: list[str] = field(default_factory=list)  # virtual IPs to request: 0.0.0.0 / :: = any
    pools: list[str] = field(default_factory=list)  # names of the address pools to lend from

    def child(self, name: str) -> ChildConfig:
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(f"connection {self.name!r} has no child {name!r}")
