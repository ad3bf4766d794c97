"""A campaign's ranked hit list, ``hits.csv`` and ``hits.sdf``, rebuilt from ``scores.csv`` and ``poses.sdf``.

The list is made from the files, never from what a run holds in memory, so a
campaign finished over several runs (``--resume``) gets the list one run gives.

Ranking, the same whatever order queries finished in:

- a query is represented by its best row: the highest value of the metric as
  written (4 decimals), then the lowest ``isomer``, ``template_record`` and ``pose_rank``;
- queries are ranked by that value, best first; a tie goes to the query earlier in
  the input (``input_record``); ``rank`` counts from 1;
- queries with no pose (every row failed) follow, unranked (``rank`` empty), in
  input order, each with its first row: hits.csv names every query once.

``hits.csv`` is ``rank`` followed by the scores.csv columns, each row's text copied
as it is there (the same quoting and decimals). ``hits.sdf`` holds the pose of each
of the ``top`` best-ranked rows, in rank order, each with a ``rank`` property. Both
are written atomically (:func:`~templ_pipeline.safe_files.write_atomically`): a
reader sees the previous list or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import mmap
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from templ_pipeline.campaign.outputs import HIT_POSES_FILE, HITS_FILE, POSES_FILE, SCORES_FILE, PoseKey
from templ_pipeline.campaign.poses import with_properties
from templ_pipeline.core.vocabulary import Field
from templ_pipeline.errors import InputError
from templ_pipeline.safe_files import write_atomically

_TEMPLATE_RECORD, _POSE_RANK = (re.compile(rf"^>[^<\n]*<{name}>[^\n]*\n([^\r\n]*)", re.MULTILINE)
                                for name in (Field.TEMPLATE_RECORD, Field.POSE_RANK))
"""A pose's data items that name it, as :func:`~templ_pipeline.campaign.queries.sd_tags` reads them (one line)."""

DEFAULT_TOP = 100
"""Poses in hits.sdf by default: a shortlist a viewer opens at once (poses.sdf has them all)."""


@dataclass(frozen=True, slots=True)
class HitList:
    """What was written: queries ranked, queries without a pose, poses in hits.sdf."""

    ranked: int
    unranked: int
    poses: int


@dataclass(slots=True)
class _Hit:
    key: tuple  # the sort key: ranked by it, best first
    start: int  # where the row's text lies in scores.csv (bytes): it is copied from there, never held
    end: int
    posed: bool  # False: the query has no pose


def write_hits(directory: str | os.PathLike[str], metric: str, top: int | None = DEFAULT_TOP) -> HitList:
    """Rank the campaign in ``directory`` by ``metric``; write hits.csv and the ``top`` best poses (all with
    None) to hits.sdf.

    Each query's best row is kept as its sort key and where its text lies in scores.csv, and hits.csv
    is copied from there in rank order: holding every row's text took a million-query campaign's
    parent 1.1 GB more at its end.
    """
    directory = Path(directory)
    scores = directory / SCORES_FILE
    header, index, hits = _best_rows(scores, metric)
    ranked = sorted((hit for hit in hits if hit.posed), key=lambda hit: hit.key)
    unranked = sorted((hit for hit in hits if not hit.posed), key=lambda hit: hit.key)
    del hits
    shown = ranked if top is None else ranked[:top]
    title = io.StringIO()
    csv.writer(title, lineterminator="\n").writerow([Field.RANK, *header])
    with contextlib.ExitStack() as stack:
        try:
            data = stack.enter_context(_mapped(scores))
        except OSError as exc:
            raise InputError(f"{scores}: cannot read ({exc.strerror or exc})") from None
        wanted = [_pose_key(_row_text(data, hit), index) for hit in shown]
        write_atomically(directory / HITS_FILE, _blocks(_hit_lines(title.getvalue(), data, ranked, unranked)))
    records = _pose_texts(directory / POSES_FILE, wanted)
    poses = [with_properties(records[key], [(Field.RANK, rank)])
             for rank, key in enumerate(wanted, start=1) if key in records]
    write_atomically(directory / HIT_POSES_FILE, "".join(poses).encode("utf-8"))
    return HitList(len(ranked), len(unranked), len(poses))


@contextlib.contextmanager
def _mapped(path: Path) -> Iterator[mmap.mmap | bytes]:
    """The file read-only in memory (an empty file cannot be mapped: no bytes instead)."""
    with open(path, "rb") as handle:
        if not os.fstat(handle.fileno()).st_size:
            yield b""
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield data


def _row_text(data: mmap.mmap | bytes, hit: _Hit) -> bytes:
    text = data[hit.start:hit.end]
    return text if text.endswith(b"\n") else text + b"\n"


def _hit_lines(title: str, data: mmap.mmap | bytes, ranked: list[_Hit], unranked: list[_Hit]) -> Iterator[bytes]:
    """hits.csv: ``rank`` and the scores.csv columns, then each hit's rank and row as scores.csv has it."""
    yield title.encode("utf-8")
    for rank, hit in enumerate(ranked, start=1):
        yield b"%d," % rank
        yield _row_text(data, hit)
    for hit in unranked:
        yield b","
        yield _row_text(data, hit)


