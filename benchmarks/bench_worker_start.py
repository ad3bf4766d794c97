"""What a process worker costs to start (goal: worker import < 100 ms).

``worker_import_ms``: the median wall time of fresh interpreters that import what
a pool worker imports (``templ_pipeline.core.batch`` and ``.worker_init``), less
the median of empty ones (``python -c pass``); RDKit alone is reported next to
it, as the floor (a pool worker aligns without numpy: the parent reads the
coordinates), and numpy alone, what the worker no longer loads. A fresh
interpreter also pays for the multiprocessing modules that ``worker_init``
needs for its process class (about 20 ms on 2 cores); a spawned worker has
loaded them before it imports anything of ours. ``cold_start_ms``: in a fresh parent, acquire a 2-worker process pool
from a new ``PoolRegistry`` and run a one-conformer batch on every worker;
measured with a plain parent and with the ``templ`` CLI as the parent's main
module (as ``python -m templ_pipeline.cli`` sets it), which spawn workers would
import again.

``command_ms``: what a user waits for a ``templ`` command that does almost nothing, in a fresh process
as it is run (``/metrics`` served, as by default, on a free port): ``--version``, ``doctor --json``,
``select-best`` of one conformer and ``screen`` of one query of one conformer at one worker on the bundled
template. These are the fixed costs every run pays (start-up, workers, telemetry, exit); reported, no goal.

``python benchmarks/bench_worker_start.py`` prints JSON; :func:`run` returns the same dict.
Everything runs in child interpreters, so ``PYTHONPATH`` chooses the tree measured.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import sized
from benchmarks.goals import Comparison, Goal

WORKER_IMPORT_GOAL_MS = 100.0
FORBIDDEN = ("rich", "structlog", "prometheus_client", "opentelemetry.sdk", "typer")
TIMEOUT_SECONDS = 120
TEMPL = [sys.executable, "-m", "templ_pipeline.cli"]
COMMAND_WORDS = {"version": "--version", "doctor": "doctor --json", "select_best": "select-best -n 1",
                 "screen": "screen -n 1 -w 1, one query"}

WORKER_IMPORTS = "import templ_pipeline.core.batch, templ_pipeline.core.worker_init"
FLOOR_IMPORTS = "import rdkit.Chem, rdkit.Chem.rdShapeAlign"
NUMPY_IMPORTS = "import numpy"

_MODULES = """
import json, sys
{imports}
print(json.dumps({{"modules": len(sys.modules), "forbidden": [m for m in {forbidden!r} if m in sys.modules]}}))
"""

# argv: "plain" or "cli", then the worker count. Prints the timings as JSON.
_COLD_START = """
import json, sys, time
if sys.argv[1] == "cli":
    import importlib.util
    import templ_pipeline.cli
    # What `python -m templ_pipeline.cli` records, and all that spawn reads of it.
    sys.modules["__main__"].__spec__ = importlib.util.find_spec("templ_pipeline.cli")
from rdkit import Chem
from rdkit.Chem import AllChem
from templ_pipeline.core.batch import BatchTask, align_batch
from templ_pipeline.core.pools import PoolRegistry

workers = int(sys.argv[2])
mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
AllChem.EmbedMolecule(mol, randomSeed=7)
task = BatchTask(0, mol, "ethanol", Chem.Mol(mol), (0,))
registry = PoolRegistry()
started = time.perf_counter()
pool, _ = registry.acquire("process", workers)
acquired = time.perf_counter()
answered = set()
for _ in range(1000):  # a worker that is still starting leaves the tasks to the others
    futures = [pool.submit(align_batch, task) for _ in range(workers)]  # what the executor's pools run
    answered.update(future.result(timeout=120).pid for future in futures)
    if len(answered) == workers:
        break
finished = time.perf_counter()
registry.shutdown_all()
print(json.dumps({"acquire_ms": (acquired - started) * 1000, "cold_start_ms": (finished - started) * 1000,
                  "workers_answered": len(answered)}))
