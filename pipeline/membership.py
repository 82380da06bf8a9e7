"""Static group membership: a supervised child's stable group instance id.

A supervisor (``adstream worker ROLE --processes N``) tells child ``i`` its index in
``ADSTREAM_CHILD_INDEX``; the child's consumers then join their group as instance
``<group>-<host>-<i>`` (Kafka's ``group.instance.id``, KIP-345). A child that crashed and
was restarted under the same id takes its partitions back without a rebalance of the other
members, as long as it returns within ``kafka.session_timeout_ms``; a process that is not a
supervised child has no stable index and joins as an ordinary (dynamic) member.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

CHILD_INDEX_ENV = "ADSTREAM_CHILD_INDEX"


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
