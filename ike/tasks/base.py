"""The task interface the per-IKE-SA task manager (ike.ike_sa) runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ike.codec.constants import ExchangeType

if TYPE_CHECKING:
    from ike.ike_sa import IkeSa
    from ike.codec.message import Message
    from ike.codec.payloads import Payload

DONE = "done"
RETRY = "retry"  # build and send again (new message ID except in IKE_SA_INIT)


class Task:
    exchange: ExchangeType

    def build(self, sa: "IkeSa", now: float) -> "list[Payload] | None":
        """Payloads of the request, or None if the task no longer applies."""
        raise NotImplementedError

    def process(self, sa: "IkeSa", msg: "Message", raw: bytes, src, dst, now: float) -> str:
        """Handle the (decrypted) response; DONE or RETRY."""
        raise NotImplementedError

    def timed_out(self, sa: "IkeSa", now: float) -> None:
        """The peer never answered; the IKE SA is destroyed right after this."""


def uniform(rng, low: float, high: float) -> float:
    return low + (high - low) * int.from_bytes(rng(4), "big") / 2 ** 32
