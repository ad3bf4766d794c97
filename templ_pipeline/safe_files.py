"""Writing output files safely: only regular files, atomically, with the mode the umask gives.

Every file the tool replaces whole (poses, a campaign's campaign.json, hit lists and
repaired poses.sdf, metrics textfiles, Prometheus target files, exported dashboards)
goes through :func:`write_atomically`: the data goes to a temporary file in the same
directory, is fsynced, and is renamed over the target. A reader never sees a
half-written file, and a write that fails leaves the previous file untouched. The data
may come in chunks, so a large file never has to be held in memory whole. Files a
campaign appends to are opened with :func:`open_regular` and written with
:func:`write_all`.

The target must be absent or a regular file. ``rename(2)`` replaces whatever directory
entry has the target's name: run as root, ``-o /dev/stdout`` once replaced the device
symlink with a regular file. The entry is checked with ``lstat`` (symlinks not followed)
before the temporary file is made and again just before the rename.

``tempfile.mkstemp`` creates files with mode 0600 whatever the umask, which made every
pose file private; the temporary file here is created with ``0666 & ~umask``, as
``open(2)`` with ``O_CREAT`` would create the target itself. A file that replaces an
existing one takes that file's permission bits instead: a user who made poses.sdf
private (or group-writable) keeps it so.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from templ_pipeline.errors import InputError

__all__ = ["check_target", "describe_mode", "is_regular_file", "open_regular", "read_umask", "remove_quietly",
           "write_all", "write_atomically"]

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REGULAR_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: a FIFO swapped in must not hang us
_CHOOSE_A_NAME = "choose a file name (nothing was written)"


def parse_umask(status: str) -> int | None:
    """The ``Umask:`` field of ``/proc/<pid>/status`` (Linux 4.7 and later), or None when absent."""
    for line in status.splitlines():
        if line.startswith("Umask:"):
            try:
                return int(line.split(":", 1)[1].strip(), 8)
            except ValueError:
                return None
    return None


def read_umask() -> int:
    """The process umask, read without changing it.

    ``os.umask`` can only be read by setting it, which races with any other thread
    creating a file at that moment; ``/proc/self/status`` reports it without a change.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            found = parse_umask(handle.read())
    except OSError:
        found = None
    if found is not None:
        return found
    current = os.umask(0o022)  # no procfs: the only other way to read it
    os.umask(current)
    return current


def describe_mode(mode: int) -> str:
    """What a directory entry of this ``st_mode`` is, for an error message."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a plain file"


def _regular_entry(path: Path, label: str, advice: str) -> os.stat_result | None:
    """The ``lstat`` of ``path`` when it is a regular file, None when absent; ``InputError`` otherwise,
    ending with ``advice``."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"{label}: cannot inspect ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise _not_regular(label, info.st_mode, advice)
    return info


def _not_regular(label: str, mode: int, advice: str) -> InputError:
    return InputError(f"{label}: is {describe_mode(mode)}, not a regular file; {advice}")


def _checked(path: Path, what: str) -> os.stat_result | None:
    """:func:`check_target`'s checks; the target's ``lstat``, None when it does not exist yet."""
    label = f"{what} {path}" if what else str(path)
    info = _regular_entry(path, label, _CHOOSE_A_NAME)
    directory = path.parent
    if not directory.is_dir():
        raise InputError(f"{label}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise InputError(f"{label}: directory {directory} is not writable")
    return info


def check_target(path: str | os.PathLike[str], what: str = "") -> Path:
    """``path`` as a Path when it can be written here; ``InputError`` naming it otherwise.

    It must be absent or a regular file (a symlink, even to a regular file, is refused),
    in an existing, writable directory. ``what`` names the option, for the message.
    """
    path = Path(path)
    _checked(path, what)
    return path


def write_atomically(path: str | os.PathLike[str], data: bytes | Iterable[bytes], what: str = "") -> Path:
    """Replace ``path`` by a regular file holding ``data`` (bytes, or chunks of bytes written in turn), or
    raise and leave it as it was.

    The new file has the permission bits of the file it replaces, or ``0666`` less the
    umask when there was none. ``what`` names the option, for messages.
    """
    path = Path(path)
    existing = _checked(path, what)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, _OPEN_FLAGS, 0o666 & ~read_umask())
    except OSError as exc:
        raise InputError(f"{path}: cannot create a file in {path.parent} ({exc.strerror})") from None
    try:
        try:
            if existing is not None:
                os.fchmod(fd, stat.S_IMODE(existing.st_mode) & 0o777)
            for chunk in (data,) if isinstance(data, bytes | bytearray | memoryview) else data:
                write_all(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        check_target(path, what)  # the entry may have been replaced since the first check
        os.replace(temporary, path)
    except BaseException:
        remove_quietly(temporary)
        raise
    return path


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data``: one write(2) as a rule, looping only on a short write (a full disk, a signal)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def is_regular_file(path: Path, advice: str = _CHOOSE_A_NAME) -> bool:
    """Whether ``path`` exists; ``InputError`` (ending with ``advice``) when it is anything but a regular file
    (symlinks not followed)."""
    return _regular_entry(path, str(path), advice) is not None


def open_regular(path: Path, flags: int, advice: str = _CHOOSE_A_NAME) -> int:
    """A file descriptor on the regular file ``path`` opened with ``flags`` (created ``0666`` less the umask
    with ``O_CREAT``), never through a symlink, never blocking on a FIFO; ``InputError`` ending with
    ``advice`` when the entry is something else."""
    _regular_entry(path, str(path), advice)
    try:
        fd = os.open(path, flags | _REGULAR_FLAGS, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink created since the lstat
            raise InputError(f"{path}: is a symbolic link, not a regular file") from None
        raise InputError(f"{path}: cannot open ({exc.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(str(path), mode, advice)
    return fd


def remove_quietly(path: str | os.PathLike[str]) -> bool:
    """Unlink ``path`` if it is a regular file or a symlink; whether something was removed."""
    try:
        info = os.lstat(path)
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
            return False
        os.unlink(path)
        return True
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EACCES, errno.EPERM):
            raise
        return False
