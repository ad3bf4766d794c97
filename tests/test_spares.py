"""Spare campaign workers: started by ``templ screen`` before its imports, adopted by the campaign's pool.

A spare is a campaign worker started before the campaign knows its settings; the pool
adopts as many as it was granted and the rest are ended. Checked with real worker
processes, real ``templ screen`` runs, and signals sent while a run is starting: the
rows and poses do not depend on spares, and no process of a run outlives it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from processes import descendants
from rdkit import Chem
from templ_runs import TEMPL, templ_env
from test_screen import GOOD, poses, rows_without_time, screen_args, write_smi

from templ_pipeline.campaign import spares
from templ_pipeline.campaign.import_turns import ImportTurns
from templ_pipeline.campaign.pool import QueryPool
from templ_pipeline.campaign.task import CampaignSettings, QueryRunner, QueryTask
from templ_pipeline.core.batch import mol_to_bytes
from templ_pipeline.entry import spares_wanted

GONE_TIMEOUT = 10.0  # seconds after a run's exit for every process it started to be gone
START_TIMEOUT = 60.0  # seconds for a run to start its spares, or a worker to be ready
MARK = "TEMPL_TEST_SPARES_RUN"  # in the environment of a run and every process it starts


@pytest.fixture
def no_spares_left():
    """Every spare a test started is ended when it is done."""
    yield
    spares.end()


# --- which command lines get spares ----------------------------------------------------------------

@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    template = tmp_path / "template.sdf"
    template.write_text("")
    queries = write_smi(tmp_path / "queries.smi", GOOD[:1])
    return {"template": template, "queries": queries, "out": tmp_path / "out"}


def _line(inputs: dict[str, Path], *extra: str) -> list[str]:
    return ["screen", "-t", str(inputs["template"]), "-q", str(inputs["queries"]), "-o", str(inputs["out"]), *extra]


@pytest.mark.fast
def test_a_runnable_screen_line_gets_its_worker_count_of_spares_in_any_spelling(inputs):
    for workers in (["-w", "3"], ["-w3"], ["--workers", "3"], ["--workers=3"]):
        assert spares_wanted(_line(inputs, *workers), {}) == 3
    assert spares_wanted(_line(inputs), {}) == len(os.sched_getaffinity(0))


@pytest.mark.fast
def test_help_other_commands_dask_and_input_that_would_exit_2_get_no_spares(inputs, tmp_path):
    assert spares_wanted(_line(inputs, "--help"), {}) == 0
    assert spares_wanted(["select-best", "-t", str(inputs["template"]), "-w", "2"], {}) == 0
    assert spares_wanted(["--help"], {}) == 0
    assert spares_wanted([], {}) == 0
    assert spares_wanted(_line(inputs, "--executor", "dask"), {}) == 0
    assert spares_wanted(_line(inputs, "--executor=dask"), {}) == 0
    assert spares_wanted(_line(inputs, "-w", "0"), {}) == 0
    assert spares_wanted(_line(inputs, "-w", "two"), {}) == 0
    assert spares_wanted(_line(inputs), {"_TEMPL_COMPLETE": "complete_bash"}) == 0  # shell completion
    missing = dict(inputs, queries=tmp_path / "missing.smi")
    assert spares_wanted(_line(missing), {}) == 0
    assert spares_wanted(["screen", "-t", str(inputs["template"]), "-q", str(inputs["queries"])], {}) == 0


@pytest.mark.fast
def test_an_output_directory_in_use_gets_spares_only_when_resumed(inputs):
    inputs["out"].mkdir()
    assert spares_wanted(_line(inputs, "-w", "2"), {}) == 2  # empty
    (inputs["out"] / "scores.csv").write_text("")
    assert spares_wanted(_line(inputs, "-w", "2"), {}) == 0
    assert spares_wanted(_line(inputs, "-w", "2", "--resume"), {}) == 2


# --- the pool adopts spares ------------------------------------------------------------------------

def _settings(template: Chem.Mol) -> CampaignSettings:
    return CampaignSettings((mol_to_bytes(template),), ("mpro",), 8, 42, "combo")


def _run_one(pool: QueryPool, task: QueryTask) -> object:
    deadline = time.monotonic() + START_TIMEOUT
    while not pool.idle():
        assert time.monotonic() < deadline, "no worker became ready"
        pool.wait(0.2)
    assert pool.dispatch(pool.idle()[0], task)
    while True:
        assert time.monotonic() < deadline, "the query did not finish"
        arrivals = pool.wait(0.2)
        if arrivals.finished:
            return arrivals.finished[0][1]


def test_a_pool_adopts_the_spares_it_was_granted_ends_the_rest_and_scores_as_in_process(template, no_spares_left):
    if spares.start(2) < 2:
        pytest.skip("this machine's CPUs or limits leave no room for two spares")
    first, second = (spare.process for spare in spares._spares)
    pool = QueryPool(1, _settings(template), lambda event: None, query_timeout=None)
    try:
        pool.start()
        assert [worker.pid for worker in pool._workers] == [first.pid], "the pool started a worker of its own"
        assert not second.is_alive() and spares.waiting() == 0, "the spare beyond the grant was not ended"
        task = QueryTask(0, "aspirin", "CC(=O)Oc1ccccc1C(=O)O")
        outcome = _run_one(pool, task)
    finally:
        pool.shutdown()
    here = QueryRunner(_settings(template)).run(task)
    mine, theirs = outcome.best("combo"), here.best("combo")  # type: ignore[attr-defined]
    assert (mine.conf_id, mine.shape, mine.color, mine.record) == (theirs.conf_id, theirs.shape, theirs.color,
                                                                   theirs.record)
    assert not first.is_alive()


def test_a_spare_that_never_gets_its_settings_exits_when_its_parent_closes_the_pipe(no_spares_left):
    if spares.start(1) < 1:
        pytest.skip("this machine's limits leave no room for a spare")
    (spare,) = spares.take(1)
    spare.connection.close()
    spare.process.join(START_TIMEOUT)
    assert spare.process.exitcode == 0


# --- templ screen ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_templ_screen_writes_the_same_rows_and_poses_with_spares_as_without(template_sdf, tmp_path):
    queries = write_smi(tmp_path / "queries.smi", GOOD)
    with_spares, without = tmp_path / "with", tmp_path / "without"
    done = subprocess.run([*TEMPL, *map(str, screen_args(template_sdf, queries, with_spares, "-w", "2"))],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    # the CLI's main without the entry point: no spares
    argv = list(map(str, screen_args(template_sdf, queries, without, "-w", "2")))
    code = f"import sys; from templ_pipeline.cli.root import main; sys.exit(main({argv!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert rows_without_time(with_spares) == rows_without_time(without)
    assert ({name: Chem.MolToMolBlock(mol) for name, mol in poses(with_spares).items()}
            == {name: Chem.MolToMolBlock(mol) for name, mol in poses(without).items()})


def _marked() -> list[psutil.Process]:
    """Processes alive now whose environment holds this test's mark."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.environ[MARK] == process.environ().get(MARK) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


