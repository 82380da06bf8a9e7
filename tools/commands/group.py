"""``adstream NAME COMMAND``: a group of commands under one name (topics, model, dlq, …)."""

from __future__ import annotations

import argparse


def command_group(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                  help: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The subcommands of ``adstream NAME``; the chosen one is ``args.NAME_command``."""
    group = sub.add_parser(name, help=help)
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")
