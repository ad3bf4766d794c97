"""Pure pieces of start-failure handling: the kernel's refusal count, errno from C++ errors, signals."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from templ_pipeline.core.limits import cgroup
from templ_pipeline.core.limits.classify import errno_of, is_start_refusal, refusal_evidence
from templ_pipeline.core.native_call import call_interruptibly

pytestmark = pytest.mark.fast


@pytest.mark.parametrize("text, count", [
    ("max 0\n", 0),
    ("max 17\n", 17),
    ("max 3\nmax.imposed 2\n", 3),  # newer kernels add lines; only "max" is read
    ("", None),
    ("max lots\n", None),
    (None, None),
])
def test_parse_pids_events(text, count):
    assert cgroup.parse_pids_events(text) == count
    assert cgroup.parse_pids_events(None if text is None else text.encode()) == count


def test_refusals_are_summed_over_levels_and_unknown_when_unreadable(tmp_path):
    levels = []
    for name, events in (("leaf", "max 2\n"), ("parent", "max 1\n"), ("no-events", None)):
        level = tmp_path / name
        level.mkdir()
        (level / "pids.max").write_text("10\n")
        (level / "pids.current").write_text("3\n")
        if events is not None:
            (level / "pids.events").write_text(events)
        levels.append(cgroup.Level(str(level / "pids.max"), str(level / "pids.current")))
    assert cgroup.read_pids_refusals(levels) == 3
    assert cgroup.read_pids_refusals(levels[2:]) is None
    assert cgroup.read_pids_refusals([]) is None


def test_refusal_evidence_needs_a_rise():
    assert refusal_evidence(None, 4) is None
    assert refusal_evidence(4, None) is None
    assert refusal_evidence(4, 4) is None
    found = refusal_evidence(4, 6)
    assert found is not None and found.cause == "pids_cgroup" and found.errno == errno.EAGAIN
    assert "4 -> 6" in found.detail


def test_errno_of_a_cpp_system_error_and_of_python_thread_errors():
    # RDKit's refused std::thread reaches Python as this RuntimeError (measured in a full pids cgroup)
    assert errno_of(RuntimeError(os.strerror(errno.EAGAIN))) == errno.EAGAIN
    assert errno_of(RuntimeError(os.strerror(errno.EPERM))) == errno.EPERM
    assert errno_of(RuntimeError("can't start new thread")) is None
    assert errno_of(RuntimeError("Resource temporarily unavailable, maybe")) is None
    assert is_start_refusal(RuntimeError("can't start new thread"))
    assert is_start_refusal(RuntimeError(os.strerror(errno.EAGAIN)))
    assert is_start_refusal(BlockingIOError(errno.EAGAIN, "fork"))
    assert not is_start_refusal(RuntimeError("Invariant violation"))
    assert not is_start_refusal(OSError(errno.ENOENT, "gone"))


def test_call_interruptibly_returns_raises_and_runs_inline_off_the_main_thread():
    assert call_interruptibly(lambda: 41 + 1, name="t") == 42
    with pytest.raises(ZeroDivisionError):
        call_interruptibly(lambda: 1 / 0, name="t")
    seen = []
    worker = threading.Thread(target=lambda: seen.append(call_interruptibly(threading.current_thread, name="t")))
    worker.start()
    worker.join(30)
    assert seen == [worker]  # off the main thread the call runs where it is


SIGNALS = textwrap.dedent("""
    import os, signal, sys, time
    from templ_pipeline.interrupts import Interrupted, signals_raise
    with signals_raise():
        try:
            os.kill(os.getpid(), signal.SIG%s)
            time.sleep(30)
            print("not interrupted")
        except Interrupted as stop:
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal while cleaning up is ignored
            time.sleep(0.2)
            print(stop.name, stop.exit_code)
    print("handlers restored", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
""")


@pytest.mark.parametrize("name, code", [("TERM", 143), ("INT", 130)])
def test_signals_raise_once_and_restore_the_handlers(name, code):
    result = subprocess.run([sys.executable, "-c", SIGNALS % name], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == [f"SIG{name} {code}", "handlers restored True"]


def test_seccomp_mode_of_proc_status():
    from templ_pipeline.core.limits.procfs import SECCOMP_FILTER, seccomp_mode

    assert seccomp_mode(b"Name:\tpython\nSeccomp:\t2\nSeccomp_filters:\t1\n") == SECCOMP_FILTER
    assert seccomp_mode(b"Seccomp:\t0\n") == 0
    assert seccomp_mode(b"Name:\tpython\n") is None and seccomp_mode(None) is None
