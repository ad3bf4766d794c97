"""Signals to a running ``templ select-best``, and a static check that nothing waits without a bound.

A run that is told to stop (SIGTERM, SIGINT) stops within seconds, says so on
stderr, writes no output (not even its temporary file) and leaves no process
behind: not its workers, not multiprocessing's resource tracker. A run that is
killed outright (SIGKILL) cannot clean up; its workers must notice and exit.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from processes import descendants, wait_until_catches
from sdf_files import write_sdf
from templ_runs import TEMPL

from templ_pipeline.core.conformers import generate_conformers

REPO = Path(__file__).resolve().parent.parent
QUERY = "O=C(Nc1cccnc1)c1ccc(F)cc1OC"
FLEXIBLE = "CC(C)Cc1ccc(cc1)C(C)C(=O)NCCCCCCNC(=O)c1ccccc1OCCOCC"
# 300 distinct ETKDG conformers, each written COPIES times: 12000 records. Measured here, -w 2 scores
# about 1500 conformers/s, so scoring lasts about 8 s (after about 6 s of reading the file): the
# signal, sent about 1 s after the workers appear, lands in the middle of scoring.
DISTINCT, COPIES = 300, 40
STOP_TIMEOUT = 10.0  # seconds from the signal to the exit
GONE_TIMEOUT = 5.0  # seconds after the exit for every process of the run to be gone
ORPHAN_TIMEOUT = 10.0  # seconds after a SIGKILL of the parent for its workers to be gone
START_TIMEOUT = 120.0  # reading 12000 records and starting the pool: "does not hang"


@pytest.fixture(scope="module")
def files(tmp_path_factory, template_sdf) -> dict:
    root = tmp_path_factory.mktemp("signals")
    big = write_sdf(root / "big.sdf", generate_conformers(QUERY, DISTINCT, seed=5, n_workers=2), copies=COPIES)
    return {"root": root, "template": template_sdf, "big": big}


def _start(argv: list[str], tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """Start a run; its stdout and stderr go to files (``_stderr``): a pipe held open by an
    orphaned worker would make reading it hang after the run itself has exited."""
    out = tmp_path / "out.sdf"
    with open(tmp_path / "stdout.txt", "w") as stdout, open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(
            [*TEMPL, "select-best", *argv, "-o", str(out), "--no-metrics-server",
             "--log-format", "json", "--log-file", str(tmp_path / "run.jsonl")],
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            start_new_session=True,  # its own process group: the test can signal or clean up all of it
        )
    return proc, out


def _stderr(out: Path) -> str:
    return (out.parent / "stderr.txt").read_text(errors="replace")


def _is_worker(process: psutil.Process) -> bool:
    try:
        return "resource_tracker" not in " ".join(process.cmdline())
    except psutil.Error:
        return False


def _descendants(pid: int) -> dict[int, psutil.Process]:
    return {p.pid: p for p in descendants(pid)}


def _wait_for_workers(proc: subprocess.Popen, out: Path, count: int, timeout: float) -> dict[int, psutil.Process]:
    """Every descendant of ``proc`` once at least ``count`` of them are workers (not the resource tracker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {count} workers appeared; "
                        f"stderr tail {_stderr(out)[-3000:]!r}")
        found = _descendants(proc.pid)
        if sum(_is_worker(p) for p in found.values()) >= count:
            return found
        time.sleep(0.05)
    pytest.fail(f"no {count} worker processes within {timeout:.0f} s; descendants {_summary(_descendants(proc.pid))}")


def _wait_for_handler(proc: subprocess.Popen, out: Path, signum: signal.Signals, timeout: float) -> None:
    """Return once the run catches ``signum``; fail if it ends or never does."""
    if (problem := wait_until_catches(proc, signum, timeout)) is not None:
        pytest.fail(f"{problem}; stderr tail {_stderr(out)[-3000:]!r}")


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _summary(processes: dict[int, psutil.Process]) -> list[str]:
    described = []
    for pid, process in processes.items():
        try:
            described.append(f"{pid} ({process.status()}): {' '.join(process.cmdline())[:160]}")
        except psutil.Error:
            described.append(f"{pid} (gone)")
    return described


