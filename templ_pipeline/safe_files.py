"""Writing output files safely: only regular files, atomically, with the mode the umask gives.

Every file the tool writes (poses, metrics textfiles, Prometheus target files, exported
dashboards) goes through :func:`write_atomically`: the data goes to a temporary file in
the same directory, is fsynced, and is renamed over the target. A reader never sees a
half-written file, and a write that fails leaves the previous file untouched.

The target must be absent or a regular file. ``rename(2)`` replaces whatever directory
entry has the target's name: run as root, ``-o /dev/stdout`` once replaced the device
symlink with a regular file. The entry is checked with ``lstat`` (symlinks not followed)
before the temporary file is made and again just before the rename.

``tempfile.mkstemp`` creates files with mode 0600 whatever the umask, which made every
pose file private; the temporary file here is created with ``0666 & ~umask``, as
``open(2)`` with ``O_CREAT`` would create the target itself.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from templ_pipeline.errors import InputError

__all__ = ["check_target", "describe_mode", "read_umask", "remove_quietly", "write_atomically"]

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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


def check_target(path: str | os.PathLike[str], what: str = "") -> Path:
    """``path`` as a Path when it can be written here; ``InputError`` naming it otherwise.

    It must be absent or a regular file (a symlink, even to a regular file, is refused),
    in an existing, writable directory. ``what`` names the option, for the message.
    """
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise InputError(f"{label}: cannot inspect ({exc.strerror})") from None
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise InputError(f"{label}: is {describe_mode(info.st_mode)}, not a regular file; "
                         "choose a file name (nothing was written)")
    directory = path.parent
    if not directory.is_dir():
        raise InputError(f"{label}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise InputError(f"{label}: directory {directory} is not writable")
    return path


def write_atomically(path: str | os.PathLike[str], data: bytes, what: str = "") -> Path:
    """Replace ``path`` by a regular file holding ``data``, or raise and leave it as it was."""
    path = check_target(path, what)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, _OPEN_FLAGS, 0o666 & ~read_umask())
    except OSError as exc:
        raise InputError(f"{path}: cannot create a file in {path.parent} ({exc.strerror})") from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        check_target(path, what)  # the entry may have been replaced since the first check
        os.replace(temporary, path)
    except BaseException:
        remove_quietly(temporary)
        raise
    return path


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
