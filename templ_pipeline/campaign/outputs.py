"""The files of a screening campaign, written as queries finish and repaired on resume.

In the campaign directory DIR:

- ``campaign.json``: the parameters the campaign was started with (compared on resume), the
  TEMPL, RDKit and Python versions, the input files (absolute paths and SHA-256: a resume
  with a changed file is refused) and the input data columns (written once, atomically).
- ``scores.csv``: one row per pose kept of each prepared molecule of each query (the query
  itself, or each of its stereoisomers as ``ID#n``), or per molecule and template:
  ``SCORES_COLUMNS``, then the query's input data as ``input.NAME`` columns (fixed at the
  campaign's start). The rows of one query share its ``input_id`` and are written together.
- ``poses.sdf``: the pose of each row that has one, named by the row's ``query_id``, with
  the row's fields and input data as SD properties
  (:mod:`~templ_pipeline.core.vocabulary` names them and fixes their decimals).
- ``hits.csv`` and ``hits.sdf``: the ranked hit list, rebuilt from the two files above at
  the end of each run (:mod:`~templ_pipeline.campaign.hits`).

Durability: a query's poses go out in one write(2), then its rows in another, both
on plain file descriptors (no user-space buffer). Once ``write`` returns, the data
is in the page cache, which outlives the process (kill -9) though not the machine;
``close`` fsyncs. A crash therefore tears at most the query being written, and
``CampaignFiles.open(..., resume=True)`` cuts that query away again (see
``_scan_scores``, ``_rows_cut`` and ``_scan_poses``). Writing poses first means a row in
scores.csv always has its pose on disk; a pose without a row is dropped on resume, and
so is a last query whose poses outnumber its rows (its rows' write was cut between two
rows, which the row count alone cannot see when a molecule may keep several poses).

The campaign's files must be regular files: a symlink (even to a regular file), FIFO,
device or directory in their place is refused, never opened, followed or
replaced (:func:`~templ_pipeline.safe_files.open_regular`: ``lstat`` first, then
``O_NOFOLLOW``/``O_NONBLOCK`` opens checked with ``fstat``). Files replaced whole
(campaign.json, the hit lists, a poses.sdf repaired on resume) go through
:func:`~templ_pipeline.safe_files.write_atomically`. Nothing is written outside DIR;
files are created with mode 0666 less the umask, and a repaired poses.sdf keeps its mode.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import platform
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import BinaryIO

from rdkit import Chem, rdBase

from templ_pipeline import __version__
from templ_pipeline.campaign.poses import pose_record, with_properties
from templ_pipeline.campaign.queries import sd_tags
from templ_pipeline.core.vocabulary import Field, format_value, input_name
from templ_pipeline.io import InputError
from templ_pipeline.safe_files import is_regular_file, open_regular, write_all, write_atomically

CAMPAIGN_FILE = "campaign.json"
SCORES_FILE = "scores.csv"
POSES_FILE = "poses.sdf"
HITS_FILE = "hits.csv"
HIT_POSES_FILE = "hits.sdf"
# write_atomically's temporary files (".NAME.<8 hex>.tmp"), left behind only by a crash
_ATOMIC_TEMPORARY = re.compile(r"\.(" + "|".join(
    re.escape(name) for name in (CAMPAIGN_FILE, POSES_FILE, HITS_FILE, HIT_POSES_FILE)) + r")\.[0-9a-f]{8}\.tmp")
_NOT_REGULAR_ADVICE = "move it away or choose another directory"
_CHUNK_BYTES = 1 << 20  # a repaired poses.sdf is copied in chunks of about this size
_TAIL_BYTES = 1 << 16  # the end of poses.sdf first read for the last query's poses (a query's are a few kB each)

PoseKey = tuple[str, str, str]
"""(query_id, template_record, pose_rank) as written: names one pose, in poses.sdf and in scores.csv."""


@dataclass(frozen=True, slots=True)
class ScoreRow:
    """One row of scores.csv: one pose (or failure) of one prepared molecule of a query (against one template).
    The field names are :class:`~templ_pipeline.core.vocabulary.Field` values."""

    query_id: str  # the input id, or ``input_id#n`` for its n-th stereoisomer
    input_id: str
    input_record: int  # the query's 1-based position in the input file
    query_smiles: str  # the molecule embedded, after preparation
    input_smiles: str  # as given
    isomer: int  # 1-based stereoisomer index; 0 when none were enumerated
    isomers: int  # molecules preparation made of the query (0 when it was refused or unreadable)
    removed: str  # fragments dropped (counterions, solvents), dot-separated SMILES
    preparation: str  # what preparation did: PreparationAction values, comma-separated
    status: str
    reason: str  # one bounded word
    detail: str  # the reason as a sentence (empty on an ok row that got every conformer)
    template_name: str
    template_record: int | None  # the template's 1-based record in the template file
    template_similarity: float | None  # 2D (Morgan) Tanimoto similarity to the query; empty without a choice
    core_atoms: int  # atoms of the common substructure with the template
    core_smarts: str
    pose_method: str  # how the conformers were made: pinned, pinned_partial, free, input (PoseMethod)
    pin_fallback: str  # why the core was not pinned whole: none, small_core, stereo_mismatch, ... (PinFallback)
    pinned_atoms: int
    runner_up: str  # the other chosen templates' best scores by the metric: "name score; ..."
    rmsd: float | None  # heavy-atom RMSD in place to the reference pose (--reference); empty without one
    n_conformers_requested: int
    n_conformers: int
    n_scored: int
    n_failed: int
    metric: str  # the campaign's ranking metric
    shape: float | None
    color: float | None
    combo: float | None
    conformer_id: int | None
    pose_rank: int | None  # 1 for the molecule's best pose, 2 for the next distinct one, ...; empty without a pose
    seconds: float


SCORES_COLUMNS: tuple[str, ...] = tuple(field.name for field in fields(ScoreRow))
"""Our columns of scores.csv: the ``ScoreRow`` fields, in order (the input data columns follow)."""


@dataclass(frozen=True, slots=True)
class CampaignInputs:
    """The input files of a campaign and the data columns its queries carry (fixed when it starts)."""

    templates: Path
    queries: Path
    columns: tuple[str, ...] = ()  # input data columns or SD tags, unprefixed (queries.data_columns)


class CampaignFiles:
    """The open output files of one campaign; ``write`` one query at a time, then ``close``."""

    __slots__ = ("directory", "done", "resumed_rows", "input_columns", "_scores", "_poses", "_closed")

    def __init__(self, directory: Path, done: frozenset[str], resumed_rows: int, scores: int, poses: int,
                 input_columns: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.done = done  # input ids of the queries already in scores.csv when opened (after repairs)
        self.resumed_rows = resumed_rows  # rows already in scores.csv when opened (after repairs)
        self.input_columns = input_columns  # the campaign's input data columns, as stored when it started
        self._scores = _Appender(scores)
        self._poses = _Appender(poses)
        self._closed = False

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        parameters: dict,
        *,
        resume: bool,
        rows_per_query: int = 1,
        inputs: CampaignInputs | None = None,
    ) -> CampaignFiles:
        """Start a campaign in ``directory``, or with ``resume`` continue the one there.

        ``parameters`` (JSON-serialisable) are stored when starting and must be
        equal on resume; so must the checksums of the ``inputs`` files. Their data
        columns are those stored when the campaign started. ``rows_per_query`` is the
        number of rows a complete query has at least per prepared molecule (one per
        template): a last query with fewer than that times its ``isomers`` is dropped
        on resume.
        """
        if rows_per_query < 1:
            raise ValueError(f"rows_per_query must be at least 1, not {rows_per_query}")
        directory = Path(directory)
        _make_directory(directory)
        campaign, scores, poses = (directory / name for name in (CAMPAIGN_FILE, SCORES_FILE, POSES_FILE))
        for name in (HITS_FILE, HIT_POSES_FILE):  # rewritten at the end of the run: refused before any work
            is_regular_file(directory / name, _NOT_REGULAR_ADVICE)
        if _has_entries(directory):
            if not resume:
                raise InputError(
                    f"{directory}: exists and is not empty; pass --resume to continue the campaign in it, "
                    "or choose another directory"
                )
            existing = [path for path in (campaign, scores, poses) if is_regular_file(path, _NOT_REGULAR_ADVICE)]
            if campaign not in existing:
                raise InputError(f"{campaign}: no such file; {directory} is not empty and holds no campaign to resume")
            stored = _check_campaign(campaign, parameters, inputs)
            columns = tuple(stored.get("input_columns", ()))
        else:
            columns = inputs.columns if inputs is not None else ()
            write_atomically(campaign, (json.dumps(_campaign_record(parameters, inputs), indent=2) + "\n").encode())
        header = (*SCORES_COLUMNS, *(input_name(column) for column in columns))
        scores_fd = open_regular(scores, os.O_RDWR | os.O_APPEND | os.O_CREAT, _NOT_REGULAR_ADVICE)
        try:
            _lock(scores, scores_fd)
            done, row_ids, rows = _repair_scores(scores, scores_fd, rows_per_query, header, poses)
            poses_fd = open_regular(poses, os.O_RDWR | os.O_APPEND | os.O_CREAT, _NOT_REGULAR_ADVICE)
            try:
                poses_fd = _repair_poses(poses, poses_fd, row_ids)
            except BaseException:
                os.close(poses_fd)
                raise
        except BaseException:
            os.close(scores_fd)
            raise
        _sync_directory(directory)
        return cls(directory, frozenset(done), rows, scores_fd, poses_fd, columns)

    def write(self, rows: Sequence[ScoreRow], poses: Sequence[Chem.Mol | str | None],
              inputs: Mapping[str, str] | Sequence[tuple[str, str]] = ()) -> None:
        """Append all rows of one query, with a pose (or None) per row: poses first, then rows.

        A pose is a molecule or its SDF record already made
        (:func:`~templ_pipeline.campaign.poses.pose_record`, as campaign workers do). A
        molecule gets its row's query id as name and the properties ``query_smiles``,
        ``template_name``, ``metric``, ``shape``, ``color``, ``combo``, ``conformer_id``
        and ``pose_rank`` (those that are not None); the molecule passed in is modified.
        ``inputs`` is the query's input data (``QueryRecord.data``): each of the
        campaign's input columns goes to every row and pose (empty when the query has none).
        """
        if self._closed:
            raise ValueError(f"{self.directory}: the campaign files are closed")
        if len(rows) != len(poses):
            raise ValueError(f"{len(rows)} rows but {len(poses)} poses; pass a pose or None per row")
        if not rows or any(row.input_id != rows[0].input_id for row in rows):
            raise ValueError("write takes the rows of one query: at least one, all with the same input_id")
        given = dict(inputs)
        data = [(input_name(column), given.get(column, "")) for column in self.input_columns]
        sdf = _pose_records(rows, poses, data)  # built first: a pose RDKit cannot write leaves both files untouched
        values = [value for _, value in data]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([*_fields(row), *values] for row in rows)
        try:
            self._poses.append(sdf.encode("utf-8"))
            self._scores.append(buffer.getvalue().encode("utf-8"))
        except BaseException:
            # A failed write (a full disk) is undone in both files, so the query can be written
            # again and a torn record never ends up in the middle of a file.
            self._poses.undo()
            self._scores.undo()
            raise
        self._poses.commit()
        self._scores.commit()

    def close(self) -> None:
        """Flush both files to disk (fsync) and close them; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            os.fsync(self._poses.fd)
            os.fsync(self._scores.fd)
        finally:
            os.close(self._poses.fd)
            os.close(self._scores.fd)

    def __enter__(self) -> CampaignFiles:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_scores(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a scores.csv, as strings by column name (empty for None)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (as stored: a ``.gz`` file's compressed bytes)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return digest.hexdigest()


def _campaign_record(parameters: dict, inputs: CampaignInputs | None) -> dict:
    """What campaign.json holds: the parameters, the versions, the input files and data columns."""
    record: dict = {"parameters": parameters,
                    "versions": {"templ": __version__, "rdkit": rdBase.rdkitVersion,
                                 "python": platform.python_version()}}
    if inputs is not None:
        record["inputs"] = {name: {"path": str(Path(path).absolute()), "sha256": file_sha256(path)}
                            for name, path in (("templates", inputs.templates), ("queries", inputs.queries))}
        record["input_columns"] = list(inputs.columns)
    return record


def _fields(row: ScoreRow) -> list[str]:
    return [format_value(name, getattr(row, name)) for name in SCORES_COLUMNS]


def _pose_records(rows: Sequence[ScoreRow], poses: Sequence[Chem.Mol | str | None],
                  data: Sequence[tuple[str, str]]) -> str:
    """The SDF text of a query's poses: records made by the workers as they are, molecules written here; each
    with the query's input data."""
    records = []
    for row, pose in zip(rows, poses, strict=True):
        if pose is None:
            continue
        if not isinstance(pose, str):
            record: dict[str, int] = {} if row.template_record is None else {
                Field.TEMPLATE_RECORD: row.template_record}
            pose = pose_record(pose, name=row.query_id, query_smiles=row.query_smiles,
                               template_name=row.template_name, metric=row.metric, shape=row.shape,
                               color=row.color, combo=row.combo, conformer_id=row.conformer_id,
                               pose_rank=row.pose_rank, preparation=record)
        records.append(with_properties(pose, data) if data else pose)
    return "".join(records)


class _Appender:
    """Appends to a file this process alone writes (flock), and can cut the last append off again."""

    __slots__ = ("fd", "_size", "_pending")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._size = os.fstat(fd).st_size  # where the next O_APPEND write lands
        self._pending = 0

    def append(self, data: bytes) -> None:
        self._pending = len(data)
        write_all(self.fd, data)

    def commit(self) -> None:
        self._size += self._pending
        self._pending = 0

    def undo(self) -> None:
        if self._pending:
            self._pending = 0
            try:
                os.ftruncate(self.fd, self._size)
            except OSError:  # left to the repair on resume
                pass


# --- the directory and its files -------------------------------------------------------


def _make_directory(directory: Path) -> None:
    """Create ``directory`` (not its parents), or check that the existing one is a directory."""
    try:
        os.mkdir(directory)
        return
    except FileNotFoundError:
        raise InputError(f"{directory}: parent directory {directory.parent} does not exist") from None
    except FileExistsError:
        pass
    except OSError as exc:
        raise InputError(f"{directory}: cannot create the campaign directory ({exc.strerror})") from None
    if not directory.is_dir():  # follows a symlink: a linked directory is fine, the files in it are checked
        raise InputError(f"{directory}: exists and is not a directory")


def _has_entries(directory: Path) -> bool:
    """Whether ``directory`` holds anything but temporary files a crash of ours left."""
    try:
        with os.scandir(directory) as entries:
            return any(not _ATOMIC_TEMPORARY.fullmatch(entry.name) for entry in entries)
    except OSError as exc:
        raise InputError(f"{directory}: cannot list the campaign directory ({exc.strerror})") from None


def _sync_directory(directory: Path) -> None:
    """fsync the directory, so created and renamed entries survive a crash of the machine."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories (EINVAL); the data files are synced anyway
        pass
    finally:
        os.close(fd)


def _lock(path: Path, fd: int) -> None:
    """Hold an exclusive flock on scores.csv: two runs appending to one campaign would interleave their rows."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InputError(f"{path}: in use by another run of this campaign") from None
    except OSError:  # no flock on this file system (ENOLCK, EOPNOTSUPP): run unlocked
        pass


def read_campaign(path: str | os.PathLike[str]) -> dict:
    """campaign.json as stored; ``InputError`` when it is not one."""
    path = Path(path)
    fd = open_regular(path, os.O_RDONLY, _NOT_REGULAR_ADVICE)
    try:
        with open(fd, "rb", closefd=False) as handle:
            text = handle.read()
    finally:
        os.close(fd)
    try:
        record = json.loads(text)
        stored = record["parameters"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a campaign file ({type(exc).__name__}: {exc})") from None
    if not isinstance(stored, dict):
        raise InputError(f"{path}: not a campaign file (parameters is not an object)")
    return record


def _check_campaign(path: Path, parameters: dict, inputs: CampaignInputs | None) -> dict:
    """campaign.json, after checking that this run asks for the same parameters and gives the same files."""
    record = read_campaign(path)
    _check_parameters(path, record["parameters"], parameters)
    stored = record.get("inputs")
    if inputs is not None and isinstance(stored, dict):
        for name, given in (("templates", inputs.templates), ("queries", inputs.queries)):
            before = stored.get(name, {}).get("sha256")
            if before is not None and file_sha256(given) != before:
                raise InputError(f"{given}: the {name} file changed since the campaign in {path.parent} started "
                                 f"(it was {stored[name].get('path', '?')}, sha256 {before[:12]}...); resume "
                                 "with the file it started with, or start a new campaign in another directory")
    return record


def _check_parameters(path: Path, stored: dict, parameters: dict) -> None:
    """``InputError`` unless campaign.json holds the same parameters (as JSON values)."""
    wanted = json.loads(json.dumps(parameters))  # tuples as lists, keys as strings: as they were stored
    differ = [key for key in {**stored, **wanted} if stored.get(key, _UNSET) != wanted.get(key, _UNSET)]
    if not differ:
        return
    if len(differ) == 1:
        key = differ[0]
        conflict = f"started with {key}={_shown(stored, key)}, this run asks for {_shown(wanted, key)}"
    else:
        started = ", ".join(f"{key}={_shown(stored, key)}" for key in differ)
        asked = ", ".join(f"{key}={_shown(wanted, key)}" for key in differ)
        conflict = f"started with {started}; this run asks for {asked}"
    raise InputError(f"{path}: the campaign was {conflict}; use the same options to resume")


_UNSET = object()


def _shown(parameters: dict, key: str) -> str:
    return json.dumps(parameters[key]) if key in parameters else "(unset)"


# --- resume repairs -----------------------------------------------------------------


def _repair_scores(path: Path, fd: int, rows_per_query: int, header: Sequence[str] = SCORES_COLUMNS,
                   poses: Path | None = None) -> tuple[set[str], set[str], int]:
    """Cut scores.csv to its complete queries (writing the header when it has none): their input ids,
    their rows' ids and their row count. ``poses`` (poses.sdf) tells whether the last query's rows are all
    there."""
    with open(os.dup(fd), "rb") as handle:
        end, done, row_ids, rows, last = _scan_scores(path, handle, rows_per_query, header)
    if last is not None and poses is not None and _rows_cut(poses, last):
        end = last.start
        done.discard(last.input_id)
        row_ids.difference_update(last.row_ids)
        rows -= len(last.row_ids)
    if end < os.fstat(fd).st_size:
        os.ftruncate(fd, end)
    if end == 0:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(header)
        write_all(fd, buffer.getvalue().encode())
    return done, row_ids, rows


@dataclass(frozen=True, slots=True)
class _LastQuery:
    """The last query scores.csv holds whole by its row count: where its rows start, their ids and the poses
    they name, each as (query id, template record, pose rank), as its pose records name them."""

    input_id: str
    start: int
    row_ids: tuple[str, ...]
    poses: frozenset[PoseKey]


def _scan_scores(path: Path, handle: BinaryIO, rows_per_query: int, columns: Sequence[str] = SCORES_COLUMNS,
                 ) -> tuple[int, set[str], set[str], int, _LastQuery | None]:
    """(byte offset after the last complete query, the input ids of complete queries, their rows' ids,
    their row count, the last of them).

    What a crash leaves, and what is cut:
    - a last line without its newline: a write(2) cut short (kill -9 mid-write, a full
      disk); even if it parses, a number in it may be truncated. Dropped.
    - a row that is still open at the end of the file (a quoted field with a line
      break, cut after it): the strict csv reader reports end of data. Dropped.
    - fewer than ``rows_per_query`` times ``isomers`` rows of the last input id: the
      query's single write was cut between rows. Dropped. (A query that always
      writes fewer rows, say one failed row, is then recomputed when it is last.)
    The header, if complete, must be ``columns``; any other damage (a wrong
    field count, undecodable text) is an ``InputError``: the file is not what we wrote.
    """
    handle.seek(0)
    consumed = 0  # bytes of the lines the csv reader has taken
    exhausted = False

    def lines() -> Iterator[str]:
        nonlocal consumed, exhausted
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                break
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{path}: line {number} is not UTF-8 text") from None
            consumed += len(raw)
            yield text
        exhausted = True

    reader = csv.reader(lines(), strict=True)
    header = False
    end = 0  # after the last complete row
    done: set[str] = set()
    row_ids: set[str] = set()
    rows = 0
    group_id: str | None = None  # the input id of the run of rows being read
    group_rows = 0
    group_expected = 0
    group_ids: list[str] = []
    group_start = 0
    group_poses: set[PoseKey] = set()
    isomers_column = SCORES_COLUMNS.index(Field.ISOMERS)
    template_column, rank_column = SCORES_COLUMNS.index(Field.TEMPLATE_RECORD), SCORES_COLUMNS.index(Field.POSE_RANK)
    try:
        for row in reader:
            if not header:
                if row != list(columns):
                    raise InputError(
                        f"{path}: the header is not that of this campaign's scores.csv "
                        f"(expected {','.join(columns)}, found {','.join(row)})"
                    )
                header = True
                end = group_start = consumed
                continue
            if not row:  # a blank line (an editor's): no row
                end = consumed
                continue
            if len(row) != len(columns):
                expected = len(columns)
                raise InputError(f"{path}: line {reader.line_num} has {len(row)} fields, expected {expected}")
            if row[1] != group_id:
                if group_id is not None:
                    done.add(group_id)
                    row_ids.update(group_ids)
                    rows += group_rows
                group_id, group_rows, group_ids, group_start = row[1], 0, [], end
                group_expected = max(1, int(row[isomers_column]) if row[isomers_column].isdigit() else 1)
                group_poses = set()
            group_rows += 1
            group_ids.append(row[0])
            if row[rank_column]:
                group_poses.add((row[0], row[template_column], row[rank_column]))
            end = consumed
    except csv.Error as exc:
        if not exhausted:
            raise InputError(f"{path}: line {reader.line_num}: {exc}") from None
    last: _LastQuery | None = None
    if group_id is not None:
        if group_rows >= rows_per_query * group_expected:
            done.add(group_id)
            row_ids.update(group_ids)
            rows += group_rows
            last = _LastQuery(group_id, group_start, tuple(group_ids), frozenset(group_poses))
        else:
            end = group_start
    return end, done, row_ids, rows, last


def _rows_cut(poses: Path, last: _LastQuery) -> bool:
    """Whether poses.sdf ends with a pose of ``last`` that has no row: the query's poses went out in one write
    and its rows in the next, so its rows' write was cut between two rows."""
    if not os.path.lexists(poses):  # no pose was ever written
        return False
    with open(open_regular(poses, os.O_RDONLY, _NOT_REGULAR_ADVICE), "rb") as handle:
        return not _last_pose_keys(handle, set(last.row_ids)) <= last.poses


def _last_pose_keys(handle: BinaryIO, names: set[str]) -> set[PoseKey]:
    """(name, template record, pose rank) of the complete records that end poses.sdf and are named in ``names``.

    Read backwards in growing chunks, up to the first record of another name: a resume reads the last
    query's few records, not the file.
    """
    size = handle.seek(0, os.SEEK_END)
    length = _TAIL_BYTES
    while True:
        start = max(0, size - length)
        handle.seek(start)
        records = list(_complete_records(handle.read(size - start).splitlines(keepends=True)))
        if start > 0:
            records = records[1:]  # the first record of a tail may have lost its start
        found: set[PoseKey] = set()
        for name, text in reversed(records):
            if name not in names:
                return found
            tags = dict(sd_tags(text.decode("utf-8", "replace")))
            found.add((name, tags.get(Field.TEMPLATE_RECORD, ""), tags.get(Field.POSE_RANK, "")))
        if start == 0:
            return found
        length *= 4


def _complete_records(lines: Iterable[bytes]) -> Iterator[tuple[str, bytes]]:
    """(name, text) of each complete record of poses.sdf's ``lines``, in order; a last record without its
    ``$$$$`` line is torn and left out."""
    record: list[bytes] = []
    for line in lines:
        record.append(line)
        if _is_separator(line):
            yield _record_name(record[0]), b"".join(record)
            record = []


def _is_separator(line: bytes) -> bool:
    """A complete ``$$$$`` line; without its newline it is part of a torn record."""
    return line.startswith(b"$$$$") and line.endswith(b"\n") and line.rstrip() == b"$$$$"


def _record_name(line: bytes) -> str:
    return line.decode("utf-8", "replace").rstrip("\r\n")


def _repair_poses(path: Path, fd: int, done: set[str]) -> int:
    # ``done``: the ids of the rows kept in scores.csv (a pose is named by its row's query_id)
    """Drop torn and orphaned pose records; the file descriptor to append to (a new one after a rewrite)."""
    with open(os.dup(fd), "rb") as handle:
        kept_end, rewrite = _scan_poses(handle, done)
        if not rewrite:
            if kept_end < os.fstat(fd).st_size:
                os.ftruncate(fd, kept_end)
            return fd
        write_atomically(path, _kept_records(handle, done))  # keeps the file's mode
    os.close(fd)
    return open_regular(path, os.O_RDWR | os.O_APPEND, _NOT_REGULAR_ADVICE)


def _scan_poses(handle: BinaryIO, done: set[str]) -> tuple[int, bool]:
    """(byte offset after the last record to keep, whether a record to drop precedes it).

    A record is kept when it is complete (ends with a ``$$$$`` line and its newline)
    and its name is a query id in scores.csv. Dropped: a torn last record (a write
    cut short) and orphans, poses whose rows never reached scores.csv (the crash
    came between the two writes, or the query was cut by ``_scan_scores``).
    Orphans are always at the end after a crash: then the file is truncated.
    """
    handle.seek(0)
    offset = kept_end = 0
    name: str | None = None
    orphan_seen = rewrite = False
    for line in handle:
        if name is None:
            name = _record_name(line)
        offset += len(line)
        if _is_separator(line):
            if name in done:
                rewrite = rewrite or orphan_seen
                kept_end = offset
            else:
                orphan_seen = True
            name = None
    return kept_end, rewrite


def _kept_records(handle: BinaryIO, done: set[str]) -> Iterator[bytes]:
    """The complete records of ``handle`` named by an id in ``done``, in order, in chunks of about
    ``_CHUNK_BYTES`` (a large poses.sdf is never read into memory whole)."""
    handle.seek(0)
    chunk = bytearray()
    for name, text in _complete_records(handle):
        if name in done:
            chunk += text
            if len(chunk) >= _CHUNK_BYTES:
                yield bytes(chunk)
                chunk = bytearray()
    if chunk:
        yield bytes(chunk)
