"""``templ select-best --executor dask`` and ``templ doctor --scheduler``, run as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dask_fixtures import closed_port, dask_cluster  # noqa: F401  (fixture)
from rdkit import Chem
from templ_runs import run_templ

from templ_pipeline import doctor
from templ_pipeline.core.thread_manager import LIMIT_NAMES


@pytest.fixture(scope="module")
def files(tmp_path_factory, template, query_confs) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dask_cli")
    paths = {"template": root / "template.sdf", "conformers": root / "conformers.sdf", "root": root}
    with Chem.SDWriter(str(paths["template"])) as writer:
        writer.write(template)
    with Chem.SDWriter(str(paths["conformers"])) as writer:
        for conf in query_confs.GetConformers():
            writer.write(query_confs, confId=conf.GetId())
    return paths


def test_select_best_on_a_scheduler_matches_the_local_run(dask_cluster, files):
    poses = {}
    for name, options in (("local", ()), ("dask", ("--executor", "dask", "--scheduler", dask_cluster.address))):
        out = files["root"] / f"{name}.sdf"
        result = run_templ("select-best", "-t", files["template"], "-c", files["conformers"], "-o", out,
                           "--all-ranked", "-w", "2", "--no-metrics-server", *options)
        assert result.returncode == 0, result.stderr
        poses[name] = [(m.GetIntProp("conformer_id"), m.GetDoubleProp("combo")) for m in Chem.SDMolSupplier(str(out))]
        assert "scored 24, failed 0" in result.stdout
    assert "executor dask;" in result.stdout
    assert poses["dask"] == poses["local"]


def test_scheduler_without_dask_executor_is_bad_input(files):
    result = run_templ("select-best", "-t", files["template"], "-c", files["conformers"],
                       "-o", files["root"] / "x.sdf", "--scheduler", "tcp://127.0.0.1:8786")
    assert result.returncode == 2
    assert "--scheduler needs --executor dask" in result.stderr


def test_doctor_reports_each_dask_worker(dask_cluster):
    pids = set(dask_cluster.worker_pids().values())
    result = run_templ("doctor", "--json", "--scheduler", dask_cluster.address)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    workers = report["dask_workers"]
    assert report["dask_scheduler"] == dask_cluster.address
    assert {worker["pid"] for worker in workers} == pids
    for worker in workers:
        assert worker["nthreads"] == 1 and worker["threads"] >= 1 and worker["status"] in ("ok", "warning")
        assert worker["binding_limit"] in LIMIT_NAMES and worker["headroom"] > 0
    table = run_templ("doctor", "--scheduler", dask_cluster.address)
    assert table.returncode == 0, table.stderr
    assert "Dask workers of" in table.stdout and "binding limit" in table.stdout


def test_doctor_with_unreachable_scheduler_says_so():
    address = closed_port()
    report = doctor.build_report()
    doctor.add_dask_workers(report, address)
    assert report["dask_workers"] is None
    assert any(address in warning and "unreachable" in warning for warning in report["warnings"])
