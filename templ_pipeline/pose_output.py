"""Where ``--output`` sends poses: an SDF file, a gzip-compressed SDF file, or standard output (``-``).

The target is parsed and checked before any work (a suffix the tool cannot write,
or an existing entry that is not a regular file, is an ``InputError`` naming the
option), and written once at the end, only when there is something to write: a
failed run leaves an earlier good file as it was. Files go through
:func:`templ_pipeline.safe_files.write_atomically` (regular files only, atomic
rename, mode from the umask).
"""

from __future__ import annotations

import gzip
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from templ_pipeline.errors import InputError
from templ_pipeline.pose_records import PoseRecord, sd_text
from templ_pipeline.safe_files import check_target, write_atomically

__all__ = ["STDOUT", "PoseFormat", "PoseRecord", "PoseTarget", "render_sdf"]

#: The ``--output`` value for standard output.
STDOUT = "-"


class PoseFormat(StrEnum):
    """The file suffixes poses can be written as (case-insensitive)."""

    SDF = ".sdf"
    SDF_GZ = ".sdf.gz"


@dataclass(frozen=True, slots=True)
class PoseTarget:
    """A checked ``--output``: a file (``path``, gzip or not) or standard output (``path`` None)."""

    path: Path | None
    compressed: bool = False
    option: str = "--output"

    @classmethod
    def parse(cls, value: str | Path, option: str = "--output") -> PoseTarget:
        """The target ``value`` names; ``InputError`` naming ``option`` when it cannot be written here."""
        if str(value) == STDOUT:
            return cls(None, False, option)
        path = Path(value)
        name = path.name.lower()
        if name.endswith(PoseFormat.SDF_GZ):
            compressed = True
        elif name.endswith(PoseFormat.SDF):
            compressed = False
        else:
            raise InputError(f"{option} {path}: cannot write this format; use a name ending in "
                             f"{' or '.join(PoseFormat)}, or - for standard output")
        return cls(check_target(path, option), compressed, option)

    @property
    def to_stdout(self) -> bool:
        return self.path is None

    def __str__(self) -> str:
        return STDOUT if self.path is None else str(self.path)

    def write(self, records: Iterable[PoseRecord]) -> int:
        """Write ``records``; the count. The file is replaced atomically; stdout gets the SDF text."""
        data, count = render_sdf(records)
        if self.path is None:
            sys.stdout.flush()  # anything printed before goes first
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return count
        if self.compressed:
            data = gzip.compress(data, mtime=0)  # mtime 0: the same poses give the same bytes
        write_atomically(self.path, data, self.option)
        return count


def render_sdf(records: Iterable[PoseRecord]) -> tuple[bytes, int]:
    """The SDF text of ``records`` (UTF-8, :func:`~templ_pipeline.pose_records.sd_text`) and their count."""
    listed = list(records)
    return sd_text(listed).encode(), len(listed)
