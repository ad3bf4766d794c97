"""The query ligands of a screening campaign, read from a file as a stream of records.

The reader only splits text: the workers parse SMILES and molblocks and turn bad
ones into failed rows, so the parent stays cheap per query and a file of millions
of lines is never held whole. What it does keep is the set of ids seen so far
(to make them unique): 92 MB for a million ids like ``CHEMBL123456``.

Formats, by suffix (case-insensitive), each optionally gzip-compressed (``.gz``):

- ``.smi``/``.smiles``: ``SMILES<whitespace>id`` per line; the id is the rest of the
  line, stripped. Blank lines and lines starting with ``#`` are skipped, and so is a
  first (non-skipped) line whose first token is ``smiles`` in any case: a header.
- ``.csv``/``.tsv``: a header row, then one row per query; the SMILES and id columns
  are found by name, case-insensitively: the one named (``smiles_column``,
  ``id_column``; absent is an ``InputError`` listing the header), else the first of
  :data:`SMILES_COLUMNS` / :data:`ID_COLUMNS` in that order of preference. Without an
  id column ids are generated. Every other column is the query's data (:attr:`QueryRecord.data`).
  Blank rows are skipped; an empty SMILES field is a query (it fails in the worker).
- ``.sdf``/``.sd``: records separated by ``$$$$`` lines; the id is the record's first
  line (the molecule name) and the record's SD tags are its data. With
  ``group_conformers`` consecutive records of the same (non-empty) name are one
  query, its conformers (its data: the first record's tags).

Ids: a record without one is ``query_<number>``. Ids are made unique in file order:
the second ``X`` becomes ``X~2``, the third ``X~3`` (the next free ``X~k`` when the
file itself holds such an id). Line breaks inside an id (a quoted CSV field) become
spaces, so an id can name an SDF record. The same file gives the same ids on every
read: ``--resume`` matches finished queries by id.

Text is UTF-8 (a leading byte order mark is dropped). Lines are split at ``\\n``
only, as the file is read in binary and decoded line by line, so that an
undecodable byte is reported with its line.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import stat
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from templ_pipeline.io import InputError
from templ_pipeline.safe_files import describe_mode

_KINDS = {".smi": "smi", ".smiles": "smi", ".csv": "csv", ".tsv": "tsv", ".sdf": "sdf", ".sd": "sdf"}
QUERY_FORMATS: tuple[str, ...] = tuple(_KINDS)
"""The query file suffixes understood (case-insensitive), each optionally followed by ``.gz``."""

_GZIP_SUFFIX = ".gz"
_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20
# A "$$$$" line is one that bytes.rstrip() reduces to b"$$$$"; it strips b" \t\n\r\x0b\x0c".
_BLANKS = b" \t\r\x0b\x0c"
_TEXT = re.compile(rb"\S")  # bytes \S: not one of the bytes.strip() whitespace


SMILES_COLUMNS: tuple[str, ...] = ("smiles", "canonical_smiles", "isomeric_smiles", "smi")
"""Headers recognised as the SMILES column without ``--smiles-column`` (case-insensitive), first found wins."""

ID_COLUMNS: tuple[str, ...] = ("id", "name", "title", "compound_id", "compound_name", "compound", "molecule_id",
                               "molecule_name", "molecule", "mol_id", "chembl_id", "identifier")
"""Headers recognised as the id column without ``--id-column`` (case-insensitive), first found wins."""


@dataclass(frozen=True, slots=True)
class QueryRecord:
    """One query as split from the input; a worker parses its molecule."""

    number: int  # 1-based position in the input: data line, CSV data row, SDF record or conformer group
    query_id: str  # unique within the input, the same on every read
    smiles: str | None  # the SMILES text as given (.smi, .csv, .tsv; surrounding whitespace removed); None for SDF
    molblocks: tuple[str, ...]  # SDF: each record's text, up to (not including) its "$$$$" line; () otherwise
    data: tuple[tuple[str, str], ...] = ()  # (column or SD tag, value): the input's other fields, in file order


@dataclass(frozen=True, slots=True)
class _Source:
    path: Path
    kind: str  # "smi", "csv", "tsv" or "sdf"
    compressed: bool


def read_queries(
    path: str | os.PathLike[str],
    *,
    smiles_column: str | None = None,
    id_column: str | None = None,
    group_conformers: bool = False,
) -> Iterator[QueryRecord]:
    """The queries in ``path``, one record at a time.

    The file and (for CSV/TSV) its header are checked now, so an unusable file
    raises ``InputError`` here; a problem later in the file (undecodable text,
    corrupt gzip data) raises it when reached, after the records before it.
    """
    source = _source(path)
    if source.kind == "sdf":
        return _sdf_records(source, group_conformers)
    return _smiles_records(_rows(source, smiles_column, id_column))


def count_queries(
    path: str | os.PathLike[str],
    *,
    smiles_column: str | None = None,
    id_column: str | None = None,
    group_conformers: bool = False,
) -> int | None:
    """How many records ``read_queries`` yields for the same arguments; None for a ``.gz`` file.

    A compressed file is not counted: that would decompress it all once more.
    """
    source = _source(path)
    if source.compressed:
        return None
    if source.kind != "sdf":
        return sum(1 for _ in _rows(source, smiles_column, id_column))
    if group_conformers:
        return sum(1 for _ in _groups(_sdf_blocks(source), True))
    return _count_sdf(source.path)


def data_columns(
    path: str | os.PathLike[str],
    *,
    smiles_column: str | None = None,
    id_column: str | None = None,
) -> tuple[str, ...]:
    """The names of the data every record of ``path`` may carry: a table's columns other than its SMILES and id
    columns, or every SD tag found in the file (in order of first appearance; the whole file is read once)."""
    source = _source(path)
    if source.kind == "smi":
        return ()
    if source.kind == "sdf":
        names: dict[str, None] = {}
        for _, lines in _sdf_blocks(source):
            for name in _sd_tag_names(lines):
                names.setdefault(name, None)
        return tuple(names)
    text = _text_lines(source)
    header = _header(source.path, csv.reader(text, delimiter=_delimiter(source)))
    smiles_index, id_index = _key_columns(source.path, header, smiles_column, id_column)
    return _data_names(header, (smiles_index, id_index))


def _source(path: str | os.PathLike[str]) -> _Source:
    """``path`` checked: a readable regular file of a known format."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if str(path) == "-":  # the convention for standard input, which cannot be read twice
            raise InputError("-: queries are read from a file, not from standard input (they are read once to "
                             "count them and again on --resume)") from None
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{path}: is a directory, expected a query file")
    if not stat.S_ISREG(info.st_mode):
        # A FIFO or device could be read once only: queries are read to count them and again on resume.
        raise InputError(f"{path}: is {describe_mode(info.st_mode)}; queries must be in a regular file, which "
                         "can be read again (they are read once to count them and again on --resume)")
    name = path.name.lower()
    compressed = name.endswith(_GZIP_SUFFIX)
    if compressed:
        name = name[: -len(_GZIP_SUFFIX)]
    kind = _KINDS.get(os.path.splitext(name)[1])
    if kind is None:
        raise InputError(
            f"{path}: unknown query file type; expected {', '.join(QUERY_FORMATS)}, "
            f"each optionally followed by {_GZIP_SUFFIX}"
        )
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    return _Source(path, kind, compressed)


