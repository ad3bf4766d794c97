"""TEMPL used as a library prints nothing unless the application configures logging (the Python convention)
and wires telemetry's recorder in (the chemistry emits typed events and imports no telemetry).

Real scripts in subprocesses, real RDKit, sizing as a user's script gets it (``TEMPL_EXACT_WORKERS``
cleared, so asking 4 workers for a few conformers is a reduction, as it is outside the test suite).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from templ_runs import templ_env

pytestmark = pytest.mark.fast

LOOP = textwrap.dedent("""
    import logging, sys
    from templ_pipeline.core.conformers import generate_conformers
    from templ_pipeline.core.scoring import select_best
    from templ_pipeline.io import examples

    if "configured" in sys.argv[1:]:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    if "recorded" in sys.argv[1:]:
        from templ_pipeline import telemetry
        from templ_pipeline.core import events
        events.subscribe_process(telemetry.observe)
    template = next(pair.template for pair in examples() if pair.name == "mpro")
    for seed in range(3):
        confs = generate_conformers("O=C(Nc1cccnc1)c1ccc(F)cc1OC", 6, seed=seed, n_workers=2)
        best = select_best(confs, template, n_workers=4)
        assert set(best) == {"shape", "color", "combo"}
""")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOOP, *args], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, env=templ_env(["TEMPL_EXACT_WORKERS"]))


def test_a_script_that_configured_no_logging_prints_nothing_in_a_select_best_loop():
    done = _run()
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")


def test_logging_alone_hears_nothing_the_recorder_is_what_turns_events_into_lines():
    done = _run("configured")
    assert done.returncode == 0, done.stderr
    assert "executor.workers_reduced" not in done.stderr


def test_a_script_that_wired_the_recorder_and_configured_logging_hears_the_sizing_decisions_at_info():
    done = _run("configured", "recorded")
    assert done.returncode == 0, done.stderr
    reductions = [line for line in done.stderr.splitlines() if "executor.workers_reduced" in line]
    assert len(reductions) >= 3, done.stderr  # one call at least per loop turn
    for line in reductions:
        level, logger, message = line.split(" ", 2)
        assert (level, logger) == ("INFO", "templ.executor"), line
        assert json.loads(message)["reason"] in ("small_work", "cpu_limit"), line
