"""A plan's command-line flags, declared once on its dataclass fields.

``flag(10.0, "seconds per step", gt=0)`` is a ``dataclasses.field`` whose metadata holds a
:class:`Flag`: the option's name, help text and the bounds its values must keep (as
:func:`pipeline.setting_rules.setting` does for settings). :func:`add_flags` makes the argparse
options from those fields, :func:`from_args` builds the plan from the parsed options, and
:func:`check_bounds` (called by the plan's ``__post_init__``) refuses a value out of bounds in
one line that names the flag, whether the plan came from the command line or from code.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
from dataclasses import dataclass
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


@dataclass(frozen=True)
class Flag:
    """One plan field's option: its name, help and the values it allows."""

    help: str | None = None
    name: str = ""  # "--step-duration"; empty: the field's name with dashes
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    le: float | None = None  # value <= le
    lt: float | None = None  # value < lt
    unit: str = ""  # said after the bound: "--timeout must be > 0 seconds, got 0"

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` ("must be > 0, got -1"), or None."""
        if value is None or isinstance(value, bool):
            return None
        if self.choices:
            return None if value in self.choices else f"must be one of {', '.join(self.choices)}"
        ok = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
              and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        return None if ok else f"must be {self._bounds()}{self.unit}, got {_shown(value)}"

    def _bounds(self) -> str:
        low = self.ge if self.ge is not None else self.gt
        if self.gt is not None and self.lt is not None:
            return f"between {_shown(self.gt)} and {_shown(self.lt)}"
        if low is not None and self.le is not None:
            return f"in {'[' if self.ge is not None else '('}{_shown(low)}, {_shown(self.le)}]"
        if self.ge is not None:
            return f"≥ {_shown(self.ge)}"
        if self.gt is not None:
            return f"> {_shown(self.gt)}"
        if self.le is not None:
            return f"≤ {_shown(self.le)}"
        return f"< {_shown(self.lt)}"


def _shown(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def flag(default: Any, help: str | None = None, *, name: str = "",
         metavar: str | None = None, choices: tuple[str, ...] = (), ge: float | None = None,
         gt: float | None = None, le: float | None = None, lt: float | None = None,
         unit: str = "") -> Any:
    """A dataclass field with ``default`` whose option is described by a :class:`Flag`."""
    spec = Flag(help, name, metavar, choices, ge, gt, le, lt, unit)
    return dataclasses.field(default=default, metadata={"flag": spec})


def _flags(cls: type[Any]) -> list[tuple[dataclasses.Field[Any], Flag]]:
    return [(f, f.metadata["flag"]) for f in dataclasses.fields(cls) if "flag" in f.metadata]


def option(field: dataclasses.Field[Any], spec: Flag) -> str:
    """The option of ``field``: "--step-duration"."""
    return spec.name or "--" + field.name.replace("_", "-")


def _dest(field: dataclasses.Field[Any], spec: Flag) -> str:
    return option(field, spec).removeprefix("--").replace("-", "_")


def check_bounds(plan: Any) -> None:
    """Raise ValueError naming the first flag of ``plan`` whose value is out of bounds."""
    for field, spec in _flags(type(plan)):
        problem = spec.problem(getattr(plan, field.name))
        if problem:
            raise ValueError(f"{option(field, spec)} {problem}")


def _value_type(hint: Any) -> Any:
    if get_origin(hint) in (Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
    return hint


def add_flags(parser: argparse.ArgumentParser, cls: type[Any], *names: str,
              **overrides: Any) -> None:
    """Add the options of ``cls``'s fields ``names`` (all its flags when none are named), in
    field order; ``overrides`` replace argparse arguments of a single named field (a
    command's own default or help)."""
    if overrides and len(names) != 1:
        raise ValueError("overrides apply to one named field")
    hints = get_type_hints(cls)
    for field, spec in _flags(cls):
        if names and field.name not in names:
            continue
        kwargs: dict[str, Any] = {"default": field.default, "help": spec.help}
        typ = _value_type(hints[field.name])
        if typ is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = typ
            if spec.metavar:
                kwargs["metavar"] = spec.metavar
            if spec.choices:
                kwargs["choices"] = list(spec.choices)
        kwargs.update(overrides)
        parser.add_argument(option(field, spec), **kwargs)


def from_args(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """``cls`` built from the parsed options of its flags (and ``given`` for the rest);
    raises ValueError when a value is out of bounds."""
    values = {f.name: getattr(args, _dest(f, spec)) for f, spec in _flags(cls)}
    return cls(**{**values, **given})
