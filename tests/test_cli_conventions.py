"""The templ command as a good citizen: --version, help, enums in help and completion, --json, ``-o -``,
a closed stdout pipe. Real ``templ`` subprocesses, real RDKit with a few conformers."""

from __future__ import annotations

import csv
import io
import json
import os
import select
import subprocess
from importlib import resources

import pytest
from rdkit import Chem
from templ_runs import TEMPL, run_templ, templ_env

import templ_pipeline
from templ_pipeline.core.conformers import generate_conformers
from templ_pipeline.core.executor import EXECUTOR_CHOICES, ExecutorChoice
from templ_pipeline.core.scoring import METRICS, Metric
from templ_pipeline.io import ExampleName, example_names, examples

pytestmark = pytest.mark.fast

QUIET = ("--no-metrics-server",)
QUERY = "O=C(Nc1cccnc1)c1ccc(F)cc1OC"


def _usage_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# --- version and help ---------------------------------------------------------------------------------

def test_version_prints_the_package_version():
    done = run_templ("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"templ {templ_pipeline.__version__}\n"


@pytest.mark.parametrize("args", [(), ("dashboards",)], ids=["templ", "templ-dashboards"])
def test_a_bare_command_prints_its_help_and_exits_0(args):
    done = run_templ(*args)
    assert done.returncode == 0, done.stderr
    assert "Usage: templ" in done.stdout and "error" not in done.stderr.lower(), done.stderr
    assert "Commands" in done.stdout


# --- one vocabulary each, offered by help and completion ---------------------------------------------

def test_each_choice_tuple_is_its_enum():
    assert METRICS == tuple(Metric) == ("shape", "color", "combo")
    assert EXECUTOR_CHOICES == tuple(ExecutorChoice) == ("auto", "process", "dask")


def test_the_example_enum_is_the_bundled_pairs():
    assert tuple(ExampleName) == example_names() == tuple(pair.name for pair in examples())
    with (resources.files("templ_pipeline") / "data" / "examples.csv").open() as handle:
        assert tuple(row["name"] for row in csv.DictReader(handle)) == example_names()


@pytest.mark.slow
def test_help_lists_the_choices():
    done = run_templ("select-best", "--help", env=templ_env(COLUMNS="200"))
    assert done.returncode == 0, done.stderr
    assert "shape|color|combo" in done.stdout and "auto|process|dask" in done.stdout
    done = run_templ("demo", "--help", env=templ_env(COLUMNS="200"))
    assert "|".join(example_names()) in done.stdout


@pytest.mark.slow
def test_an_unknown_choice_is_a_usage_error_naming_the_option():
    _usage_error(run_templ("demo", "--example", "nope", "-o", "x.sdf"), "--example")
    _usage_error(run_templ("select-best", "-t", "t.sdf", "-q", "CCO", "-o", "x.sdf", "--executor", "ray"),
                 "--executor")


def test_show_completion_prints_a_bash_script_for_templ():
    # --show-completion is for the shell the command runs in, which it finds among its parent processes: run it
    # from bash (two commands, so that bash waits rather than exec the run), whatever started the tests
    done = subprocess.run(["bash", "-c", '"$@"; exit $?', "bash", *TEMPL, "--show-completion"],
                          capture_output=True, text=True, timeout=120, env=templ_env(SHELL="/bin/bash"),
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "complete -o default -F _templ_completion templ" in done.stdout
    assert "_TEMPL_COMPLETE=complete_bash" in done.stdout


@pytest.mark.parametrize(("words", "offered"), [
    ("templ select-best --metric ", list(METRICS)),
    ("templ select-best --executor ", list(EXECUTOR_CHOICES)),
    ("templ demo --example ", list(example_names())),
    ("templ screen --metric ", list(METRICS)),
])
@pytest.mark.slow
def test_bash_completion_offers_the_values(words, offered):
    done = run_templ(env=templ_env(_TEMPL_COMPLETE="complete_bash", COMP_WORDS=words,
                                   COMP_CWORD=str(len(words.split()))))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == offered


# --- --json and -o - ----------------------------------------------------------------------------------

def test_select_best_json_is_the_only_thing_on_stdout(template_sdf, tmp_path):
    out = tmp_path / "best.sdf"
    done = run_templ("select-best", "-t", template_sdf, "-q", QUERY, "-n", "6", "-w", "1", "-o", out, "--json",
                     *QUIET)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # the whole of stdout is one JSON document
    assert summary["output"] == str(out) and summary["written"] == 1
    assert summary["conformers"] == {"total": 6, "scored": 6, "failed": 0, "failed_by_reason": {}, "templates": 1}
    assert set(summary["best"]) == set(METRICS)
    (pose,) = Chem.SDMolSupplier(str(out))
    best = summary["best"]["combo"]
    assert best["conformer_id"] == pose.GetIntProp("conformer_id")
    assert best["combo"] == pytest.approx(pose.GetDoubleProp("combo"), abs=1e-12)
    assert summary["workers"]["requested"] == 1 and summary["executor_kinds"]
    template = summary["template"]
    assert {key: template[key] for key in ("record", "name", "of", "library")} == {
        "record": 1, "name": summary["templates"][0]["name"], "of": 1, "library": 1}
    assert template["pose_method"] == "pinned" and template["pinned_atoms"] == template["core_atoms"] > 0
    assert isinstance(summary["reductions"], list) and isinstance(summary["fallbacks"], list)
    assert summary["query"]["smiles"] == Chem.MolToSmiles(Chem.MolFromSmiles(QUERY))
    seconds = summary["seconds"]  # the whole run, and the parts of it spent embedding and scoring
    assert seconds["total"] >= seconds["embedding"] + seconds["scoring"] and seconds["embedding"] > 0


@pytest.mark.skipif(not 2 <= len(os.sched_getaffinity(0)) < 8,
                    reason="needs 2 to 7 CPUs: -w 8 meets the CPU limit, and the call then has 2 workers to decline")
def test_a_limit_is_a_warning_and_a_choice_for_speed_is_not(template_sdf, tmp_path):
    """Colours on: a reduction a limit made is yellow; the sizing's own choice for a small call is plain text, or
    every small query would end in a warning."""
    done = run_templ("select-best", "-t", template_sdf, "-q", QUERY, "-n", "6", "-w", "8", "-o", tmp_path / "o.sdf",
                     *QUIET, env=templ_env(without=("TEMPL_EXACT_WORKERS",), FORCE_COLOR="1"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    limit = [line for line in lines if "scoring workers 8 -> " in line]
    choice = [line for line in lines if ": small_work (" in line]
    assert limit and choice, done.stdout
    assert limit[0].startswith("\x1b[33m") and "cpu_limit" in limit[0]
    assert "\x1b[33m" not in choice[0] and choice[0].startswith("scoring workers")


def test_a_failed_run_with_json_still_prints_its_summary_and_exits_1(template_sdf, tmp_path):
    mol = generate_conformers(QUERY, 3, seed=5)
    collapsed = tmp_path / "collapsed.sdf"  # every atom at the origin: each conformer fails, no_coordinates
    with Chem.SDWriter(str(collapsed)) as writer:
        for conf in mol.GetConformers():
            conf.SetPositions(conf.GetPositions() * 0.0)
            writer.write(mol, confId=conf.GetId())
    done = run_templ("select-best", "-t", template_sdf, "-c", collapsed, "-w", "1",
                     "-o", tmp_path / "none.sdf", "--json", *QUIET)
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert summary["written"] == 0 and summary["output"] is None
    assert summary["conformers"]["failed_by_reason"] == {"no_coordinates": 3}
    assert not (tmp_path / "none.sdf").exists()


def test_dash_output_writes_the_sdf_to_stdout_and_the_summary_to_stderr(template_sdf):
    done = run_templ("select-best", "-t", template_sdf, "-q", QUERY, "-n", "6", "-w", "1", "-o", "-",
                     "--all-ranked", *QUIET)
    assert done.returncode == 0, done.stderr
    poses = list(Chem.ForwardSDMolSupplier(io.BytesIO(done.stdout.encode())))
    assert len(poses) == 6 and all(pose is not None for pose in poses)
    assert [pose.GetIntProp("rank") for pose in poses] == list(range(1, 7))
    assert "wrote 6 pose(s) to standard output" in done.stderr


def test_demo_writes_to_stdout_too():
    done = run_templ("demo", "-n", "4", "-w", "1", "-o", "-", *QUIET)
    assert done.returncode == 0, done.stderr
    (pose,) = list(Chem.ForwardSDMolSupplier(io.BytesIO(done.stdout.encode())))
    assert pose.GetProp("_Name") == "mpro" and pose.HasProp("combo")


def test_json_with_dash_output_is_a_usage_error(template_sdf):
    _usage_error(run_templ("select-best", "-t", template_sdf, "-q", QUERY, "-o", "-", "--json", *QUIET),
                 "--json")


@pytest.mark.slow
def test_screen_json_is_the_only_thing_on_stdout(template_sdf, tmp_path):
    queries = tmp_path / "q.smi"
    queries.write_text(f"{QUERY} good\nCC(=O)Oc1ccccc1C(=O)O aspirin\nC1CC( broken\n")
    out = tmp_path / "campaign"
    done = run_templ("screen", "-t", template_sdf, "-q", queries, "-o", out, "-n", "4", "-w", "1", "--json", *QUIET)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["queries"] == {"done": 3, "ok": 2, "failed": 1, "skipped": 0, "fewer_conformers": 0,
                                  "failed_by_reason": {"invalid_smiles": 1},
                                  "first_failure": {"invalid_smiles": "cannot parse SMILES 'C1CC('"}}
    assert summary["scores"] == str(out / "scores.csv") and summary["poses"] == str(out / "poses.sdf")
    assert summary["executor_kinds"] and summary["workers"] == 1
    assert summary["metric"] == "combo" and isinstance(summary["fallbacks"], list)


# --- a reader that closes stdout early ----------------------------------------------------------------

def _read_one_line_then_close(command: list[str], env: dict[str, str], timeout: float = 300) -> tuple[bytes, int, str]:
    """Run ``command`` like ``command | head -1``: read its first line, close the pipe; (line, exit code, stderr)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                               env=env)
    try:
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        first = process.stdout.readline() if ready else b""
        process.stdout.close()  # the reader leaves after one line
        _, stderr = process.communicate(timeout=timeout)
        return first, process.returncode, stderr.decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


@pytest.mark.parametrize("args", [("doctor",), ("select-best", "--help")], ids=["doctor", "help"])
def test_a_closed_stdout_pipe_ends_the_command_quietly_with_0(args):
    first, code, stderr = _read_one_line_then_close([*TEMPL, *args], templ_env(COLUMNS="80"))
    assert first.endswith(b"\n"), "the command printed no line"
    assert code == 0, stderr
    assert "Traceback" not in stderr and "error" not in stderr.lower(), stderr


@pytest.mark.slow
def test_a_big_output_into_a_closed_pipe_still_ends_with_0(template_sdf):
    """``templ select-best -o - --all-ranked | head -1``: the SDF is far larger than a pipe's buffer."""
    command = [*TEMPL, "select-best", "-t", str(template_sdf), "-q", QUERY, "-n", "60", "-w", "1", "-o", "-",
               "--all-ranked", *QUIET]
    first, code, stderr = _read_one_line_then_close(command, templ_env())
    assert first.strip() == QUERY.encode()  # the first line of the SDF: the pose's name, the SMILES
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr


def test_main_returns_the_exit_code_in_process(capsys):
    from templ_pipeline.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"templ {templ_pipeline.__version__}"
