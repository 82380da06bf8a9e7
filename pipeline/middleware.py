"""Hooks around the actor loop (after Dramatiq's middleware): metrics, tracing and the like
hang off these instead of living in the loop. Every hook is a no-op by default."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.transport.base import TP, Outgoing, Record

if TYPE_CHECKING:
    from pipeline.actor import Actor


class Middleware:
    def on_start(self, actor: Actor) -> None:
        """The actor is about to consume."""

    def on_stop(self, actor: Actor) -> None:
        """The actor stopped consuming and committed."""

    def before_process(self, actor: Actor, record: Record) -> None:
        """``record`` was fetched and its work starts."""

    def after_process(self, actor: Actor, record: Record, outputs: list[Outgoing],
                      error: Exception | None, seconds: float) -> None:
        """``record``'s outputs are acknowledged (``error`` set if it was dead-lettered)."""

    def on_emit(self, actor: Actor, msg: Outgoing) -> None:
        """A handler produced ``msg`` outside of ``handle`` and Kafka acknowledged it."""

    def on_commit(self, actor: Actor, offsets: dict[TP, int]) -> None:
        """``offsets`` were committed."""

    def on_pause(self, actor: Actor, tps: set[TP]) -> None:
        """Partitions were paused for backpressure."""

    def on_resume(self, actor: Actor, tps: set[TP]) -> None:
        """Paused partitions were resumed."""

    def on_assigned(self, actor: Actor, tps: set[TP]) -> None: ...

    def on_revoked(self, actor: Actor, tps: set[TP]) -> None: ...