def _survivors(processes: dict[int, psutil.Process], timeout: float) -> dict[int, psutil.Process]:
    deadline = time.monotonic() + timeout
    while True:
        alive = {pid: p for pid, p in processes.items() if _alive(p)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _kill_all(proc: subprocess.Popen, processes: dict[int, psutil.Process]) -> None:
    """Cleanup: SIGKILL the run, its process group and every process collected from it."""
    for process in processes.values():
        if _alive(process):
            try:
                process.kill()
            except psutil.Error:
                pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.kill()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def _temp_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*.tmp"))


def _interrupt(files: dict, tmp_path: Path, signum: signal.Signals, exit_code: int, *, to_group: bool) -> None:
    """Signal a 2-worker scoring run mid-way; check its exit, message, output and processes."""
    proc, out = _start(["--template", str(files["template"]), "--conformers", str(files["big"]), "-w", "2"],
                       tmp_path)
    collected: dict[int, psutil.Process] = {}
    try:
        collected.update(_wait_for_workers(proc, out, 2, START_TIMEOUT))
        time.sleep(1.0)  # some batches are scored
        collected.update(_descendants(proc.pid))
        assert proc.poll() is None, "the run finished before the signal: make the conformer file bigger"
        (os.killpg if to_group else os.kill)(proc.pid, signum)
        signalled = time.monotonic()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit within {STOP_TIMEOUT:.0f} s of {signum.name}; processes {_summary(collected)}; "
                        f"stderr tail:\n{_stderr(out)[-3000:]}")
        took = time.monotonic() - signalled
        err = _stderr(out)
        survivors = _survivors(collected, GONE_TIMEOUT)
        lines = [line for line in err.splitlines() if line.startswith(f"interrupted by {signum.name}")]
        problems = []
        # exit status 128+N: sys.exit(128+N), or death by the re-raised signal (-N from Popen)
        if proc.returncode not in (exit_code, -signum):
            problems.append(f"exit status {proc.returncode}, expected {exit_code}")
        if len(lines) != 1:
            problems.append(f"{len(lines)} stderr lines start with 'interrupted by {signum.name}'")
        if out.exists():
            problems.append(f"{out.name} was written")
        if _temp_files(out):
            problems.append(f"temporary files left: {_temp_files(out)}")
        if survivors:
            problems.append(f"still running {GONE_TIMEOUT:.0f} s after the exit: {_summary(survivors)}")
        assert not problems, (f"{signum.name} after {took:.1f} s wait: " + "; ".join(problems)
                              + f"\ncollected {_summary(collected)}\nstderr tail:\n{err[-3000:]}")
    finally:
        _kill_all(proc, collected)


def test_sigterm_mid_scoring_stops_cleanly(files, tmp_path):
    _interrupt(files, tmp_path, signal.SIGTERM, 143, to_group=False)


def test_sigint_to_the_process_group_mid_scoring_stops_cleanly(files, tmp_path):
    # as a terminal's Ctrl-C does: the whole foreground process group, workers included, gets SIGINT
    _interrupt(files, tmp_path, signal.SIGINT, 130, to_group=True)


def test_sigterm_during_conformer_generation_stops_cleanly(files, tmp_path):
    proc, out = _start(["--template", str(files["template"]), "--query", FLEXIBLE, "-n", "3000", "-w", "1"],
                       tmp_path)
    collected: dict[int, psutil.Process] = {}
    try:
        # Imports take about 1 s when idle and several under the suite's parallel load; a signal before the
        # handler is installed kills the run by the default action, with no message. Embedding 3000
        # conformers takes minutes, so 1 s after the handler the run is generating them.
        _wait_for_handler(proc, out, signal.SIGTERM, START_TIMEOUT)
        time.sleep(1.0)
        collected.update(_descendants(proc.pid))
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before the signal"
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit within {STOP_TIMEOUT:.0f} s of SIGTERM during conformer generation; "
                        f"stderr tail:\n{_stderr(out)[-3000:]}")
        err = _stderr(out)
        survivors = _survivors(collected, GONE_TIMEOUT)
        lines = [line for line in err.splitlines() if line.startswith("interrupted by SIGTERM")]
        problems = []
        if proc.returncode not in (143, -signal.SIGTERM):
            problems.append(f"exit status {proc.returncode}, expected 143")
        if len(lines) != 1:
            problems.append(f"{len(lines)} stderr lines start with 'interrupted by SIGTERM'")
        elif "while generating 3000 conformers" not in lines[0]:
            problems.append(f"stopped outside conformer generation: {lines[0]!r}")
        if out.exists() or _temp_files(out):
            problems.append(f"output written: {out.exists()}, temporary files {_temp_files(out)}")
        if survivors:
            problems.append(f"still running: {_summary(survivors)}")
        assert not problems, "; ".join(problems) + f"\nstderr tail:\n{err[-3000:]}"
    finally:
        _kill_all(proc, collected)


