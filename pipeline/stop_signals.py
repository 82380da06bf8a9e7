"""What a SIGINT or SIGTERM means: the first asks for a clean stop, a later one forces it.

One stop can arrive several times at once: Ctrl-C in a terminal signals the whole process
group, so a supervised child hears it from the terminal and again from its supervisor, and
an orchestrator may send SIGTERM at the same moment. Signals within ``same_stop_s`` of the
first are that same stop; one that comes later means "stop now".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

SAME_STOP_S = 1.0


class Stop(Enum):
    NONE = "none"  # a repeat of the stop already under way
    CLEAN = "clean"  # drain, commit, exit 0
    FORCE = "force"  # exit now


class StopSignals:
    def __init__(self, same_stop_s: float = SAME_STOP_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.same_stop_s = same_stop_s
        self.clock = clock
        self.first: float | None = None
        self.forced = False

    def received(self) -> Stop:
        """Classify one SIGINT/SIGTERM just received."""
        now = self.clock()
        if self.first is None:
            self.first = now
            return Stop.CLEAN
        if self.forced or now - self.first < self.same_stop_s:
            return Stop.NONE
        self.forced = True
        return Stop.FORCE
