"""Events the IKE core hands to its user (the gateway daemon, or a test).

They carry what ``esp`` needs to install SAs: SPIs, the negotiated ESP transform by its esp/ name,
KEYMAT per direction in IKEv2 order, traffic selectors and lifetimes. Key material is kept out of
``repr`` so an event can be logged as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ike.config import TrafficSelector

Address = tuple[str, int]  # (IP address text, UDP port)


@dataclass(frozen=True, slots=True)
class IkeSaUp:
    name: str  # connection name
    unique_id: int
    local: Address
    remote: Address
    spi_i: bytes
    spi_r: bytes
    initiator: bool
    proposal: str  # strongSwan-style, e.g. "aes256gcm16-prfsha256-ecp256"
    local_id: str
    remote_id: str
    nat_local: bool  # we are behind a NAT
    nat_remote: bool  # the peer is behind a NAT
    rekeyed_from: int | None = None  # unique_id of the IKE SA this one replaces


@dataclass(frozen=True, slots=True)
class IkeSaDown:
    name: str
    unique_id: int
    reason: str  # "deleted by peer", "deleted", "dead peer", "rekeyed", "auth failed", ...


@dataclass(frozen=True, slots=True)
class IkeSaMoved:
    """The IKE SA's outer addresses changed (MOBIKE, a new NAT mapping): ESP of its CHILD SAs
    (``child_spis``, inbound) now goes from ``local`` to ``remote``."""

    name: str
    unique_id: int
    local: Address
    remote: Address
    encap: bool
    nat_local: bool
    child_spis: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ChildSaUp:
    """A CHILD SA pair to install: inbound (our SPI) and outbound (the peer's SPI)."""

    ike_name: str
    ike_unique_id: int
    child_name: str
    unique_id: int
    inbound_spi: int  # SPI we chose; the peer sends with it
    outbound_spi: int  # SPI the peer chose; we send with it
    esp_transform: str  # esp/ name, e.g. "aes256gcm16", "aes128-sha256"
    esn: bool
    mode: str  # "tunnel"
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    local: Address  # outer addresses; port 4500 on either side means ESP-in-UDP when encap
    remote: Address
    encap: bool  # ESP in UDP (RFC 3948): NAT detected or forced
    rekey_time: float  # seconds from now until this side starts a rekey (0 = never)
    life_time: float  # seconds from now until the SA is deleted (hard)
    replay_window: int
    tfc_padding: int
    proposal: str  # strongSwan-style ESP proposal, e.g. "aes256gcm16-esn"
    inbound_keymat: bytes = field(repr=False)
    outbound_keymat: bytes = field(repr=False)
    rekeyed_from: int | None = None  # inbound SPI of the CHILD SA this one replaces


@dataclass(frozen=True, slots=True)
class ChildSaDown:
    ike_name: str
    child_name: str
    unique_id: int
    inbound_spi: int
    outbound_spi: int
    reason: str  # "rekeyed", "deleted by peer", "deleted", "expired", "ike down"


@dataclass(frozen=True, slots=True)
class NegotiationFailed:
    """A clean failure, also sent or received as a notify (RFC 7296 s3.10.1)."""

    name: str  # connection name, or "" when no connection matched
    stage: str  # "IKE_SA_INIT", "IKE_AUTH", "CREATE_CHILD_SA"
    notify: str  # "NO_PROPOSAL_CHOSEN", "AUTHENTICATION_FAILED", "TS_UNACCEPTABLE", ...
    message: str  # human-readable, never containing key material
    child_name: str | None = None