def _survivors(timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (alive := _marked()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


@pytest.fixture
def marked(monkeypatch):
    """A mark for the processes of one run (this test process carries it too, and is left out)."""
    monkeypatch.setenv(MARK, uuid.uuid4().hex)
    yield
    for process in _marked():
        if process.pid != os.getpid():
            process.kill()


@pytest.mark.parametrize("signum, code, to_group", [(signal.SIGTERM, 143, False), (signal.SIGINT, 130, True)])
def test_a_signal_while_templ_screen_starts_leaves_no_process_behind(signum, code, to_group, template_sdf, tmp_path,
                                                                     marked):
    queries = write_smi(tmp_path / "queries.smi", GOOD)
    argv = [*TEMPL, *map(str, screen_args(template_sdf, queries, tmp_path / "out", "-w", "2"))]
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                env=templ_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while len([p for p in descendants(proc.pid) if "resource_tracker" not in " ".join(p.cmdline())]) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "no two spares appeared"
            time.sleep(0.005)
        os.killpg(proc.pid, signum) if to_group else proc.send_signal(signum)
        assert proc.wait(timeout=GONE_TIMEOUT) == code, (tmp_path / "stderr.txt").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=GONE_TIMEOUT)
    survivors = [p for p in _survivors(GONE_TIMEOUT) if p.pid != os.getpid()]
    assert survivors == [], [" ".join(p.cmdline())[:160] for p in survivors]


def test_a_usage_error_after_the_spares_started_leaves_no_process_behind(template_sdf, tmp_path, marked):
    queries = write_smi(tmp_path / "queries.smi", GOOD)
    argv = [*TEMPL, *map(str, screen_args(template_sdf, queries, tmp_path / "out", "-w", "2", "--no-such-option"))]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          env=templ_env())
    assert done.returncode == 2 and "--no-such-option" in done.stderr, done.stderr
    survivors = [p for p in _survivors(GONE_TIMEOUT) if p.pid != os.getpid()]
    assert survivors == [], [" ".join(p.cmdline())[:160] for p in survivors]


def _hold_a_turn(turns: ImportTurns, name: str, log: object, seconds: float) -> None:
    with turns:
        log.send((name, "in", time.monotonic()))  # type: ignore[attr-defined]
        time.sleep(seconds)
        log.send((name, "out", time.monotonic()))  # type: ignore[attr-defined]


def test_spares_importing_in_turns_hold_them_one_at_a_time():
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # as spares start: the turns travel to the child
    turns = ImportTurns(context, 1)
    receive, send = context.Pipe(duplex=False)
    children = [context.Process(target=_hold_a_turn, args=(turns, name, send, 0.3)) for name in "ab"]
    try:
        for child in children:
            child.start()
        turns.close()
        send.close()
        marks = [receive.recv() for _ in range(4)]
    finally:
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
    assert [step for _, step, _ in marks] == ["in", "out", "in", "out"]  # never both in at once
    assert marks[0][0] == marks[1][0] != marks[2][0] == marks[3][0]
