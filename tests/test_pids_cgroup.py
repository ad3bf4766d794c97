"""The tight child pids cgroup of ``templ stress``: a real limit inside, nothing left behind, even on error."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from templ_pipeline.pids_cgroup import PREFIX, CgroupUnavailable, find_hierarchy

pytestmark = pytest.mark.fast

SCENARIO = textwrap.dedent(
    """
    import json, os, subprocess, threading
    from pathlib import Path
    from templ_pipeline.pids_cgroup import find_hierarchy, tight_pids_cgroup

    before = Path("/proc/self/cgroup").read_text()
    seen = {}
    sleeper = None
    try:
        with tight_pids_cgroup(find_hierarchy(), 3) as child:
            seen["inside"] = str(child) in {str(find_hierarchy().mount) + line.split(":")[2]
                                            for line in Path("/proc/self/cgroup").read_text().splitlines()}
            seen["max"] = int((child / "pids.max").read_text()) - int((child / "pids.current").read_text())
            sleeper = subprocess.Popen(["sleep", "30"])  # started inside: must be sent home, not killed
            release, started = threading.Event(), []
            try:
                while len(started) < 100:
                    thread = threading.Thread(target=release.wait)
                    thread.start()
                    started.append(thread)
            except RuntimeError:
                pass
            finally:
                release.set()
                for thread in started:
                    thread.join()
            seen["threads_started"] = len(started)
            raise KeyError("boom")
    except KeyError:
        seen["raised"] = True
    seen["back_home"] = Path("/proc/self/cgroup").read_text() == before
    seen["sleeper_home"] = Path(f"/proc/{sleeper.pid}/cgroup").read_text() == before
    seen["sleeper_alive"] = sleeper.poll() is None
    sleeper.kill()
    seen["pid"] = os.getpid()
    print(json.dumps(seen))
    """
)


def test_child_cgroup_limits_tasks_and_is_undone_on_error():
    try:
        mount = find_hierarchy().mount
    except CgroupUnavailable as exc:
        pytest.skip(str(exc))
    result = subprocess.run([sys.executable, "-c", SCENARIO], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["inside"] and seen["max"] == 3
    assert seen["threads_started"] < 3  # the limit is real: the sleeper took one of the three
    assert seen["raised"] and seen["back_home"]
    assert seen["sleeper_home"] and seen["sleeper_alive"]
    assert not list(mount.glob(f"{PREFIX}{seen['pid']}-*"))
