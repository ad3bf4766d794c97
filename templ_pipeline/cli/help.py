"""``--help`` that fits the terminal: click's plain formatter, with the options grouped under their panels.

typer's rich help draws the options as a table of seven columns, and at 80 columns it
cuts what does not fit (``--use-input-conform…``, ``<debug|info|warning|er``) and shows
``<bool>`` for every flag. click's formatter wraps the help text instead and never cuts
an option name or a choice (a long one moves the help to the next line), and flags take
no value to show. The ``rich_help_panel`` of an option names its section here, so the
help keeps the grouping (query preparation, template choice, telemetry).
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand

__all__ = ["SectionedCommand", "TemplTyper"]

OPTIONS = "Options"


class SectionedCommand(TyperCommand):
    """A command whose help lists its options by section: ``Options``, then each ``rich_help_panel``."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        sections: dict[str, list[tuple[str, str]]] = {OPTIONS: []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "rich_help_panel", None) or OPTIONS, []).append(record)
        for title, records in sections.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


class TemplTyper(typer.Typer):
    """``typer.Typer`` whose commands format their help with :class:`SectionedCommand` (plain, not rich)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(rich_markup_mode=None, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", SectionedCommand)
        return super().command(*args, **kwargs)
