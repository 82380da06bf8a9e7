"""Hooks around the actor loop (after Dramatiq's middleware): metrics, tracing and the like
hang off these instead of living in the loop. Every hook is a no-op by default."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipeline.transport.base import TP, Outgoing, Record

if TYPE_CHECKING:
    from pipeline.actor import Actor


class Middleware:
    def on_start(self, actor: Actor) -> None:
        """The actor is about to consume."""

    def on_stop(self, actor: Actor) -> None:
        """The actor stopped consuming and committed."""

    def before_batch(self, actor: Actor, records: Sequence[Record]) -> None:
        """A fetch of one partition (``records``, in offset order) is handed to the handler."""

    def after_batch(self, actor: Actor, records: Sequence[Record], outputs: list[Outgoing],
                    errors: int, seconds: float) -> None:
        """The batch's outputs are acknowledged (``errors`` records were dead-lettered);
        records held for later (the aggregator's) settle on their own."""

    def on_send(self, actor: Actor, msgs: list[Outgoing]) -> None:
        """A handler produced ``msgs`` outside of a batch and Kafka acknowledged them."""

    def on_commit(self, actor: Actor, offsets: dict[TP, int]) -> None:
        """``offsets`` were committed."""

    def on_pause(self, actor: Actor, tps: set[TP]) -> None:
        """Partitions were paused for backpressure."""

    def on_resume(self, actor: Actor, tps: set[TP]) -> None:
        """Paused partitions were resumed."""

    def on_assigned(self, actor: Actor, tps: set[TP]) -> None: ...

    def on_revoked(self, actor: Actor, tps: set[TP]) -> None: ...
