"""Static group membership: a supervised child's stable group instance id.

A supervisor (``adstream worker ROLE --processes N``) tells child ``i`` its index in
``ADSTREAM_CHILD_INDEX``; the child's consumers then join their group as instance
``<group>-<host>-<i>`` (Kafka's ``group.instance.id``, KIP-345). A child that crashed and
was restarted under the same id takes its partitions back without a rebalance of the other
members, as long as it returns within ``kafka.session_timeout_ms``; a process that is not a
supervised child has no stable index and joins as an ordinary (dynamic) member.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

import structlog

CHILD_INDEX_ENV = "ADSTREAM_CHILD_INDEX"
STANDBY = "standby"  # the child index of a standby until it takes over a member
STANDBY_FD_ENV = "ADSTREAM_STANDBY_FD"  # a standby's pipe: the index it takes over arrives there

log = structlog.get_logger("adstream.membership")
_claimed: asyncio.Future[bool] | None = None


async def claim(stop: asyncio.Event) -> bool:
    """Wait, in a standby (see ``pipeline.supervisor``), until the supervisor hands it a
    member's index, and become that member (``ADSTREAM_CHILD_INDEX``); True at once in any
    other process. False when ``stop`` is set first or the supervisor went away (the pipe
    closed): the standby then exits without joining. Every caller in the process shares
    the one answer."""
    global _claimed
    fd = os.environ.get(STANDBY_FD_ENV, "")
    if os.environ.get(CHILD_INDEX_ENV) != STANDBY or not fd.isdigit():
        return True
    loop = asyncio.get_running_loop()
    if _claimed is None:
        _claimed = loop.create_future()
        log.info("standby: loaded, waiting to take over a member")
        loop.add_reader(int(fd), _read_index, int(fd), _claimed, loop)
    claimed = _claimed
    waiter: asyncio.Future[bool] = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([claimed, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return claimed.done() and claimed.result()


def _read_index(fd: int, claimed: asyncio.Future[bool], loop: asyncio.AbstractEventLoop
                ) -> None:
    loop.remove_reader(fd)
    line = os.read(fd, 64).decode(errors="replace").strip()
    os.close(fd)
    if not line.isdigit():  # end of file: the supervisor stopped or died
        log.info("standby: the supervisor let it go; exiting")
        claimed.set_result(False)
        return
    os.environ[CHILD_INDEX_ENV] = line
    del os.environ[STANDBY_FD_ENV]
    log.info("standby: taking over member", index=int(line))
    claimed.set_result(True)


def instance_suffix(enabled: bool, prefix: str,
                    env: Mapping[str, str] | None = None) -> str | None:
    """``<prefix or host>-<child index>`` for a supervised child with static membership
    ``enabled``; None otherwise (dynamic membership)."""
    index = (os.environ if env is None else env).get(CHILD_INDEX_ENV, "")
    if not enabled or not index.isdigit():
        return None
    return f"{prefix or socket.gethostname()}-{int(index)}"


def group_instance_id(group_id: str, suffix: str | None) -> str | None:
    """The group instance id of a member of ``group_id`` (None: dynamic membership)."""
    return None if suffix is None else f"{group_id}-{suffix}"
