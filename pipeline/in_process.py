"""``memory://`` names the in-process broker, which exists only inside the process that made it.

So only commands that run the roles *and* their clients in one process can use it (``adstream
demo``, ``adstream run``, ``adstream loadtest replay --with-workers``); every other command
refuses it in one line instead of failing later on topics that are not there.
"""

from __future__ import annotations

MEMORY_SCHEME = "memory://"
USERS = "`adstream demo`, `adstream run` and `adstream loadtest replay --with-workers`"


class InProcessOnly(Exception):
    """A command that talks to other processes was given the in-process broker."""


def is_in_process(bootstrap: str | None) -> bool:
    return bool(bootstrap) and str(bootstrap).startswith(MEMORY_SCHEME)


def refuse_in_process(bootstrap: str | None, command: str) -> None:
    """Raise :class:`InProcessOnly` when ``bootstrap`` is ``memory://…``."""
    if is_in_process(bootstrap):
        raise InProcessOnly(
            f"{command}: {bootstrap} is the in-process broker, which exists only inside one "
            f"process; only {USERS} can use it: "
            + ("add --with-workers to run the workers in this process, or give"
               if command == "adstream loadtest replay" else "give")
            + " a Kafka bootstrap (--bootstrap HOST:PORT)")
