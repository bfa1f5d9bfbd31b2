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
    stage: str  # "IKE_SA_INIT", "IKE_INTERMEDIATE", "IKE_AUTH", "CREATE_CHILD_SA"
    notify: str  # "NO_PROPOSAL_CHOSEN", "AUTHENTICATION_FAILED", "TS_UNACCEPTABLE", ...
    message: str  # human-readable, never containing key material
    child_name: str | None = None


@dataclass(frozen=True, slots=True)
class VirtualIpsAssigned:
    """Client side: the gateway's CFG_REPLY (RFC 7296 s2.19), for the daemon to put the addresses
    on its TUN and route through it. Addresses, DNS servers, subnets and NetBIOS name servers as
    text."""

    ike_name: str
    ike_unique_id: int
    vips: tuple[str, ...]
    dns: tuple[str, ...] = ()
    subnets: tuple[str, ...] = ()
    nbns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LeaseAssigned:
    """Gateway side: a pool lent ``address`` to the peer ``identity`` for this IKE SA."""

    ike_name: str
    ike_unique_id: int
    pool: str
    address: str
    identity: str


@dataclass(frozen=True, slots=True)
class LeaseReleased:
    """Gateway side: this IKE SA no longer uses ``address`` (the lease is offline, kept for the
    identity during the pool's grace time, unless another SA of it still holds it)."""

    ike_name: str
    ike_unique_id: int
    pool: str
    address: str
    identity: str


@dataclass(frozen=True, slots=True)
class AddressWanted:
    """A connection to initiate names its peer by a host name: the core does no DNS, so the user
    resolves ``host`` and goes on with ``IkeEndpoint.initiate_to(request, address, now)``, or gives
    up with ``IkeEndpoint.abandon(request)``. Emitted when initiating and again on each retry."""

    name: str  # connection name
    host: str
    attempt: int  # keyingtries: which connection attempt this is
    request: object = field(repr=False, compare=False)  # handed back as it is
