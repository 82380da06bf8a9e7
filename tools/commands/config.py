"""``adstream config``: the effective settings, or the reference of every setting."""

from __future__ import annotations

import argparse

from tools.commands.settings import settings
from workers.settings import Settings


def cmd_config(args: argparse.Namespace) -> int:
    from pipeline.config import reference_markdown, to_toml

    s = settings(args)
    if args.reference:
        print(reference_markdown(Settings))
        return 0
    print(to_toml(s, masked=True))  # secrets that are set show as "***"
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    config = sub.add_parser("config", parents=[common],
                            help="print the effective settings (or --reference: every setting)")
    config.add_argument("--reference", action="store_true",
                        help="a Markdown table of every setting, default and env variable")
    config.set_defaults(func=cmd_config)
