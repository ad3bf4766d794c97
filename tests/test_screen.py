"""``templ screen``: campaigns of many queries, run as a user runs them, with real files and real RDKit.

Every query gets one row; good queries get the best pose and scores ``templ select-best --query``
gives for the same seed and conformer count; the rows do not depend on the worker count, on a
SIGKILL and ``--resume`` half-way, or on the queries file being gzip-compressed.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from processes import descendants, run_on_a_terminal
from rdkit import Chem
from templ_runs import TEMPL, run_templ, templ_env

from templ_pipeline.campaign.dispatch_order import TAIL_PER_WORKER
from templ_pipeline.campaign.outputs import read_scores
from templ_pipeline.campaign.pool import DEPTH
from templ_pipeline.campaign.runner import ScreenOptions, screen
from templ_pipeline.core.events import (
    QueryFailureReason,
    QueryFinished,
    QueryStarted,
    ReplacementReason,
    WorkerReplaced,
)
from templ_pipeline.io import examples

CONFORMERS = "12"
GOOD = [
    ("mpro_query", "O=C(Nc1cccnc1)c1ccc(F)cc1OC"),
    ("aspirin", "CC(=O)Oc1ccccc1C(=O)O"),
    ("ibuprofen", "CC(C)Cc1ccc(cc1)C(C)C(=O)O"),
    ("caffeine", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C"),
    ("methoxytryptamine", "COc1ccc2[nH]cc(CCN)c2c1"),
]
BAD = [("broken", "C1CC("), ("word", "xyz")]
# racemic: its two enantiomers are scored as ibuprofen#1 and ibuprofen#2
ROW_IDS = sorted([*(name for name, _ in GOOD + BAD if name != "ibuprofen"), "ibuprofen#1", "ibuprofen#2"])
# 40 distinct amides: enough work (about 5 s on 2 workers) to signal a campaign half-way
SERIES = [(f"amide_{k}_{n}", f"{'C' * k}Oc1ccc(cc1)C(=O)N{r}")
          for k in range(1, 6) for n, r in enumerate(["C", "CC", "C1CC1", "c1ccccc1", "CCO", "CCN", "C(C)C", "CC#N"])]
# measured here: ETKDG takes 148 s for 10 conformers of this chain; any limit of a few seconds cuts it
SLOW = ("peg60", "C" + "OCC" * 60 + "O")


def write_smi(path: Path, queries: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{smiles} {name}\n" for name, smiles in queries))
    return path


def screen_args(template: Path, queries: Path, out: Path, *extra: object) -> list[object]:
    return ["screen", "--template", template, "--queries", queries, "--output-dir", out, "-n", CONFORMERS,
            "--no-metrics-server", "--log-format", "json", "--log-file", out.parent / f"{out.name}.log.jsonl", *extra]


def write_templates(path: Path, templates: list[Chem.Mol]) -> Path:
    with Chem.SDWriter(str(path)) as writer:
        for mol in templates:
            writer.write(mol)
    return path


def rows_without_time(directory: Path) -> dict[str, dict[str, str]]:
    """scores.csv by query id, without the ``seconds`` column (the only one that may differ)."""
    rows = read_scores(directory / "scores.csv")
    by_id = {row["query_id"]: {k: v for k, v in row.items() if k != "seconds"} for row in rows}
    assert len(by_id) == len(rows), "a query id appears twice"
    return by_id


def poses(directory: Path) -> dict[str, Chem.Mol]:
    found = {mol.GetProp("_Name"): mol for mol in Chem.SDMolSupplier(str(directory / "poses.sdf"), removeHs=False)}
    return found


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    return write_smi(tmp_path_factory.mktemp("library") / "queries.smi", GOOD + BAD)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, template_sdf, library) -> Path:
    """The library screened on 2 workers."""
    out = tmp_path_factory.mktemp("campaign") / "two"
    done = run_templ(*screen_args(template_sdf, library, out, "-w", "2"))
    assert done.returncode == 0, done.stderr
    assert "ok 5, failed 2" in done.stdout, done.stdout
    return out


def test_every_query_has_one_row_and_bad_ones_a_reason(campaign):
    rows = rows_without_time(campaign)
    assert sorted(rows) == ROW_IDS
    for name, _ in BAD:
        assert (rows[name]["status"], rows[name]["reason"]) == ("failed", "invalid_smiles")
        assert rows[name]["shape"] == "" and rows[name]["conformer_id"] == ""
        assert (rows[name]["input_id"], rows[name]["isomers"], rows[name]["query_smiles"]) == (name, "0", "")
        assert rows[name]["detail"].startswith("cannot parse SMILES")
    for name, smiles in GOOD:
        for row in (row for row in rows.values() if row["input_id"] == name):
            assert (row["status"], row["reason"], row["input_smiles"]) == ("ok", "", smiles)
            assert Chem.MolToSmiles(Chem.MolFromSmiles(row["query_smiles"]), isomericSmiles=False) == Chem.MolToSmiles(
                Chem.MolFromSmiles(smiles), isomericSmiles=False)
            assert row["n_conformers"] == row["n_conformers_requested"] == CONFORMERS
            assert int(row["n_scored"]) + int(row["n_failed"]) == int(CONFORMERS)
    assert [(rows[f"ibuprofen#{n}"]["isomer"], rows[f"ibuprofen#{n}"]["isomers"]) for n in (1, 2)] == [
        ("1", "2"), ("2", "2")]
    assert rows["ibuprofen#1"]["preparation"] == "stereo_enumerated" and rows["aspirin"]["preparation"] == "unchanged"
    assert sorted(poses(campaign)) == sorted(name for name in ROW_IDS if name not in dict(BAD))


def test_good_queries_get_select_best_s_pose_and_scores(campaign, template_sdf, tmp_path):
    rows, found = rows_without_time(campaign), poses(campaign)
    for name, smiles in GOOD[:2]:
        out = tmp_path / f"{name}.sdf"
        done = run_templ("select-best", "-t", template_sdf, "--query", smiles, "-n", CONFORMERS, "--seed", "42",
                         "-o", out, "--no-metrics-server")
        assert done.returncode == 0, done.stderr
        (reference,) = Chem.SDMolSupplier(str(out), removeHs=False)
        row, pose = rows[name], found[name]
        assert int(row["conformer_id"]) == reference.GetIntProp("conformer_id") == pose.GetIntProp("conformer_id")
        for metric in ("shape", "color", "combo"):
            assert row[metric] == reference.GetProp(metric) == pose.GetProp(metric)  # 4 decimals in every file
        assert Chem.MolToMolBlock(pose).split("\n")[1:] != []
        assert (pose.GetConformer().GetPositions() == reference.GetConformer().GetPositions()).all()
        assert pose.GetProp("input_smiles") == smiles and pose.GetProp("template_name")


def test_one_worker_gives_the_same_rows_as_two(campaign, template_sdf, library, tmp_path):
    out = tmp_path / "one"
    done = run_templ(*screen_args(template_sdf, library, out, "-w", "1"))
    assert done.returncode == 0, done.stderr
    assert rows_without_time(out) == rows_without_time(campaign)


def test_gzip_compressed_queries_give_the_same_rows(campaign, template_sdf, library, tmp_path):
    packed = tmp_path / "queries.smi.gz"
    packed.write_bytes(gzip.compress(library.read_bytes()))
    out = tmp_path / "gz"
    done = run_templ(*screen_args(template_sdf, packed, out, "-w", "2"))
    assert done.returncode == 0, done.stderr
    assert rows_without_time(out) == rows_without_time(campaign)


def test_an_existing_directory_without_resume_is_refused_untouched(campaign, template_sdf, library):
    before = {path.name: path.read_bytes() for path in campaign.iterdir()}
    done = run_templ(*screen_args(template_sdf, library, campaign, "-w", "1"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--resume" in done.stderr and str(campaign) in done.stderr
    assert {path.name: path.read_bytes() for path in campaign.iterdir()} == before


def test_resuming_a_finished_campaign_runs_nothing_and_changes_nothing(campaign, template_sdf, library):
    before = (campaign / "scores.csv").read_bytes(), (campaign / "poses.sdf").read_bytes()
    done = run_templ(*screen_args(template_sdf, library, campaign, "-w", "2", "--resume"))
    assert done.returncode == 0, done.stderr
    assert "screened 0 queries" in done.stdout and "7 already done (resumed)" in done.stdout, done.stdout
    assert ((campaign / "scores.csv").read_bytes(), (campaign / "poses.sdf").read_bytes()) == before


def test_a_resume_with_other_options_is_refused(campaign, template_sdf, library):
    done = run_templ(*screen_args(template_sdf, library, campaign, "-w", "2", "--resume", "--seed", "7"))
    assert done.returncode == 2 and "seed" in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_sixteen_workers_are_cut_to_the_cpus_and_the_campaign_says_why(campaign, template_sdf, library, tmp_path):
    from templ_pipeline.core.limits.cpu import read_cpu_budget
    from templ_pipeline.core.sizing import EXACT_WORKERS_ENV

    cpus = read_cpu_budget().cpus
    done = run_templ(*screen_args(template_sdf, library, tmp_path / "wide", "-w", "16"),
                     env=templ_env([EXACT_WORKERS_ENV]))
    assert done.returncode == 0, done.stderr
    assert f"workers 16 -> {cpus}: cpu_limit" in done.stdout, done.stdout
    log = (tmp_path / "wide.log.jsonl").read_text()
    assert '"reason": "cpu_limit"' in log and '"task_type": "screening"' in log
    assert rows_without_time(tmp_path / "wide") == rows_without_time(campaign)


def test_unusable_input_is_one_line_and_exit_2(template_sdf, tmp_path):
    empty = tmp_path / "empty.smi"
    empty.write_text("# nothing here\n")
    for queries, expected in ((tmp_path / "missing.smi", "missing.smi"), (empty, "no query")):
        done = run_templ(*screen_args(template_sdf, queries, tmp_path / "out", "-w", "1"))
        assert done.returncode == 2 and expected in done.stderr and done.stderr.count("\n") == 1, done.stderr
    done = run_templ(*screen_args(tmp_path / "nope.sdf", empty, tmp_path / "out", "-w", "1"))
    assert done.returncode == 2 and "nope.sdf" in done.stderr
    assert not (tmp_path / "out").exists()


def test_queries_piped_on_standard_input_are_refused_with_the_reason(template_sdf, tmp_path):
    done = run_templ(*screen_args(template_sdf, Path("-"), tmp_path / "out", "-w", "1"), input="CCO ethanol\n",
                     cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "standard input" in done.stderr and "--resume" in done.stderr
    assert not (tmp_path / "out").exists()


def test_queries_in_a_fifo_or_a_device_are_refused_naming_what_they_are(template_sdf, tmp_path):
    fifo = tmp_path / "queries.smi"
    os.mkfifo(fifo)  # never opened: a writer-less FIFO would block a reader
    for queries, what in ((fifo, "is a FIFO"), (Path("/dev/null"), "is a device")):
        done = run_templ(*screen_args(template_sdf, queries, tmp_path / "out", "-w", "1"))
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert f"{queries}: {what}; queries must be in a regular file" in done.stderr, done.stderr
        assert not (tmp_path / "out").exists()


def test_a_query_over_its_time_limit_is_a_timeout_row_and_the_campaign_goes_on(template_sdf, tmp_path):
    queries = write_smi(tmp_path / "slow.smi", [SLOW, *GOOD[:2]])
    out = tmp_path / "slow"
    started = time.monotonic()
    done = run_templ(*screen_args(template_sdf, queries, out, "-w", "2", "--query-timeout", "3"))
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    rows = rows_without_time(out)
    assert (rows["peg60"]["status"], rows["peg60"]["reason"]) == ("failed", "timeout")
    assert all(rows[name]["status"] == "ok" for name, _ in GOOD[:2])
    assert took < 60, f"the campaign took {took:.0f} s: the slow query was not cut"
    log = (tmp_path / "slow.log.jsonl").read_text()
    assert "timeout" in log and "peg60" in log


def test_python_api_yields_one_result_per_query_and_replaces_lost_workers(template):
    """A worker killed under its query: the query runs again on a new worker (here to its time limit)."""
    events: list[object] = []
    queries = [SLOW[1], GOOD[0][1], BAD[0][1]]
    options = ScreenOptions(num_conformers=8, workers=2, query_timeout=6)
    results = []
    killed = False
    for result in screen(queries, [template], options, total=3, observers=(events.append,)):
        results.append(result)
        if not killed:
            busiest = _busiest_worker()
            if busiest is not None:
                busiest.kill()  # the worker busy with the slow chain (the others are done or idle)
                killed = True
    by_id = {result.query_id: result for result in results}
    assert sorted(by_id) == ["query_1", "query_2", "query_3"]
    assert by_id["query_2"].ok and by_id["query_3"].outcome.reason == QueryFailureReason.INVALID_SMILES
    assert by_id["query_1"].outcome.reason == QueryFailureReason.TIMEOUT
    replaced = [event.reason for event in events if isinstance(event, WorkerReplaced)]
    assert killed and replaced == [ReplacementReason.WORKER_LOST, ReplacementReason.TIMEOUT], replaced


def _busiest_worker(seconds: float = 0.3) -> psutil.Process | None:
    """The child process (not multiprocessing's resource tracker) that used the most CPU over the same
    ``seconds`` for all, if it used any: on a loaded machine a busy worker may get well under half a core."""
    def share(worker: psutil.Process) -> float:
        try:
            return worker.cpu_percent(None)
        except psutil.NoSuchProcess:  # it ended meanwhile
            return 0.0

    workers = []
    for child in psutil.Process().children():
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                workers.append(child)
        except psutil.NoSuchProcess:
            pass
    for worker in workers:
        share(worker)
    time.sleep(seconds)
    used, busiest = max(((share(worker), worker) for worker in workers), key=lambda pair: pair[0], default=(0.0, None))
    return busiest if used > 5 else None


def test_queries_in_flight_never_exceed_what_the_workers_hold_and_the_tail_waits_on_none(template):
    """Each worker holds the query it runs and a few waiting, outside the campaign's tail; a freed worker gets
    its next query before the finished one is written, so the in-flight count leaves out the outcomes already
    here. The last queries go to whichever worker is free: none waits on a busy one."""
    events: list[object] = []
    options = ScreenOptions(num_conformers=4, workers=2, exact_workers=True)
    queries = [f"{'C' * (1 + n % 5)}Oc1ccc(cc1)C(=O)N{'C' * (1 + n // 5)}" for n in range(30)]
    results = list(screen(queries, [template], options, total=len(queries), observers=(events.append,)))
    assert len(results) == len(queries) and all(result.ok for result in results)
    started = [event.in_flight for event in events if isinstance(event, QueryStarted)]
    finished = [event.in_flight for event in events if isinstance(event, QueryFinished)]
    assert 2 < max(started) <= 2 * DEPTH and max(finished) <= 2 * DEPTH and finished[-1] == 0, (started, finished)
    assert max(finished[-TAIL_PER_WORKER:]) <= 2, finished  # the last ones: one each at the most


# --- interrupted campaigns --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def series(tmp_path_factory, template_sdf) -> tuple[Path, Path]:
    """The 40-query series and its uninterrupted campaign."""
    root = tmp_path_factory.mktemp("series")
    queries = write_smi(root / "series.smi", SERIES)
    out = root / "whole"
    done = run_templ(*screen_args(template_sdf, queries, out, "-w", "2", "-n", "30"))
    assert done.returncode == 0, done.stderr
    return queries, out


def _start(args: list[object], log: Path) -> subprocess.Popen:
    with open(log, "w") as stderr:
        return subprocess.Popen([*TEMPL, *map(str, args)], stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                start_new_session=True)


def _wait_for_rows(proc: subprocess.Popen, scores: Path, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the campaign ended before it could be interrupted"
        if scores.exists() and scores.read_text().count("\n") > count:
            return
        time.sleep(0.05)
    pytest.fail(f"fewer than {count} rows after {timeout:.0f} s")


def _gone(processes: list[psutil.Process], timeout: float = 15) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


def _cleanup(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_sigkill_half_way_then_resume_holds_every_query_once(series, template_sdf, tmp_path):
    queries, whole = series
    out = tmp_path / "killed"
    proc = _start(screen_args(template_sdf, queries, out, "-w", "2", "-n", "30"), tmp_path / "first.txt")
    try:
        _wait_for_rows(proc, out / "scores.csv", 5)
        workers = descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)  # the parent only, as the OOM killer would
        proc.wait(timeout=30)
        assert not _gone(workers), "workers outlived their killed parent"
    finally:
        _cleanup(proc)
    partial = rows_without_time(out)
    assert 5 <= len(partial) < len(SERIES)
    done = run_templ(*screen_args(template_sdf, queries, out, "-w", "2", "-n", "30", "--resume"))
    assert done.returncode == 0, done.stderr
    assert "already done (resumed)" in done.stdout
    assert rows_without_time(out) == rows_without_time(whole)
    assert sorted(poses(out)) == sorted(poses(whole))


def test_sigterm_stops_taking_queries_and_leaves_consistent_files(series, template_sdf, tmp_path):
    queries, whole = series
    out = tmp_path / "stopped"
    proc = _start(screen_args(template_sdf, queries, out, "-w", "2", "-n", "30"), tmp_path / "stderr.txt")
    try:
        _wait_for_rows(proc, out / "scores.csv", 3)
        workers = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert proc.returncode == 143
        assert not _gone(workers), "workers outlived the stopped campaign"
    finally:
        _cleanup(proc)
    err = (tmp_path / "stderr.txt").read_text()
    (line,) = [line for line in err.splitlines() if line.startswith("interrupted by SIGTERM")]
    assert "--resume" in line and "screened" in line
    rows = rows_without_time(out)
    assert (out / "scores.csv").read_text().endswith("\n")
    assert sorted(poses(out)) == sorted(name for name, row in rows.items() if row["status"] == "ok")
    assert all(rows[name] == rows_without_time(whole)[name] for name in rows)
    done = run_templ(*screen_args(template_sdf, queries, out, "-w", "2", "-n", "30", "--resume"))
    assert done.returncode == 0, done.stderr
    assert rows_without_time(out) == rows_without_time(whole)


# --- several templates ------------------------------------------------------------------------------

def test_two_templates_scored_whole_give_each_query_the_better_single_template_result(template_sdf, tmp_path):
    # --top-templates all: every template scores the same free conformers, so the better template's row is the
    # row that template gives alone (only the runner-up column, naming the other template, differs)
    other = next(example.template for example in examples() if example.name == "egfr")
    both = write_templates(tmp_path / "both.sdf", [Chem.SDMolSupplier(str(template_sdf))[0], other])
    second = write_templates(tmp_path / "second.sdf", [other])
    queries = write_smi(tmp_path / "few.smi", GOOD[:3])
    every = ("--top-templates", "all")
    single = {}
    for name, path in (("first", template_sdf), ("second", second)):
        done = run_templ(*screen_args(path, queries, tmp_path / name, "-w", "2", *every))
        assert done.returncode == 0, done.stderr
        single[name] = rows_without_time(tmp_path / name)
    done = run_templ(*screen_args(both, queries, tmp_path / "both", "-w", "2", *every))
    assert done.returncode == 0, done.stderr
    rows = rows_without_time(tmp_path / "both")
    assert sorted(single["first"]) == ["aspirin", "ibuprofen#1", "ibuprofen#2", "mpro_query"]
    for query in single["first"]:  # each stereoisomer of ibuprofen on its own, too
        best = max(single.values(), key=lambda by_id: float(by_id[query]["combo"]))[query]
        assert {**rows[query], "runner_up": ""} == best
        assert rows[query]["pose_method"] == "free" and rows[query]["pin_fallback"] == "not_selected"
    done = run_templ(*screen_args(both, queries, tmp_path / "per", "-w", "2", "--per-template", *every))
    assert done.returncode == 0, done.stderr
    per = read_scores(tmp_path / "per" / "scores.csv")
    assert len(per) == 2 * len(single["first"])
    for row in per:
        source = single["first"] if row["template_name"] == single["first"][row["query_id"]]["template_name"] else (
            single["second"])
        ignored = ("seconds", "runner_up", "template_record")  # a record of its own file, alone
        assert {k: v for k, v in row.items() if k not in ignored} == {
            k: v for k, v in source[row["query_id"]].items() if k not in ignored}


# --- a campaign under a tight pids cgroup ---------------------------------------------------------

from cgroup_fixtures import child_pids_cgroup  # noqa: E402,F401  (fixture)


@pytest.mark.parametrize("pids_max", [7, 4])
def test_a_campaign_in_a_tiny_pids_cgroup_gives_the_same_rows(child_pids_cgroup, campaign, template_sdf, library,
                                                              tmp_path, pids_max):
    """pids.max=7: the grant is cut to the workers that fit; 4: no room for one, the campaign runs in-process.
    Either way every decision names the pids cgroup and the rows are the 2-worker campaign's."""
    child_pids_cgroup.set_max(pids_max)
    out = tmp_path / "tight"
    argv = [*TEMPL, *map(str, screen_args(template_sdf, library, out, "-w", "4"))]
    done = subprocess.run(child_pids_cgroup.wrap(argv), capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    log = (tmp_path / "tight.log.jsonl").read_text()
    assert done.returncode == 0, f"{done.stderr[-3000:]}\n{log[-3000:]}"
    assert rows_without_time(out) == rows_without_time(campaign)
    assert '"reason": "pids_cgroup"' in log, log[-3000:]
    if pids_max == 4:
        assert "executor sequential" in done.stdout, done.stdout
        assert '"to_kind": "sequential"' in log
    else:
        assert "executor process;" in done.stdout, done.stdout


# --- what a campaign worker costs ----------------------------------------------------------------

def test_a_campaign_worker_costs_what_the_grant_counts(template):
    """Each worker runs the tasks the cost model counts (its main thread; BLAS at 1 thread) and the
    pool starts no thread in the parent: the grant for task type screening counts no pool threads."""
    from templ_pipeline.campaign.pool import QueryPool
    from templ_pipeline.campaign.task import CampaignSettings, QueryTask
    from templ_pipeline.core.batch import mol_to_bytes
    from templ_pipeline.core.thread_manager import _task_cost

    cost = _task_cost("screening", "process")
    settings = CampaignSettings((mol_to_bytes(template),), ("t",), 8, 42, "combo")
    parent_threads = psutil.Process().num_threads()
    pool = QueryPool(2, settings, lambda event: None, query_timeout=60)
    try:
        pool.start()
        deadline = time.monotonic() + 120
        while pool.starting() and time.monotonic() < deadline:
            pool.wait(0.2)
        assert not pool.starting(), "the workers did not become ready"
        for worker in pool.idle():  # a query first, so RDKit and numpy have started whatever they start
            assert pool.dispatch(worker, QueryTask(worker.pid, "q", GOOD[0][1]))
        finished = []
        while len(finished) < 2 and time.monotonic() < deadline:
            finished += pool.wait(0.5).finished
        assert [outcome.status for _, outcome in finished] == ["ok", "ok"]
        threads = [psutil.Process(worker.pid).num_threads() for worker in pool.idle()]
        assert threads == [cost.per_worker] * 2, (threads, cost)
        assert cost.pool_helpers == 0 and psutil.Process().num_threads() == parent_threads
    finally:
        pool.shutdown()


def test_a_terminal_shows_done_of_total_rate_failures_and_time_left(template_sdf, library, tmp_path):
    argv = [*TEMPL, *map(str, screen_args(template_sdf, library, tmp_path / "tty", "-w", "2"))]
    code, output = run_on_a_terminal(argv, 160)  # rich draws its bar to the pty's width
    text = output.decode(errors="replace")
    assert code == 0, text[-3000:]
    assert "7/7" in text and "queries/s" in text and "2 failed" in text and "ETA" in text, text[-3000:]


def test_input_conformers_are_scored_as_given_and_are_not_a_shortfall(template_sdf, tmp_path):
    """--use-input-conformers: consecutive records with one name are one query's conformers; asking for
    them is asking for that many, so 3 records against -n 12 is no 'fewer_conformers' row."""
    from templ_pipeline.core.conformers import generate_conformers

    confs = generate_conformers(GOOD[0][1], 3, seed=5)
    queries = tmp_path / "confs.sdf"
    with Chem.SDWriter(str(queries)) as writer:
        for conf in confs.GetConformers():
            confs.SetProp("_Name", "mpro_query")
            writer.write(confs, confId=conf.GetId())
    out = tmp_path / "given"
    done = run_templ(*screen_args(template_sdf, queries, out, "-w", "1", "--use-input-conformers"))
    assert done.returncode == 0, done.stderr
    (row,) = read_scores(out / "scores.csv")
    assert (row["query_id"], row["status"], row["reason"], row["n_conformers"]) == ("mpro_query", "ok", "", "3")
    assert "fewer conformers" not in done.stdout, done.stdout


def test_poses_per_query_keeps_the_best_distinct_poses_after_the_same_best_row(campaign, template_sdf, library,
                                                                                tmp_path):
    import numpy as np

    out = tmp_path / "three"
    done = run_templ(*screen_args(template_sdf, library, out, "-w", "2", "--poses-per-query", "3"))
    assert done.returncode == 0, done.stderr
    best = rows_without_time(campaign)
    rows = [{k: v for k, v in row.items() if k != "seconds"} for row in read_scores(out / "scores.csv")]
    by_id: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_id.setdefault(row["query_id"], []).append(row)
    assert sorted(by_id) == ROW_IDS
    found = list(Chem.SDMolSupplier(str(out / "poses.sdf"), removeHs=False))
    for query_id, kept in by_id.items():
        assert kept[0] == best[query_id]
        if kept[0]["status"] != "ok":
            continue
        assert [row["pose_rank"] for row in kept] == [str(n) for n in range(1, len(kept) + 1)] and len(kept) <= 3
        assert [float(row["combo"]) for row in kept] == sorted((float(row["combo"]) for row in kept), reverse=True)
        mine = [Chem.RemoveHs(mol).GetConformer().GetPositions() for mol in found if mol.GetProp("_Name") == query_id]
        assert len(mine) == len(kept)
        for first in range(len(mine)):
            for second in range(first + 1, len(mine)):
                assert np.sqrt(((mine[first] - mine[second]) ** 2).sum(axis=1).mean()) > 0.5