def _raw_lines(source: _Source) -> Iterator[bytes]:
    """The file's lines as bytes (gzip decompressed), with read errors as ``InputError``."""
    path = source.path
    number = 0
    try:
        with gzip.open(path, "rb") if source.compressed else open(path, "rb") as handle:
            lines = iter(handle)
            first = next(lines, None)
            if first is None:
                return
            number = 1
            yield first.removeprefix(_BOM)
            for line in lines:
                number += 1
                yield line
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        # BadGzipFile: no gzip header or a bad CRC; EOFError: truncated; zlib.error: corrupt deflate data.
        problem = "truncated" if isinstance(exc, EOFError) else str(exc)
        where = f" after line {number}" if number else ""
        raise InputError(f"{path}: not a readable gzip file ({problem}){where}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read after line {number} ({exc.strerror or exc})") from None


def _text_lines(source: _Source) -> Iterator[str]:
    """The file's lines decoded as UTF-8; an undecodable one raises ``InputError`` naming it."""
    for number, line in enumerate(_raw_lines(source), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{source.path}: line {number} is not UTF-8 text (byte {exc.start + 1})") from None
        yield text


Row = tuple[str, str, tuple[tuple[str, str], ...]]  # SMILES, id as given (may be empty), data


def _delimiter(source: _Source) -> str:
    return "\t" if source.kind == "tsv" else ","


def _rows(source: _Source, smiles_column: str | None, id_column: str | None) -> Iterator[Row]:
    """(SMILES, id as given, data) per query of a SMILES or table file; the id may be empty."""
    lines = _text_lines(source)
    if source.kind == "smi":
        return _smi_rows(lines)
    return _table_rows(source.path, lines, _delimiter(source), smiles_column, id_column)


def _smi_rows(lines: Iterable[str]) -> Iterator[Row]:
    first = True
    for line in lines:
        text = line.strip()
        if not text or text[0] == "#":
            continue
        parts = text.split(maxsplit=1)
        if first:
            first = False
            if parts[0].lower() == "smiles":
                continue
        yield parts[0], parts[1] if len(parts) == 2 else "", ()


def _header(path: Path, reader) -> list[str]:
    """The first non-blank row of a table: its header."""
    try:
        header = next((row for row in reader if row), None)
    except csv.Error as exc:
        raise InputError(f"{path}: line {reader.line_num}: {exc}") from None
    if header is None:
        delimiter = getattr(reader.dialect, "delimiter", ",")
        raise InputError(f"{path}: no header row; a {delimiter!r}-separated file needs one naming its columns")
    return [name.strip() for name in header]


def _key_columns(path: Path, header: list[str], smiles_column: str | None,
                 id_column: str | None) -> tuple[int, int | None]:
    """The indexes of the SMILES and id columns: the named ones (``InputError`` when absent), else the first
    recognised header."""
    names = [name.lower() for name in header]
    listed = ", ".join(repr(name) for name in header)
    if smiles_column is not None:
        if smiles_column.strip().lower() not in names:
            raise InputError(f"{path}: no column {smiles_column!r} (--smiles-column); the header has: {listed}")
        smiles_index = names.index(smiles_column.strip().lower())
    else:
        found = next((name for name in SMILES_COLUMNS if name in names), None)
        if found is None:
            raise InputError(f"{path}: no column 'smiles' (the SMILES column; name it with --smiles-column); "
                             f"the header has: {listed}")
        smiles_index = names.index(found)
    if id_column is not None:
        if id_column.strip().lower() not in names:
            raise InputError(f"{path}: no column {id_column!r} (--id-column); the header has: {listed}")
        return smiles_index, names.index(id_column.strip().lower())
    found = next((name for name in ID_COLUMNS if name in names and names.index(name) != smiles_index), None)
    return smiles_index, None if found is None else names.index(found)


def _data_names(header: list[str], keys: tuple[int | None, ...]) -> tuple[str, ...]:
    """The header's other columns, a repeated or empty name made unique (``activity~2``, ``column_3``)."""
    unique = _UniqueIds()
    return tuple(unique.unique(name or f"column_{index + 1}") for index, name in enumerate(header)
                 if index not in keys)


def _table_rows(
    path: Path, lines: Iterator[str], delimiter: str, smiles_column: str | None, id_column: str | None
) -> Iterator[Row]:
    """Reads the header now (so a missing column is reported at once), the rows lazily."""
    reader = csv.reader(lines, delimiter=delimiter)
    header = _header(path, reader)
    smiles_index, id_index = _key_columns(path, header, smiles_column, id_column)
    names = _data_names(header, (smiles_index, id_index))
    others = [index for index in range(len(header)) if index not in (smiles_index, id_index)]
    return _table_data(path, reader, smiles_index, id_index, tuple(zip(names, others, strict=True)))


def _table_data(path: Path, reader, smiles_index: int, id_index: int | None,
                others: tuple[tuple[str, int], ...]) -> Iterator[Row]:
    try:
        for row in reader:
            if not row:
                continue
            smiles = row[smiles_index].strip() if smiles_index < len(row) else ""
            query_id = row[id_index].strip() if id_index is not None and id_index < len(row) else ""
            data = tuple((name, row[index].strip() if index < len(row) else "") for name, index in others)
            yield smiles, query_id, data
    except csv.Error as exc:
        raise InputError(f"{path}: line {reader.line_num}: {exc}") from None


def _smiles_records(rows: Iterator[Row]) -> Iterator[QueryRecord]:
    ids = _UniqueIds()
    for number, (smiles, query_id, data) in enumerate(rows, start=1):
        yield QueryRecord(number, ids.unique(query_id or f"query_{number}"), smiles, (), data)


def _sdf_blocks(source: _Source) -> Iterator[tuple[int, list[bytes]]]:
    """(line number of its first line, its lines) per SDF record, the ``$$$$`` line excluded.

    Text after the last ``$$$$`` line is a record (a torn one) unless it is only whitespace.
    """
    lines: list[bytes] = []
    start = 1
    for number, line in enumerate(_raw_lines(source), start=1):
        if line.startswith(b"$$$$") and line.rstrip() == b"$$$$":
            yield start, lines
            lines = []
            start = number + 1
        else:
            lines.append(line)
    if any(line.strip() for line in lines):
        yield start, lines


def _groups(blocks: Iterator[tuple[int, list[bytes]]], group: bool) -> Iterator[list[tuple[int, list[bytes]]]]:
    """The records of each query: one each, or with ``group`` runs of one non-empty name."""
    if not group:
        for block in blocks:
            yield [block]
        return
    current: list[tuple[int, list[bytes]]] = []
    key = b""
    for block in blocks:
        lines = block[1]
        name = lines[0].strip() if lines else b""
        if current and name and name == key:
            current.append(block)
            continue
        if current:
            yield current
        current = [block]
        key = name
    if current:
        yield current


def _sdf_records(source: _Source, group: bool) -> Iterator[QueryRecord]:
    ids = _UniqueIds()
    for number, blocks in enumerate(_groups(_sdf_blocks(source), group), start=1):
        molblocks = tuple(_decode_block(source.path, start, lines) for start, lines in blocks)
        name = molblocks[0].partition("\n")[0].strip()
        yield QueryRecord(number, ids.unique(name or f"query_{number}"), None, molblocks, sd_tags(molblocks[0]))


_TAG = re.compile(r">.*?<([^>]*)>")


def sd_tags(molblock: str) -> tuple[tuple[str, str], ...]:
    """The SD data items of a record's text, (tag, value) in order; a value of several lines keeps them."""
    _, end, data = molblock.partition("M  END")
    if not end:
        return ()
    items: list[tuple[str, str]] = []
    name: str | None = None
    value: list[str] = []
    for line in data.split("\n")[1:]:
        line = line.rstrip("\r")
        if name is None:
            match = _TAG.match(line)
            if match:
                name, value = match.group(1), []
        elif line.strip():
            value.append(line)
        else:
            items.append((name, "\n".join(value)))
            name = None
    if name is not None:
        items.append((name, "\n".join(value)))
    return tuple(items)


def _sd_tag_names(lines: list[bytes]) -> Iterator[str]:
    """The SD tags of one record's lines (bytes, as :func:`_sdf_blocks` splits them)."""
    text = b"".join(lines).decode("utf-8", "replace")
    for name, _ in sd_tags(text):
        yield name


def _decode_block(path: Path, start: int, lines: list[bytes]) -> str:
    data = b"".join(lines)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = start + data.count(b"\n", 0, exc.start)
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise InputError(f"{path}: line {line} is not UTF-8 text (byte {column})") from None


def _count_sdf(path: Path) -> int:
    """Records in an uncompressed SDF: ``$$$$`` lines, plus a last record not followed by one.

    ``bytes.find`` over 1 MiB chunks (cut after their last newline) visits only the
    separators, not every line: the rules of ``_sdf_blocks`` at a fraction of its
    cost (175 MB, 100k records: 0.35 s against 1.9 s for the line loop).
    """
    count = 0
    tail_has_text = False
    rest = b""
    first = True
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                if first:
                    chunk = chunk.removeprefix(_BOM)
                    first = False
                data = rest + chunk
                cut = data.rfind(b"\n") + 1
                rest = data[cut:]
                count, tail_has_text = _scan_sdf(data[:cut], count, tail_has_text)
            count, tail_has_text = _scan_sdf(rest, count, tail_has_text)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return count + tail_has_text


def _scan_sdf(data: bytes, count: int, tail_has_text: bool) -> tuple[int, bool]:
    """``count`` plus the ``$$$$`` lines in ``data`` (whole lines); whether text follows the last one."""
    position = 0
    last_end = -1
    while (found := data.find(b"$$$$", position)) != -1:
        line_end = data.find(b"\n", found)
        if line_end == -1:
            line_end = len(data)
        if (found == 0 or data[found - 1] == 0x0A) and not data[found + 4 : line_end].strip(_BLANKS):
            count += 1
            last_end = line_end
        position = line_end  # another "$$$$" on this line is not at its start
    if last_end == -1:
        return count, tail_has_text or _TEXT.search(data) is not None
    return count, _TEXT.search(data, last_end) is not None


class _UniqueIds:
    """Ids unique in input order: the k-th ``X`` becomes ``X~k``, or the next free ``X~j``."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}  # id -> occurrences of it as a wanted id so far

    def unique(self, wanted: str) -> str:
        if "\n" in wanted or "\r" in wanted:
            wanted = " ".join(wanted.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
        seen = self._seen
        occurrences = seen.get(wanted)
        if occurrences is None:
            seen[wanted] = 1
            return wanted
        suffix = occurrences + 1
        while f"{wanted}~{suffix}" in seen:
            suffix += 1
        seen[wanted] = suffix
        chosen = f"{wanted}~{suffix}"
        seen[chosen] = 1
        return chosen
