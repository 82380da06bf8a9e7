"""Collapse the client library's repeated connection errors: one line per broker and kind
every few seconds, with a count of what was left out.

With a broker down, aiokafka logs "Unable connect to node with id 1" from every
connection attempt of every client (hundreds of thousands of lines in a 15 s outage);
what an operator needs is that it is still failing, and how often.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 5.0


@dataclass
class _Seen:
    last_shown: float
    suppressed: int = 0


class CollapseRepeats(logging.Filter):
    """Passes the first warning/error of each (logger, message template, broker) and then
    at most one per ``window_s``, that one saying how many were suppressed since."""

    def __init__(self, prefix: str = "aiokafka", window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.prefix = prefix
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[tuple[str, str, str], _Seen] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not (
                record.name == self.prefix or record.name.startswith(self.prefix + ".")):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        broker = str(args[0]) if args else ""  # aiokafka names the node or host first
        key = (record.name, str(record.msg), broker)
        now = self.clock()
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = _Seen(now)
            return True
        if now - seen.last_shown < self.window_s:
            seen.suppressed += 1
            return False
        if seen.suppressed:
            record.msg = (f"{record.getMessage()} ({seen.suppressed} more like this in the "
                          f"last {now - seen.last_shown:.0f} s)")
            record.args = ()
        seen.last_shown, seen.suppressed = now, 0
        return True
