"""Each benchmark's goals as rows of one table: what is compared, the measured value, the goal, met or not.

A benchmark's ``run()`` returns its measurements with a ``"goals"`` list of :meth:`Goal.as_dict`
rows; ``benchmarks.run`` prints each benchmark's rows as it finishes and all of them in one table at
the end (stdout and ``bench_report.json``). A goal is met when the measured value compares with the
target as stated; a row without a target is reported, not judged.
"""

from __future__ import annotations

import operator
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class Comparison(StrEnum):
    """How the measured value must stand against the target."""

    AT_LEAST = ">="
    AT_MOST = "<="
    BELOW = "<"
    ABOVE = ">"


_TESTS: dict[Comparison, Callable[[float, float], bool]] = {
    Comparison.AT_LEAST: operator.ge, Comparison.AT_MOST: operator.le,
    Comparison.BELOW: operator.lt, Comparison.ABOVE: operator.gt,
}
COLUMNS = ("benchmark", "goal", "compared (equal work)", "measured", "target", "met")


@dataclass(frozen=True, slots=True)
class Goal:
    """One goal of one benchmark. ``unit`` follows the numbers: ``x`` for a ratio against the baseline."""

    name: str  # short, unique within its benchmark
    compared: str  # what is set against what, and why it is the same work
    measured: float | None  # None: the measurement did not happen
    comparison: Comparison | None = None  # None with ``target``: reported only
    target: float | None = None
    unit: str = "x"

    @property
    def met(self) -> bool | None:
        if self.measured is None or self.comparison is None or self.target is None:
            return None
        return _TESTS[self.comparison](self.measured, self.target)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "compared": self.compared, "measured": self.measured,
                "goal": _goal_text(self.comparison, self.target, self.unit), "unit": self.unit, "met": self.met}


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    text = f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:.0f}"
    return f"{text}{unit}" if unit == "x" else f"{text} {unit}".rstrip()


def _goal_text(comparison: Comparison | None, target: float | None, unit: str) -> str:
    return "none (reported)" if comparison is None or target is None else f"{comparison} {_number(target, unit)}"


def _met_text(met: object) -> str:
    return {True: "yes", False: "NO", None: "-"}.get(met, "-")  # type: ignore[call-overload]


def rows(benchmark: str, goals: Iterable[Mapping[str, object]]) -> list[tuple[str, ...]]:
    """Table rows (one per goal, as :data:`COLUMNS`) of one benchmark's ``"goals"`` list."""
    return [(benchmark, str(goal["name"]), str(goal["compared"]),
             _number(goal["measured"], str(goal["unit"])),  # type: ignore[arg-type]
             str(goal["goal"]), _met_text(goal["met"])) for goal in goals]


def table(lines: list[tuple[str, ...]], compared_width: int = 64) -> str:
    """:data:`COLUMNS` and ``lines`` as aligned plain text, the ``compared`` column wrapped at ``compared_width``."""
    wrapped: list[tuple[str, ...]] = [COLUMNS]
    for line in lines:
        parts = textwrap.wrap(line[2], compared_width) or [""]
        wrapped.append((*line[:2], parts[0], *line[3:]))
        wrapped.extend(("", "", part, "", "", "") for part in parts[1:])
    widths = [max(len(line[column]) for line in wrapped) for column in range(len(COLUMNS))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            for line in wrapped]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)