def _blocks(chunks: Iterator[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    """``chunks`` joined into blocks of about ``size`` bytes: one write per block, not per row."""
    block = bytearray()
    for chunk in chunks:
        block += chunk
        if len(block) >= size:
            yield bytes(block)
            block.clear()
    if block:
        yield bytes(block)


def _pose_key(text: bytes, index: dict[str, int]) -> PoseKey:
    """The pose a ranked row names: its query id, template record and pose rank."""
    row = next(csv.reader(io.StringIO(text.decode("utf-8"))))
    return row[index[Field.QUERY_ID]], row[index[Field.TEMPLATE_RECORD]], row[index[Field.POSE_RANK]] or "1"


def _best_rows(path: Path, metric: str) -> tuple[list[str], dict[str, int], list[_Hit]]:
    """The header of scores.csv, its columns' positions and each query's best row (its first row when none
    has a pose)."""
    best: dict[str, _Hit] = {}
    index: dict[str, int] = {}
    try:
        with open(path, "rb") as handle:
            rows = _raw_rows(path, handle)
            header, _, _ = next(rows, ([], 0, 0))
            index = {name: position for position, name in enumerate(header)}
            missing = [name for name in (Field.INPUT_ID, Field.INPUT_RECORD, Field.STATUS, metric)
                       if name not in index]
            if missing:
                raise InputError(f"{path}: not a campaign's scores.csv (no column {', '.join(missing)})")
            for row, start, end in rows:
                if len(row) != len(header):
                    continue
                hit = _hit(row, start, end, index, metric)
                kept = best.get(hit_id := row[index[Field.INPUT_ID]])
                if kept is None or (hit.posed and (not kept.posed or hit.key < kept.key)):
                    best[hit_id] = hit
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return header, index, list(best.values())


def _hit(row: list[str], start: int, end: int, index: dict[str, int], metric: str) -> _Hit:
    def number(name: str) -> int:
        value = row[index[name]] if name in index else ""
        return int(value) if value.lstrip("-").isdigit() else 0

    value = row[index[metric]]
    order = (number(Field.INPUT_RECORD), number(Field.ISOMER), number(Field.TEMPLATE_RECORD),
             number(Field.POSE_RANK))
    if row[index[Field.STATUS]] != "ok" or not value:
        return _Hit(order, start, end, False)
    return _Hit((-float(value), *order), start, end, True)


def _raw_rows(path: Path, handle: BinaryIO) -> Iterator[tuple[list[str], int, int]]:
    """Each CSV row with where its text lies in the file, as byte offsets (a quoted field may span lines)."""
    read = 0

    def lines() -> Iterator[str]:
        nonlocal read
        for raw in handle:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{path}: not UTF-8 text") from None
            read += len(raw)
            yield text

    reader = csv.reader(lines(), strict=True)
    start = 0
    try:
        for row in reader:  # the reader takes no line beyond the row's last: ``read`` is where the row ends
            if row:
                yield row, start, read
            start = read
    except csv.Error as exc:
        raise InputError(f"{path}: line {reader.line_num}: {exc}") from None


def _pose_texts(path: Path, wanted: list[PoseKey]) -> dict[PoseKey, str]:
    """The SDF records of poses.sdf named by ``wanted`` (query id, template record and pose rank).

    The file is mapped and split on its ``$$$$`` lines, and only a record whose name is wanted is
    decoded: poses.sdf grows with the campaign, and a loop over its lines in Python was most of the
    time a finished campaign spent writing its hit list.
    """
    names = {key[0].encode("utf-8") for key in wanted}
    keys = set(wanted)
    found: dict[PoseKey, str] = {}
    if not names:
        return found
    try:
        with _mapped(path) as data:
            start = 0
            for terminator, end in _record_ends(data):
                line = data.find(b"\n", start, terminator)
                name = data[start:line if line >= 0 else terminator].rstrip(b"\r")
                if name in names:
                    text = data[start:end].decode("utf-8", "replace")
                    key = (name.decode("utf-8"), _tag(text, _TEMPLATE_RECORD, ""), _tag(text, _POSE_RANK, "1"))
                    if key in keys:
                        found.setdefault(key, text)
                start = end
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return found


def _tag(text: str, pattern: re.Pattern[str], default: str) -> str:
    """The first line of a data item of a pose's SDF record (``pattern``: one of the above), after its
    ``M  END``; ``default`` when it has none."""
    end = text.find("M  END")
    match = None if end < 0 else pattern.search(text, end)
    return default if match is None else match.group(1)


def _record_ends(data: mmap.mmap | bytes) -> Iterator[tuple[int, int]]:
    """Where each SDF record's ``$$$$`` line starts and where the record ends (after that line's line end).

    ``bytes.find`` rather than a multi-line regular expression, which tries every position of the file and
    took seven times as long."""
    size, at = len(data), 0
    while (at := data.find(b"$$$$", at)) >= 0:
        end = data.find(b"\n", at)
        end = size if end < 0 else end + 1
        if (at == 0 or data[at - 1] == 10) and not data[at + 4:end].strip():  # 10: "\n"
            yield at, end
        at = end
