"""What every task shares: the task interface, its outcomes, and the IKE SA as tasks see it.

A task builds one request and processes its answer; the responder functions beside it answer the
peer's requests. Neither calls up into the IKE SA layer or the endpoint: they work on an
``IkeSaContext`` (the IKE SA provides it, structurally) and report how an exchange ended with an
``Outcome`` the task manager acts on, as charon's tasks return SUCCESS/NEED_MORE/DESTROY_ME.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar
from collections.abc import Callable, Sequence

from ike.codec.constants import ExchangeType
from ike.codec.ids import Identity
from ike.codec.message import Message
from ike.codec.payloads import Payload, Proposal
from ike.config import ConnectionConfig
from ike.crypto.keys import IkeKeys
from ike.crypto.proposals import Negotiated
from ike.events import Address, IkeSaUp
from ike.pools import AddressPool, IPAddress
from ike.tasks.child_sa import ChildSa
from ike.tasks.states import IkeState

if TYPE_CHECKING:  # the task modules import this one
    from ike.tasks.followup_ke import FollowupResponder
    from ike.tasks.ike_intermediate import Intermediate

Rng = Callable[[int], bytes]


class Step(Enum):
    DONE = "done"  # the exchange is over
    RETRY = "retry"  # build and send again (message ID 0 again in IKE_SA_INIT)
    POSTPONE = "postpone"  # TEMPORARY_FAILURE: run a fresh copy (``again()``) a little later
    DESTROY = "destroy"  # the IKE SA ends, for ``reason``


@dataclass(frozen=True, slots=True)
class Outcome:
    step: Step
    reason: str = ""


DONE = Outcome(Step.DONE)
RETRY = Outcome(Step.RETRY)
POSTPONE = Outcome(Step.POSTPONE)


def destroy(reason: str) -> Outcome:
    return Outcome(Step.DESTROY, reason)


class IkeSaContext(Protocol):
    """The IKE SA as tasks operate on it (``ike.sa.ike_sa.IkeSa`` provides all of it)."""

    config: ConnectionConfig
    candidates: Sequence[ConnectionConfig]
    initiator: bool
    local: Address
    remote: Address
    spi_i: bytes
    spi_r: bytes
    unique_id: int
    state: IkeState
    neg: Negotiated | None
    keys: IkeKeys | None
    ni: bytes
    nr: bytes
    init_request: bytes
    init_response: bytes
    local_id: Identity | None
    remote_id: Identity | None
    auth_methods: tuple[str, str]
    nat_local: bool
    nat_remote: bool
    peer_fragmentation: bool
    proposal_name: str
    children: dict[int, ChildSa]
    peer_deleted_spis: set[int] | frozenset[int]
    delete_after_response: str | None
    silent: bool
    intermediate: Intermediate | None  # RFC 9370 additional key exchanges until IKE_AUTH
    followup: FollowupResponder | None  # the peer's CREATE_CHILD_SA awaiting IKE_FOLLOWUP_KE
    local_vips: tuple[IPAddress, ...]  # our virtual IPs (client)
    remote_vips: tuple[tuple[str, IPAddress], ...]  # (pool, address) lent to the peer (gateway)
    # MOBIKE (ike.tasks.ike_mobike): negotiated, the peer's additional addresses, the last NAT
    # detection hash of our address the peer sent, and (source, destination) of the request in hand
    mobike: bool
    peer_addresses: tuple[str, ...]
    nat_mapping: bytes | None
    request_addresses: tuple[Address, Address]

    @property
    def name(self) -> str: ...
    @property
    def established(self) -> bool: ...
    @property
    def rng(self) -> Rng: ...
    @property
    def active_task(self) -> Task | None: ...

    def state_to(self, new: IkeState) -> None: ...
    def log(self, event: str, **fields: object) -> None: ...
    def emit(self, event: object) -> None: ...
    def install_keys(self, neg: Negotiated, keys: IkeKeys) -> None: ...
    def set_proposal(self, chosen: Proposal) -> None: ...
    def set_established(self, now: float) -> None: ...
    def ike_up_event(self) -> IkeSaUp: ...
    def auth_done(self) -> None: ...
    def add_child(self, child: ChildSa) -> None: ...
    def remove_child(self, child: ChildSa, reason: str) -> None: ...
    def child_by_outbound(self, spi: int) -> ChildSa | None: ...
    def queue_task(self, task: Task, now: float, first: bool = False) -> None: ...
    def queue_next(self, task: Task) -> None: ...
    def send_once(self, exchange: ExchangeType, payloads: list[Payload]) -> None: ...
    def new_ike_spi(self) -> bytes: ...
    def new_child_spi(self) -> int: ...
    def next_unique_id(self) -> int: ...
    def first_contact(self) -> bool: ...
    def has_duplicates(self) -> bool: ...
    def replace_duplicates(self) -> None: ...
    def rekeyed_sa(self, *, initiator: bool, spi_i: bytes, spi_r: bytes, ni: bytes, nr: bytes,
                   chosen: Proposal, neg: Negotiated, keys: IkeKeys, now: float) -> IkeSaContext: ...
    def hand_over(self, new: IkeSaContext, now: float) -> None: ...
    def mark_redundant(self, now: float) -> None: ...
    def finish_colliding_rekey(self, now: float) -> None: ...
    def drop_successor(self) -> None: ...
    def pool(self, name: str) -> AddressPool | None: ...
    def take_over_leases(self, now: float) -> None: ...
    def count_drop(self, reason: str) -> None: ...
    def addresses_moved(self, now: float) -> None: ...


class Task:
    """One exchange we initiate: ``build`` its request, ``process`` the answer."""

    exchange: ClassVar[ExchangeType]
    moves_on_ike_rekey: ClassVar[bool] = False  # CHILD SA work follows the CHILD SAs to a rekeyed IKE SA

    def build(self, sa: IkeSaContext, now: float) -> list[Payload] | None:
        """Payloads of the request, or None if the task no longer applies."""
        raise NotImplementedError

    def process(self, sa: IkeSaContext, msg: Message, raw: bytes, src: Address, dst: Address,
                now: float) -> Outcome:
        """Handle the (decrypted) response."""
        raise NotImplementedError

    def timed_out(self, sa: IkeSaContext, now: float) -> Outcome:
        """The peer never answered: by default the IKE SA ends as a dead peer."""
        return destroy("dead peer")

    def again(self) -> Task:
        """A fresh copy to run later (POSTPONE)."""
        return self

    def collided_on(self, child: ChildSa) -> bool:
        """Whether this is our rekey of ``child`` and the peer's rekey of it created a successor."""
        return False


_SHARED: dict[object, object] = {}
_SHARED_MAX = 1024  # distinct algorithm choices and identities are few; the bound only stops a slow leak

T = TypeVar("T")


def shared(key: object, value: T) -> T:
    """The first value stored under ``key`` (equal immutable values become one object: a gateway
    with thousands of SAs keeps one copy of each proposal, identity and address)."""
    if len(_SHARED) >= _SHARED_MAX:
        _SHARED.clear()
    return _SHARED.setdefault(key, value)  # type: ignore[return-value]


def jitter(rng: Rng) -> float:
    """A random fraction in [0, 1] (2 bytes: lifetimes and retry delays need no finer grain)."""
    return int.from_bytes(rng(2), "big") / 65535.0


def uniform(rng: Rng, low: float, high: float) -> float:
    return low + (high - low) * int.from_bytes(rng(4), "big") / 2 ** 32
