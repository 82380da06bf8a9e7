"""``adstream`` commands for the ads roles, one module a group: :mod:`.topics`,
:mod:`.produce`, :mod:`.worker` (``worker`` and ``run``), :mod:`.demo`, :mod:`.model`,
:mod:`.config`. :func:`register` adds them in that order (the order ``adstream --help``
lists them)."""

from __future__ import annotations

import argparse

from tools.commands import config, demo, model, produce, topics, worker


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    for group in (topics, produce, worker, demo, model, config):
        group.register(sub, common)
