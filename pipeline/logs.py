"""structlog set-up: JSON lines in production, readable lines on a terminal; the standard
logging of client libraries goes to stderr with aiokafka's repeated errors collapsed."""

from __future__ import annotations

import logging
import sys

import structlog

from pipeline.log_collapse import CollapseRepeats


def configure(fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog once per process; ``fmt`` is auto, json or console."""
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"log.format must be auto, json or console, not {fmt!r}")
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        raise ValueError(f"log.level {level!r} is not a logging level")
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if not console else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=sys.stderr)
    for handler in logging.getLogger().handlers:  # the client library's repeats, collapsed
        if not any(isinstance(f, CollapseRepeats) for f in handler.filters):
            handler.addFilter(CollapseRepeats())
