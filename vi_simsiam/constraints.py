"""What a configuration value may be: a type with a range, or one of a few choices.

Each constraint answers ``allows(value)``, says in words what it allows (``describe()``, for the
error message) and gives values it refuses (``refused_examples()``, for the test that walks the
table of vi_simsiam.config). Booleans are not integers here (``True`` is not a batch size), and a
real number must be finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _range_text(kind: str, low, high, low_open: bool, high_open: bool, optional: bool) -> str:
    """E.g. "an integer >= 1 (or unset)", "a finite number > 0 and < 1"."""
    def number(x) -> str:
        return f"{x:g}" if isinstance(x, float) else str(x)

    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {number(low)}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {number(high)}")
    return kind + (" " + " and ".join(bounds) if bounds else "") + (" (or unset)" if optional else "")


@dataclass(frozen=True)
class Integer:
    low: int | None = None
    high: int | None = None
    optional: bool = False  # None allowed ("torch's choice")

    def allows(self, value) -> bool:
        if value is None:
            return self.optional
        return _is_int(value) and (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def describe(self) -> str:
        return _range_text("an integer", self.low, self.high, False, False, self.optional)

    def refused_examples(self) -> list:
        examples: list[Any] = [2.5, True, "8"]
        if self.low is not None:
            examples.append(self.low - 1)
        if self.high is not None:
            examples.append(self.high + 1)
        if not self.optional:
            examples.append(None)
        return examples


@dataclass(frozen=True)
class Real:
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself refused
    high_open: bool = False
    optional: bool = False  # None allowed (a default decided elsewhere)

    def allows(self, value) -> bool:
        if value is None:
            return self.optional
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        return _range_text("a finite number", self.low, self.high, self.low_open, self.high_open, self.optional)

    def refused_examples(self) -> list:
        examples: list[Any] = [float("nan"), float("inf"), "0.1", True]
        if self.low is not None:
            examples.append(self.low if self.low_open else self.low - 1)
        if self.high is not None:
            examples.append(self.high if self.high_open else self.high + 1)
        if not self.optional:
            examples.append(None)
        return examples


@dataclass(frozen=True)
class Flag:
    def allows(self, value) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"

    def refused_examples(self) -> list:
        return ["yes", 1, None]


@dataclass(frozen=True)
class Text:
    """A string such as a path; ``optional``: None allowed."""

    optional: bool = True

    def allows(self, value) -> bool:
        return (value is None and self.optional) or (isinstance(value, str) and value != "")

    def describe(self) -> str:
        return "a non-empty string" + (" (or unset)" if self.optional else "")

    def refused_examples(self) -> list:
        return [5, ""] + ([] if self.optional else [None])


@dataclass(frozen=True)
class Choice:
    """One of ``options`` (a tuple, or a function giving it, for lists defined in modules that are
    slow to import)."""

    options: tuple | Callable[[], tuple]

    def values(self) -> tuple:
        return self.options() if callable(self.options) else self.options

    def allows(self, value) -> bool:
        return any(value == option and type(value) is type(option) for option in self.values())

    def describe(self) -> str:
        return "one of " + ", ".join(str(option) for option in self.values())

    def refused_examples(self) -> list:
        return ["not-a-choice", None]


Constraint = Integer | Real | Flag | Text | Choice
