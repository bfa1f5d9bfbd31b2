"""What IKE SAs hand up during one entry into the endpoint, in order.

SAs never call the endpoint: they append datagrams, public events (``ike.events``) and SA-level
notes (below) to the endpoint's one ``Outbox``; after each entry (a datagram, a timer, a command)
the endpoint reads them and applies its policy: indexes, restarts, replacing duplicates. So a
tear-down never runs policy from inside the SA being torn down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ike.config import ChildConfig
from ike.events import Address

if TYPE_CHECKING:  # annotations only: the IKE SA module imports this one
    from ike.sa.ike_sa import IkeSa


@dataclass(frozen=True, slots=True)
class Note:
    """Something about ``sa`` the endpoint must act on."""

    sa: IkeSa


class Registered(Note):
    """A new IKE SA from a rekey: to be filed by its SPI (and as established)."""

    __slots__ = ()


class Established(Note):
    """IKE_AUTH is done: file the SA by name and peer identity, drop its half-open entry."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Gone(Note):
    """The SA ended for ``reason``; ``was_up``: it had been established."""

    reason: str
    was_up: bool
    connecting_initiator: bool  # an initiator that never got up: keyingtries may retry


@dataclass(frozen=True, slots=True)
class ChildAdded(Note):
    spi: int


@dataclass(frozen=True, slots=True)
class ChildRemoved(Note):
    spi: int
    config: ChildConfig
    reason: str


@dataclass(frozen=True, slots=True)
class ChildrenMoved(Note):
    """CHILD SAs (by inbound SPI) now belong to ``sa`` (an IKE rekey)."""

    spis: tuple[int, ...]


class ReplaceDuplicates(Note):
    """INITIAL_CONTACT or unique = replace: the other SAs with the peer's identity go."""

    __slots__ = ()


class Reauthenticate(Note):
    """reauth_time is up: a fresh IKE SA with the same CHILD SAs, then this one goes."""

    __slots__ = ()


class DropSuccessor(Note):
    """The IKE SA made by our answer to a rekey of ``sa`` was refused by the peer: it goes too."""

    __slots__ = ()


@dataclass(slots=True)
class Datagram:
    """IKE message bytes; for port 4500 the daemon adds/strips the non-ESP marker itself."""

    data: bytes
    src: Address
    dst: Address


@dataclass(slots=True)
class Outbox:
    datagrams: list[Datagram] = field(default_factory=list)
    items: list[object] = field(default_factory=list)  # events and notes, in the order they happened
    drops: dict[str, int] = field(default_factory=dict)
    touched: dict[IkeSa, None] = field(default_factory=dict)  # SAs whose deadlines may have moved
    # what happened how often, for the daemon's metrics: retransmits, dpd_alive, dpd_dead
    counts: dict[str, int] = field(default_factory=dict)

    def take(self) -> list[object]:
        items, self.items = self.items, []
        return items

    def count_drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
