"""Run a command under a seccomp filter that makes ``clone3`` fail with EPERM, as old container engines do.

``python seccomp_exec.py COMMAND...``: loads the filter (libseccomp through pyseccomp),
then execs COMMAND, which inherits it. Docker before 20.10.10 had no rule for
``clone3`` and answered EPERM; glibc 2.34 and later use ``clone3`` for every new
thread and fall back to ``clone`` only on ENOSYS, so no thread can start.
"""

from __future__ import annotations

import errno
import os
import sys

import pyseccomp as seccomp


def main(argv: list[str]) -> None:
    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone3")
    rules.load()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
