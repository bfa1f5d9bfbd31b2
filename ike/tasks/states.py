"""IKE SA and CHILD SA states and the one table of transitions each may take.

Every state change goes through ``advance``; a change the table does not list is a bug in espgw,
raised here as ``IllegalTransition`` (the endpoint turns it into a counted drop and a log line).
The states are ``StrEnum`` members, so status output and logs show the same words as before.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar


class IkeState(StrEnum):
    CONNECTING = "connecting"  # IKE_SA_INIT / IKE_AUTH under way
    ESTABLISHED = "established"
    REKEYED = "rekeyed"  # replaced by a rekeyed IKE SA; waits for its delete
    DELETING = "deleting"  # our delete is out
    DEAD = "dead"  # gone; nothing refers to it any more


class ChildState(StrEnum):
    INSTALLED = "installed"
    REKEYING = "rekeying"  # our rekey is out
    REKEYED = "rekeyed"  # a successor is up; deleted by whoever started the rekey
    REDUNDANT = "redundant"  # a rekey collision's loser: the side that made it deletes it
    DELETING = "deleting"  # our delete is out


IKE_TRANSITIONS: dict[IkeState, frozenset[IkeState]] = {
    IkeState.CONNECTING: frozenset({IkeState.ESTABLISHED, IkeState.DEAD}),
    IkeState.ESTABLISHED: frozenset({IkeState.REKEYED, IkeState.DELETING, IkeState.DEAD}),
    IkeState.REKEYED: frozenset({IkeState.DELETING, IkeState.DEAD}),
    IkeState.DELETING: frozenset({IkeState.DEAD}),
    IkeState.DEAD: frozenset(),
}

CHILD_TRANSITIONS: dict[ChildState, frozenset[ChildState]] = {
    ChildState.INSTALLED: frozenset({ChildState.REKEYING, ChildState.REKEYED, ChildState.REDUNDANT,
                                     ChildState.DELETING}),
    ChildState.REKEYING: frozenset({ChildState.INSTALLED, ChildState.REKEYED, ChildState.DELETING}),
    ChildState.REKEYED: frozenset({ChildState.DELETING}),
    ChildState.REDUNDANT: frozenset({ChildState.DELETING}),
    ChildState.DELETING: frozenset(),
}

# CHILD SAs that carry traffic and are rekeyed and expired as such
LIVE_CHILD_STATES = frozenset({ChildState.INSTALLED, ChildState.REKEYING})


class IllegalTransition(RuntimeError):
    """An SA was asked to change to a state its table does not allow from where it is."""


S = TypeVar("S", IkeState, ChildState)


def advance(current: S, new: S, table: dict[S, frozenset[S]], what: str) -> S:
    """``new`` if the table allows ``current`` -> ``new``, else IllegalTransition."""
    if new not in table[current]:
        raise IllegalTransition(f"{what}: {current} -> {new} is not a legal transition")
    return new
