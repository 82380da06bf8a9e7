"""The ads roles' settings of one command line (files, environment, ``--set``)."""

from __future__ import annotations

import argparse

from pipeline.cli import settings_from_args
from workers.settings import Settings


def settings(args: argparse.Namespace) -> Settings:
    return settings_from_args(Settings, args)
