"""Scripts without ``if __name__ == "__main__":``, as most scientists write them, run once.

Each test writes a real script to ``tmp_path`` and runs it in a real Python
subprocess. The script's top level appends a line (its pid and ``__name__``) to
a file in ``tmp_path`` every time it runs, so a worker that ran the script again
(as the stdlib's spawn makes it, as ``__mp_main__``) shows as one line more. The
child keeps ``TEMPL_EXACT_WORKERS=1`` (set by conftest), so small work still
uses the pool, and runs on the default start method (spawn).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from templ_runs import TEMPL_SCRIPT, templ_env

TIMEOUT = 180
#: Left out of the runs' environment: the default start method, spawn, is the one that imports __main__.
DEFAULT_START_METHOD = ("TEMPL_MP_START_METHOD",)
QUERY = "O=C(Nc1cccnc1)c1ccc(F)cc1OC"

# The top level every script starts with: one line per run, then the imports.
PRELUDE = textwrap.dedent('''
    import json
    import os

    with open(RUNS, "a") as runs:  # one line each time this top level runs, in any process
        runs.write(f"{os.getpid()} {__name__}\\n")

    from templ_pipeline.io import examples

    template = next(example.template for example in examples() if example.name == "mpro")
''')

SCORING = textwrap.dedent('''
    from templ_pipeline.core.conformers import generate_conformers
    from templ_pipeline.core.scoring import select_best_with_report


    def ranked(n_workers):
        selection = select_best_with_report(confs, template, n_workers=n_workers)
        kinds = [kind.value for kind in selection.report.executor_kinds]
        return kinds, [[item.conf_id, item.shape, item.color, item.positions.tolist()] for item in selection.ordered]
''')

SCORE_AT_TOP_LEVEL = SCORING + textwrap.dedent(f'''
    confs = generate_conformers({QUERY!r}, 12, seed=11)
    kinds, pooled = ranked(2)
    _, here = ranked(1)
    print(json.dumps({{"kinds": kinds, "pooled": pooled, "here": here}}))
''')

SCORE_GUARDED = SCORING + textwrap.dedent(f'''
    if __name__ == "__main__":
        confs = generate_conformers({QUERY!r}, 12, seed=11)
        kinds, pooled = ranked(2)
        _, here = ranked(1)
        print(json.dumps({{"kinds": kinds, "pooled": pooled, "here": here}}))
''')

CONFORMERS = textwrap.dedent(f'''
    from templ_pipeline.core.conformers import generate_conformers
    from templ_pipeline.core.events import WorkersGranted

    events = []
    threaded = generate_conformers({QUERY!r}, 6, seed=11, n_workers=2, observers=(events.append,))
    single = generate_conformers({QUERY!r}, 6, seed=11, n_workers=1)
    granted = [event.granted for event in events if isinstance(event, WorkersGranted)]
    print(json.dumps({{"granted": granted,
                      "threaded": [conf.GetPositions().tolist() for conf in threaded.GetConformers()],
                      "single": [conf.GetPositions().tolist() for conf in single.GetConformers()]}}))
''')

CAMPAIGN = textwrap.dedent('''
    from templ_pipeline.campaign.runner import ScreenOptions, screen

    SMILES = ["CC(=O)Nc1cccnc1", "c1ccccc1O", "O=C(Nc1cccnc1)c1ccc(F)cc1OC", "CCOC(=O)c1ccccc1"]


    def campaign(workers):
        results = list(screen(SMILES, [template], ScreenOptions(num_conformers=4, workers=workers)))
        best = {}
        for result in results:
            top = result.best("combo")
            best[result.query_id] = [result.ok, top.conf_id, top.shape, top.color, top.record]
        return sorted({result.kind.value for result in results}), best


    kinds, pooled = campaign(2)
    _, here = campaign(1)
    print(json.dumps({"kinds": kinds, "pooled": pooled, "here": here}))
''')

# A batch function of the script itself: the workers do not import the script, so it cannot run there.
MAIN_FUNCTION = textwrap.dedent(f'''
    from templ_pipeline.core.batch import BatchTask, batch_query, sanitized_copy_without_conformers, score_batch
    from templ_pipeline.core.conformers import generate_conformers
    from templ_pipeline.core.executor import MonitoredExecutor


    def score_here(task):
        return score_batch(task)


    confs = generate_conformers({QUERY!r}, 4, seed=11)
    base = sanitized_copy_without_conformers(confs)
    tasks = [BatchTask(0, template, "mpro", batch_query(base, confs, [0, 1]), (0, 1)),
             BatchTask(1, template, "mpro", batch_query(base, confs, [2, 3]), (2, 3))]
    with MonitoredExecutor(2, fn=score_here, exact_workers=True) as executor:
        print(len(list(executor.run(tasks))))
''')


def _run(tmp_path: Path, body: str, *, name: str = "script.py") -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``PRELUDE + body`` as a script in ``tmp_path``; the process and the lines its top level wrote."""
    runs = tmp_path / "runs.txt"
    script = tmp_path / name
    script.write_text(PRELUDE.replace("RUNS", repr(str(runs)), 1) + body)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                          env=templ_env(DEFAULT_START_METHOD, TEMPL_EXACT_WORKERS="1"), timeout=TIMEOUT)
    return done, runs.read_text().splitlines() if runs.exists() else []


