"""Progress while conformers are embedded: conformers embedded of asked, and the time it has taken so far.

RDKit embeds a whole call at once and reports nothing meanwhile (a macrocycle's call
can take 40 s), so the bar moves when a call returns (:class:`ConformersEmbedded`, one
per molecule or per template share) and the elapsed time keeps counting in between:
the run is visibly working. On a terminal only; elsewhere the observer just adds up
the time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from templ_pipeline.core.events import ConformersEmbedded

__all__ = ["EmbeddingProgress", "embedding_progress"]


class EmbeddingProgress:
    """An observer of the embedding's events: advances the bar and adds up the seconds spent embedding."""

    def __init__(self, progress: Progress, asked: int) -> None:
        self._progress = progress
        self._task = progress.add_task("embedding", total=asked)
        self.seconds = 0.0

    def __call__(self, event: object) -> None:
        if isinstance(event, ConformersEmbedded):
            self.seconds += event.seconds
            self._progress.update(self._task, advance=event.embedded)
            if not self._progress.live.auto_refresh:  # no refresh thread: redrawn at each step instead
                self._progress.refresh()


@contextmanager
def embedding_progress(console: Console, label: str, asked: int,
                       start: Callable[[Progress], None]) -> Iterator[EmbeddingProgress]:
    """A transient bar ``label ━━━ 12/40 conformers embedded 0:00:07`` on ``console`` while the block runs,
    shown only on a terminal; ``start`` starts the display (the CLI's, which copes with no thread for it)."""
    progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("conformers embedded"),
                        TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal)
    start(progress)
    try:
        yield EmbeddingProgress(progress, asked)
    finally:
        progress.stop()
