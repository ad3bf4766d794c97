"""Campaign workers recycled between queries (their memory grew, or they ran their quota): real workers, real files.

A recycled worker is ended only after its query's outcome has arrived, so every query still has exactly one row,
and a fresh worker scores as the old one did: the rows and poses are those of a campaign without recycling.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest
from rdkit import Chem
from templ_runs import run_templ, templ_env

from templ_pipeline.campaign.outputs import read_scores
from templ_pipeline.campaign.recycling import (
    GROWTH_ENV,
    QUERIES_ENV,
    RecyclePolicy,
    parse_statm,
    resident_bytes,
)
from templ_pipeline.core.events import ReplacementReason, WorkerReplaced

QUERIES = [(f"amide_{k}_{n}", f"{'C' * k}Oc1ccc(cc1)C(=O)N{r}")
           for k in range(1, 4) for n, r in enumerate(["C", "CC", "C1CC1", "CCO"])]


def _screen(template_sdf: Path, queries: Path, out: Path, **env: str) -> list[dict]:
    """``templ screen`` on 2 workers at 4 conformers; the run's JSON log records."""
    log = out.parent / f"{out.name}.log.jsonl"
    done = run_templ("screen", "--template", template_sdf, "--queries", queries, "--output-dir", out, "-n", "4",
                     "-w", "2", "--exact-workers", "--no-metrics-server", "--log-format", "json", "--log-file", log,
                     env=templ_env([QUERIES_ENV, GROWTH_ENV], **env))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


def _rows(out: Path) -> dict[str, dict[str, str]]:
    rows = read_scores(out / "scores.csv")
    by_id = {row["query_id"]: {k: v for k, v in row.items() if k != "seconds"} for row in rows}
    assert len(by_id) == len(rows), "a query has two rows"
    return by_id


def _poses(out: Path) -> list[tuple[str, str, dict[str, str]]]:
    found = [(mol.GetProp("_Name"), Chem.MolToMolBlock(mol), {k: v for k, v in mol.GetPropsAsDict().items()
                                                              if k != "seconds"})
             for mol in Chem.SDMolSupplier(str(out / "poses.sdf"), removeHs=False)]
    return sorted(found, key=lambda pose: pose[0])


@pytest.fixture(scope="module")
def queries(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recycling") / "queries.smi"
    path.write_text("".join(f"{smiles} {name}\n" for name, smiles in QUERIES))
    return path


def test_workers_recycled_every_two_queries_give_the_rows_and_poses_of_workers_kept(template_sdf, queries,
                                                                                    tmp_path):
    kept = _screen(template_sdf, queries, tmp_path / "kept")
    recycled = _screen(template_sdf, queries, tmp_path / "recycled", **{QUERIES_ENV: "2"})
    assert not [record for record in kept if record["event"] == "campaign.worker_replaced"]
    replaced = [record for record in recycled if record["event"] == "campaign.worker_replaced"]
    # each worker slot recycles after every second query; the last worker in each slot may have run fewer
    assert len(QUERIES) // 2 - 1 <= len(replaced) <= len(QUERIES) // 2, replaced
    assert {(record["reason"], record["level"]) for record in replaced} == {("recycled", "info")}
    assert all("ran 2 queries" in record["detail"] for record in replaced), replaced
    assert sorted(_rows(tmp_path / "recycled")) == sorted(name for name, _ in QUERIES)
    assert _rows(tmp_path / "recycled") == _rows(tmp_path / "kept")
    assert len(_poses(tmp_path / "kept")) == len(QUERIES)
    assert _poses(tmp_path / "recycled") == _poses(tmp_path / "kept")


def test_a_worker_recycled_after_each_query_hands_over_between_queries_and_runs_each_once(template):
    from templ_pipeline.campaign.pool import QueryPool
    from templ_pipeline.campaign.task import CampaignSettings, QueryTask
    from templ_pipeline.core.batch import mol_to_bytes

    events: list[object] = []
    settings = CampaignSettings((mol_to_bytes(template),), ("t",), 4, 42, "combo")
    pool = QueryPool(1, settings, events.append, query_timeout=60, recycle=RecyclePolicy(max_queries=1, growth=0))
    finished, pids = [], []
    try:
        pool.start()
        deadline = time.monotonic() + 120
        for index, (name, smiles) in enumerate(QUERIES[:3]):
            while not pool.idle() and time.monotonic() < deadline:
                pool.wait(0.2)
            (worker,) = pool.idle()
            pids.append(worker.pid)
            assert pool.dispatch(worker, QueryTask(index, name, smiles))
            arrived = []
            while not arrived and time.monotonic() < deadline:
                arrived = pool.wait(0.5).finished
            finished += arrived
            assert not psutil.pid_exists(worker.pid), "the recycled worker is still there"
    finally:
        pool.shutdown()
    assert [(task.index, outcome.status) for task, outcome in finished] == [(0, "ok"), (1, "ok"), (2, "ok")]
    assert len(set(pids)) == 3, pids
    replaced = [event for event in events if isinstance(event, WorkerReplaced)]
    assert [event.reason for event in replaced] == [ReplacementReason.RECYCLED] * 3, events
    assert [f"worker {pid} recycled" in event.detail for pid, event in zip(pids, replaced, strict=True)] == [True] * 3


def test_a_worker_is_recycled_at_its_quota_or_past_its_memory_growth_and_not_before():
    policy = RecyclePolicy(max_queries=3, growth=0.5)
    assert policy.reason(2, 100 * 2**20, 150 * 2**20) is None
    assert "ran 3 queries" in (policy.reason(3, 100 * 2**20, 100 * 2**20) or "")
    assert "grew from 100 MB after its first query to 151 MB" in (policy.reason(1, 100 * 2**20, 151 * 2**20) or "")
    assert RecyclePolicy(max_queries=0, growth=0).reason(10**6, 1, 10**12) is None


def test_the_environment_sets_the_quota_and_the_growth_and_a_value_not_a_number_leaves_the_default():
    assert RecyclePolicy.from_environment({QUERIES_ENV: "2", GROWTH_ENV: "0.25"}) == RecyclePolicy(2, 0.25)
    assert RecyclePolicy.from_environment({QUERIES_ENV: "0", GROWTH_ENV: "0"}) == RecyclePolicy(0, 0.0)
    assert RecyclePolicy.from_environment({QUERIES_ENV: "many", GROWTH_ENV: "-1"}) == RecyclePolicy()
    assert RecyclePolicy.from_environment({}) == RecyclePolicy()


def test_resident_memory_is_statm_s_second_field_in_pages():
    assert parse_statm(b"25000 2400 600 1 0 3000 0\n", 4096) == 2400 * 4096
    assert parse_statm(None, 4096) is None and parse_statm(b"25000\n", 4096) is None
    here, seen = resident_bytes(), psutil.Process().memory_info().rss
    assert abs(here - seen) < 16 * 2**20, (here, seen)
