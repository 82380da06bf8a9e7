"""The live progress line: rewritten in place on a terminal (rich), plain lines otherwise."""

from __future__ import annotations

import math
import sys
from types import TracebackType
from typing import Self, TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text

from loadtest.replay import Snapshot

MODES = ("auto", "rich", "plain", "off")


def line(s: Snapshot) -> str:
    def ms(x: float) -> str:
        return "-" if math.isnan(x) else f"{x:.1f}"

    return (f"{s.elapsed_s:6.1f}s {s.phase:<8} sent {s.sent}/{s.scheduled} "
            f"{s.send_rate:.0f}/s | answered {s.answered} {s.answer_rate:.0f}/s | "
            f"p50 {ms(s.p50_ms)} p99 {ms(s.p99_ms)} ms | in flight {s.outstanding} | "
            f"not ok {s.errors} | overdue {s.overdue}")


class Progress:
    """A progress sink; use as a context manager around the run."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None,
                 label: str = "", interval_s: float | None = None) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "rich" if self.stream.isatty() else "plain"
        if mode not in MODES:
            raise ValueError(f"--progress must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.label = label
        self._interval_s = interval_s
        self._live: Live | None = None

    @property
    def interval_s(self) -> float:
        if self._interval_s is not None:
            return self._interval_s
        return 0.25 if self.mode == "rich" else 1.0

    def __enter__(self) -> Self:
        if self.mode == "rich":
            self._live = Live(Text(""), console=Console(file=self.stream), auto_refresh=False,
                              transient=False)
            self._live.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __call__(self, s: Snapshot) -> None:
        text = (f"{self.label} " if self.label else "") + line(s)
        if self.mode == "off":
            return
        if self._live is not None:
            styled = Text(text, no_wrap=True, overflow="ellipsis")
            styled.highlight_regex(r"p99 [\d.]+ ms", "bold")
            self._live.update(styled, refresh=True)
        else:
            print(text, file=self.stream, flush=True)
