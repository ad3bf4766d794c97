"""``templ stress``: bounded, drives reductions and fallbacks, and leaves no cgroup behind."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from templ_pipeline import stress
from templ_pipeline.pids_cgroup import PREFIX, CgroupUnavailable, find_hierarchy

# One round of every scenario, the pids cgroup one holding 4 s: about 8 s on an idle machine, but a
# fresh clone's `make test` (two test processes on 2 cores) once got through two of the three in 9 s.
DURATION = 15.0

RUN = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from templ_pipeline import telemetry
    from templ_pipeline import stress

    telemetry.configure(log_format="json", log_stream=open(os.devnull, "w"))
    before = Path("/proc/self/cgroup").read_text()
    summary = stress.run(float(sys.argv[1]), 4, log=lambda line: print(line, file=sys.stderr))
    print(json.dumps({"summary": summary, "pid": os.getpid(), "cgroup_before": before,
                      "cgroup_after": Path("/proc/self/cgroup").read_text()}))
    """
)


@pytest.fixture(scope="module")
def outcome() -> dict:
    """One bounded run in a child process (it may move itself between cgroups)."""
    result = subprocess.run([sys.executable, "-c", RUN, str(DURATION)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    found["log"] = result.stderr
    return found


@pytest.fixture(scope="module")
def cgroup_outcome(outcome) -> dict:
    if "pids_cgroup" in outcome["summary"]["skipped"]:
        pytest.skip(f"pids cgroup scenario unavailable here: {outcome['summary']['skipped']['pids_cgroup']}")
    return outcome


def test_fewer_than_two_workers_is_refused():
    with pytest.raises(ValueError, match="at least 2 workers"):
        stress.run(1, 1, log=lambda _line: None)


def test_run_stops_by_itself_and_reports_what_it_did(outcome):
    summary = outcome["summary"]
    assert DURATION <= summary["seconds"] < DURATION + 10
    assert summary["rounds"] >= 1
    assert summary["scenarios"]["normal"] >= 1 and summary["scenarios"]["killed_worker"] >= 1
    assert summary["conformers_scored"] >= stress.CONFORMERS
    assert summary["fallbacks"]["broken_pool"] >= 1, outcome["log"][-3000:]
    assert "stress done" in outcome["log"]


def test_unavailable_cgroup_scenario_is_said_once_and_reported(monkeypatch):
    def unavailable():
        raise CgroupUnavailable("creating a pids cgroup needs root")

    monkeypatch.setattr(stress, "find_hierarchy", unavailable)
    lines: list[str] = []
    summary = stress.run(0, 2, log=lines.append)
    assert [line for line in lines if line.startswith("pids_cgroup")] == [
        "pids_cgroup scenario skipped: creating a pids cgroup needs root"]
    assert summary["skipped"] == {"pids_cgroup": "creating a pids cgroup needs root"} and summary["rounds"] == 0


def test_tight_cgroup_cuts_the_grant_and_is_removed(cgroup_outcome):
    summary = cgroup_outcome["summary"]
    assert summary["scenarios"]["pids_cgroup"] >= 1
    assert summary["reductions"]["pids_cgroup"] >= summary["scenarios"]["pids_cgroup"]
    assert cgroup_outcome["cgroup_after"] == cgroup_outcome["cgroup_before"]
    mount = find_hierarchy().mount
    assert not list(mount.glob(f"{PREFIX}{cgroup_outcome['pid']}-*"))


def test_start_failure_race_falls_back_to_sequential(cgroup_outcome):
    summary = cgroup_outcome["summary"]
    assert summary["errors"] == {}, cgroup_outcome["log"][-3000:]
    # spawn starts the worker first (an OSError), the pool's manager thread after it
    start_failures = (summary["fallbacks"].get("process_start_failed", 0)
                      + summary["fallbacks"].get("thread_start_failed", 0))
    assert start_failures >= summary["scenarios"]["pids_cgroup"], summary