"""


def _python(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=TIMEOUT_SECONDS, check=True)
    return done.stdout


def _wall_ms(code: str) -> float:
    started = time.perf_counter()
    _python(code)
    return (time.perf_counter() - started) * 1000


def import_times(repeats: int = 9) -> dict[str, float]:
    """Median interpreter wall times (ms): empty, with the worker imports, with RDKit only, with numpy only.

    They are interleaved so that load from elsewhere on the machine falls on all of them.
    """
    samples: dict[str, list[float]] = {"empty": [], "worker": [], "floor": [], "numpy": []}
    for _ in range(repeats):
        samples["empty"].append(_wall_ms("pass"))
        samples["worker"].append(_wall_ms(WORKER_IMPORTS))
        samples["floor"].append(_wall_ms(FLOOR_IMPORTS))
        samples["numpy"].append(_wall_ms(NUMPY_IMPORTS))
    return {name: statistics.median(times) for name, times in samples.items()}


def loaded(imports: str) -> dict:
    """Module count, and which of :data:`FORBIDDEN` are loaded, after ``imports`` in a fresh interpreter."""
    return json.loads(_python(_MODULES.format(imports=imports, forbidden=FORBIDDEN)))


def cold_start(parent: str, workers: int = 2, repeats: int = 3) -> dict:
    """Median of ``repeats`` fresh parents (``parent`` is "plain" or "cli")."""
    runs = [json.loads(_python(_COLD_START, parent, str(workers))) for _ in range(repeats)]
    return {
        "acquire_ms": round(statistics.median(r["acquire_ms"] for r in runs), 1),
        "cold_start_ms": round(statistics.median(r["cold_start_ms"] for r in runs), 1),
        "workers_answered": min(r["workers_answered"] for r in runs),
    }


def command_times(repeats: int = 5) -> dict[str, float]:
    """Median wall times (ms) of fresh ``templ`` commands doing almost nothing (see the module's docstring)."""
    from importlib import resources

    template = str(resources.files("templ_pipeline.data") / "mpro_template.sdf")
    serve = ("--metrics-addr", "127.0.0.1:0")
    samples: dict[str, list[float]] = {"version": [], "doctor": [], "select_best": [], "screen": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        queries = root / "one.smi"
        queries.write_text("CC(=O)Oc1ccccc1C(=O)O aspirin\n")
        commands = {
            "version": ["--version"],
            "doctor": ["doctor", "--json"],
            "select_best": ["select-best", "-t", template, "-q", "CC(=O)Oc1ccccc1C(=O)O", "-n", "1", "-w", "1",
                            "-o", str(root / "pose.sdf"), *serve],
            "screen": ["screen", "-t", template, "-q", str(queries), "-n", "1", "-w", "1", *serve],
        }
        for repeat in range(repeats):
            for name, args in commands.items():
                if name == "screen":
                    args = [*args, "-o", str(root / f"screen_{repeat}")]
                started = time.perf_counter()
                subprocess.run([*TEMPL, *args], capture_output=True, timeout=TIMEOUT_SECONDS, check=True,
                               stdin=subprocess.DEVNULL)
                samples[name].append((time.perf_counter() - started) * 1000)
    return {name: round(statistics.median(times), 1) for name, times in samples.items()}


def run(repeats: int | None = None) -> dict:
    """Run the benchmark (about 30 s on 2 cores)."""
    repeats = repeats or sized(9, 1)
    times = import_times(repeats)
    worker_import = times["worker"] - times["empty"]
    worker, floor = loaded(WORKER_IMPORTS), loaded(FLOOR_IMPORTS)
    command_repeats = sized(5, 1)
    commands = command_times(command_repeats)
    return {
        "empty_interpreter_ms": round(times["empty"], 1),
        "worker_import_ms": round(worker_import, 1),
        "worker_import_modules": worker["modules"],
        "worker_import_forbidden": worker["forbidden"],
        "rdkit_import_ms": round(times["floor"] - times["empty"], 1),
        "rdkit_modules": floor["modules"],
        "numpy_import_ms": round(times["numpy"] - times["empty"], 1),
        "pool_2_workers_plain_parent": cold_start("plain", repeats=sized(3, 1)),
        "pool_2_workers_cli_parent": cold_start("cli", repeats=sized(3, 1)),
        "goal": f"worker_import_ms < {WORKER_IMPORT_GOAL_MS:.0f}",
        "worker_import_ok": worker_import < WORKER_IMPORT_GOAL_MS,
        "command_ms": commands,
        "goals": [Goal("worker_import", f"a fresh interpreter importing what a pool worker imports vs an empty one, "
                       f"median of {repeats}", round(worker_import, 1), Comparison.BELOW, WORKER_IMPORT_GOAL_MS,
                       "ms").as_dict(),
                  *(Goal(f"command_{name}", f"a fresh `templ {COMMAND_WORDS[name]}` doing almost nothing, as a user "
                         f"runs it (a command that runs work serves /metrics), median of {command_repeats}", ms,
                         unit="ms").as_dict()
                    for name, ms in commands.items())],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