def _output(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, f"the script's output was printed {len(lines)} times: {done.stdout[:500]}"
    return json.loads(lines[0])


def _ran_once(runs: list[str]) -> None:
    assert len(runs) == 1, f"the script's top level ran {len(runs)} times: {runs}"
    assert runs[0].split()[1] == "__main__"


def test_select_best_with_workers_runs_an_unguarded_script_once(tmp_path):
    done, runs = _run(tmp_path, SCORE_AT_TOP_LEVEL)
    report = _output(done)
    _ran_once(runs)
    assert report["kinds"] == ["process"], done.stderr[-3000:]
    assert len(report["pooled"]) == 12
    assert report["pooled"] == report["here"]
    assert "fallback" not in done.stderr


def test_conformers_with_several_threads_run_an_unguarded_script_once(tmp_path):
    done, runs = _run(tmp_path, CONFORMERS)
    report = _output(done)
    _ran_once(runs)
    assert report["granted"] == [2]
    assert len(report["threaded"]) == 6
    assert report["threaded"] == report["single"]


def test_a_campaign_with_workers_runs_an_unguarded_script_once(tmp_path):
    done, runs = _run(tmp_path, CAMPAIGN)
    report = _output(done)
    _ran_once(runs)
    assert report["kinds"] == ["process"], done.stderr[-3000:]
    assert len(report["pooled"]) == 4 and all(best[0] for best in report["pooled"].values()), done.stderr[-3000:]
    assert report["pooled"] == report["here"], done.stderr[-3000:]


def test_a_guarded_script_runs_its_top_level_once_too(tmp_path):
    # the stdlib's spawn would run the lines above the guard again in each of the two workers
    done, runs = _run(tmp_path, SCORE_GUARDED)
    report = _output(done)
    _ran_once(runs)
    assert report["kinds"] == ["process"], done.stderr[-3000:]
    assert report["pooled"] == report["here"]


def test_a_batch_function_of_the_script_is_refused_by_name(tmp_path):
    done, runs = _run(tmp_path, MAIN_FUNCTION)
    assert done.returncode == 1
    assert "MainModuleReference: __main__.score_here is defined in the main module" in done.stderr
    assert done.stdout == ""
    _ran_once(runs)


def test_the_templ_launchers_workers_still_start(tmp_path, template_sdf):
    # the console script is a file that imports the CLI: spawn's init_main_from_path case
    done = subprocess.run([str(TEMPL_SCRIPT), "select-best", "-t", str(template_sdf), "-q", QUERY, "-n", "8", "-w", "2",
                           "-o", str(tmp_path / "best.sdf"), "--json", "--metrics-addr", "127.0.0.1:0"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env=templ_env(DEFAULT_START_METHOD, TEMPL_EXACT_WORKERS="1"), timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["executor_kinds"] == ["process"]
    assert summary["fallbacks"] == []
    assert summary["conformers"]["scored"] == 8