def test_sigkill_of_the_parent_leaves_no_worker_behind(files, tmp_path):
    proc, out = _start(["--template", str(files["template"]), "--conformers", str(files["big"]), "-w", "2"],
                       tmp_path)
    collected: dict[int, psutil.Process] = {}
    try:
        collected.update(_wait_for_workers(proc, out, 2, START_TIMEOUT))
        time.sleep(1.0)
        collected.update(_descendants(proc.pid))
        assert proc.poll() is None, "the run finished before the signal: make the conformer file bigger"
        workers = {pid: p for pid, p in collected.items() if _is_worker(p)}
        assert len(workers) >= 2, _summary(collected)
        proc.kill()
        proc.wait(timeout=30)
        survivors = _survivors(workers, ORPHAN_TIMEOUT)
        assert not survivors, (f"workers still running {ORPHAN_TIMEOUT:.0f} s after their parent was killed: "
                               f"{_summary(survivors)}; all collected: {_summary(collected)}")
    finally:
        _kill_all(proc, collected)


# --- static: no unbounded waits in the production code -------------------------------------------

_NO_ARGUMENT_WAITS = {"result", "join", "wait", "get", "acquire", "communicate"}


def _timeout_given(call: ast.Call, position: int) -> bool:
    """A ``timeout`` keyword that is not ``None``, or a positional argument at ``position`` (0-based)."""
    for keyword in call.keywords:
        if keyword.arg is None:  # **kwargs: cannot tell, give it the benefit of the doubt
            return True
        if keyword.arg == "timeout":
            return not (isinstance(keyword.value, ast.Constant) and keyword.value.value is None)
    return len(call.args) > position or any(isinstance(arg, ast.Starred) for arg in call.args)


def _futures_wait_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """Names bound to ``concurrent.futures.wait`` and names bound to the ``concurrent.futures`` module."""
    functions, modules = set(), {"concurrent.futures", "futures"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "concurrent.futures":
            functions |= {alias.asname or alias.name for alias in node.names if alias.name == "wait"}
        elif isinstance(node, ast.ImportFrom) and node.module == "concurrent":
            modules |= {alias.asname or alias.name for alias in node.names if alias.name == "futures"}
        elif isinstance(node, ast.Import):
            modules |= {alias.asname for alias in node.names if alias.name == "concurrent.futures" and alias.asname}
    return functions | {"wait"}, modules


def unbounded_waits(path: Path) -> list[str]:
    """``file:line: call`` for each call in ``path`` that can wait forever."""
    tree = ast.parse(path.read_text(), filename=str(path))
    wait_functions, futures_modules = _futures_wait_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func, bad = node.func, False
        if isinstance(func, ast.Attribute):
            name = func.attr
            if name in _NO_ARGUMENT_WAITS and not node.args and not node.keywords:
                bad = True  # X.result() X.join() X.wait() X.get() X.acquire() X.communicate()
            elif name == "communicate" and not _timeout_given(node, 1):
                bad = True  # communicate(input) without a timeout
            elif name == "wait" and ast.unparse(func.value) in futures_modules and not _timeout_given(node, 1):
                bad = True  # concurrent.futures.wait(fs, ...) without a timeout
            elif name in ("result", "join", "wait", "acquire", "get") and any(
                    k.arg == "timeout" and isinstance(k.value, ast.Constant) and k.value.value is None
                    for k in node.keywords):
                bad = True  # an explicit timeout=None
        elif isinstance(func, ast.Name) and func.id in wait_functions and node.args and not _timeout_given(node, 1):
            bad = True  # wait(fs, return_when=...) without a timeout
        if bad:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)[:100]}")
    return found


def test_no_code_or_test_waits_without_a_timeout():
    paths = sorted(p for base in ("templ_pipeline", "telemetry", "dashboards", "benchmarks", "tests")
                   for p in (REPO / base).rglob("*.py"))
    assert len(paths) > 10, f"found only {paths} under {REPO}"
    found = [hit for path in paths for hit in unbounded_waits(path)]
    assert not found, "calls that wait without a bound:\n" + "\n".join(found)
