"""What values a setting allows, declared once on its dataclass field.

``setting(default, ge=0)`` is a ``dataclasses.field`` whose metadata holds a :class:`Rule`;
loading checks every value against it (``pipeline.config``) and the configuration
reference prints the same rule, so the two cannot disagree.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Check = Callable[[Any], "str | None"]  # a value -> None when fine, else what is wrong


@dataclass(frozen=True)
class Rule:
    """Bounds, allowed values and handling of one setting."""

    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    le: float | None = None  # value <= le
    choices: tuple[str, ...] = ()
    nonempty: bool = False
    secret: bool = False  # masked by `adstream config`, never logged
    check: Check | None = None  # a further check (e.g. against a client library)
    allowed_text: str = ""  # how the docs describe what `check` allows

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (a phrase: "must be >= 0"), or None."""
        if self.choices and value not in self.choices:
            shown = ", ".join(c if c else '"" (empty)' for c in self.choices)
            return f"must be one of {shown}"
        if self.nonempty and value in ("", None):
            return "must not be empty"
        if isinstance(value, int | float) and not isinstance(value, bool):
            if self.ge is not None and value < self.ge:
                return f"must be >= {_num(self.ge)}"
            if self.gt is not None and value <= self.gt:
                return f"must be > {_num(self.gt)}"
            if self.le is not None and value > self.le:
                return f"must be <= {_num(self.le)}"
        if self.check is not None:
            return self.check(value)
        return None

    def describe(self) -> str:
        """The allowed values for the configuration reference ("0 to 1", "none, gzip")."""
        if self.choices:
            return ", ".join(f"`{c}`" if c else '`""`' for c in self.choices)
        low = (f">= {_num(self.ge)}" if self.ge is not None
               else f"> {_num(self.gt)}" if self.gt is not None else "")
        high = f"<= {_num(self.le)}" if self.le is not None else ""
        parts = [p for p in (low, high) if p]
        if self.nonempty:
            parts.append("not empty")
        if self.allowed_text:
            parts.append(self.allowed_text)
        return ", ".join(parts)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def setting(default: Any, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, choices: tuple[str, ...] = (), nonempty: bool = False,
            secret: bool = False, check: Check | None = None, allowed_text: str = "") -> Any:
    """A dataclass field with ``default`` and the :class:`Rule` its values must follow."""
    rule = Rule(ge, gt, le, choices, nonempty, secret, check, allowed_text)
    meta = {"rule": rule}
    if isinstance(default, dict | list):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def rule_of(section_cls: type[Any], key: str) -> Rule:
    """The rule of ``section_cls.key`` (an empty one for a plain field)."""
    for f in dataclasses.fields(section_cls):
        if f.name == key:
            rule = f.metadata.get("rule")
            return rule if isinstance(rule, Rule) else Rule()
    raise KeyError(key)
