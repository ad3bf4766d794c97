"""Lean workers: a pool worker loads RDKit and the batch code, nothing more (not numpy: the parent reads the
coordinates); OpenTelemetry's API only when a task carries a trace.

Checked in fresh interpreters (what importing the worker modules loads), in real
spawned workers of a ``PoolRegistry`` pool (whose workers do not run the parent's
main module again, as the stdlib's spawn does: not the ``templ`` CLI, not a
script), and on the telemetry package itself: lazy exports, and no import cycle.
"""

from __future__ import annotations

import ast
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from templ_runs import templ_env

from templ_pipeline import telemetry

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[1]
TELEMETRY = "templ_pipeline.telemetry"
FORBIDDEN = ("rich", "structlog", "prometheus_client", "opentelemetry.sdk", "typer")
TIMEOUT = 120


def _python(*argv: str, cwd: Path | None = None) -> str:
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd,
                          env=templ_env(tests_importable=True), timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _forbidden(modules: list[str]) -> list[str]:
    return [name for name in modules if name.split(".")[0] in FORBIDDEN or name.startswith(FORBIDDEN)]


# --- a fresh interpreter ---------------------------------------------------------------------------

_REPORT = """
import json, sys
{imports}
from worker_probe import loaded_modules, root_log_handlers
print(json.dumps({{"modules": loaded_modules(), "handlers": root_log_handlers()}}))
"""


def _opentelemetry(modules: list[str]) -> list[str]:
    return [name for name in modules if name.split(".")[0] == "opentelemetry"]


def test_importing_the_worker_modules_loads_no_cli_or_telemetry_stack():
    report = json.loads(_python("-c", _REPORT.format(
        imports="import templ_pipeline.core.batch, templ_pipeline.core.worker_init")))
    assert _forbidden(report["modules"]) == []
    assert _opentelemetry(report["modules"]) == []  # until a task carries a trace
    assert "templ_pipeline.core.events" not in report["modules"]  # the vocabularies (labels), not the events
    assert "templ_pipeline.core.pools" not in report["modules"]
    assert report["handlers"] == 0, "importing the worker modules configured logging"


def test_a_campaign_worker_imports_only_what_a_query_needs():
    report = json.loads(_python("-c", _REPORT.format(imports="import templ_pipeline.campaign.worker")))
    assert _forbidden(report["modules"]) == []
    heavy = {"templ_pipeline.campaign.runner", "templ_pipeline.campaign.queries", "templ_pipeline.campaign.outputs",
             "templ_pipeline.core.pools", "templ_pipeline.core.executor", "templ_pipeline.cli",
             "templ_pipeline.telemetry.metrics"}
    assert heavy.isdisjoint(report["modules"]), sorted(heavy & set(report["modules"]))
    assert _opentelemetry(report["modules"]) == []
    assert "templ_pipeline.core.events" not in report["modules"]  # the vocabularies and stage timings alone
    assert report["handlers"] == 0, "importing the campaign worker configured logging"


_UNPICKLED = """
import json, pickle, sys
import templ_pipeline.campaign.worker
from worker_probe import loaded_modules
before = set(loaded_modules())
pickle.loads(sys.stdin.buffer.read())
print(json.dumps(sorted(set(loaded_modules()) - before)))
"""


def test_a_campaign_worker_unpickles_the_settings_the_cli_sends_without_importing_more(tmp_path):
    """A worker unpickles its campaign's settings before its first query, and unpickling a value imports the
    module of its class: a ``--metric`` member defined beside the executor would bring the executor's modules
    into every campaign worker there (40-90 ms of a campaign's first query)."""
    from templ_pipeline.campaign.runner import campaign_settings
    from templ_pipeline.cli import screen as cli_screen
    from templ_pipeline.core.scoring import Metric  # the enum of --metric
    from templ_pipeline.core.template_choice import ChoiceOptions

    queries = tmp_path / "queries.smi"
    queries.write_text("CCO ethanol\n")
    request = cli_screen.ScreenRequest(
        template=REPO / "templ_pipeline" / "data" / "mpro_template.sdf", queries=queries,
        output_dir=tmp_path / "campaign", num_conformers=2, seed=42, workers=1, metric=Metric.COMBO, resume=False,
        per_template=False, use_input_conformers=False, query_timeout=None, smiles_column=None, id_column=None,
        exact_workers=False, choice=ChoiceOptions())  # as typer parses the command line: enum members
    prepared = cli_screen.prepare(request)
    prepared.files.close()
    sent = pickle.dumps(campaign_settings(prepared.library, prepared.options))
    done = subprocess.run([sys.executable, "-c", _UNPICKLED], input=sent, capture_output=True,
                          env=templ_env(tests_importable=True), timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout) == []


_CARRIED = """
import json, os
from templ_pipeline.core.trace_context import start_worker_span
from worker_probe import loaded_modules
untraced = start_worker_span({}, os.getpid())
before = loaded_modules()
span = start_worker_span({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, os.getpid())
print(json.dumps({"untraced": untraced is None, "before": before, "after": loaded_modules(),
                  "parent": span.finish().parent_span_id}))
"""


def test_the_trace_context_loads_opentelemetry_api_only_for_a_task_that_carries_a_trace():
    report = json.loads(_python("-c", _CARRIED))
    assert report["untraced"] and _opentelemetry(report["before"]) == []
    assert "opentelemetry.trace" in report["after"] and report["parent"] == 0xB7AD6B7169203331
    assert [m for m in report["after"] if m.startswith(TELEMETRY)] == []
    assert _forbidden(report["after"]) == []


_UNTRACED_PROGRAM = """
import json
from rdkit import Chem
from rdkit.Chem import rdDistGeom
from templ_pipeline.core.scoring import select_best
from worker_probe import loaded_modules
mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
rdDistGeom.EmbedMultipleConfs(mol, 4, randomSeed=7)
best = select_best(mol, mol, n_workers=1)
print(json.dumps({"modules": loaded_modules(), "scored": best is not None}))
"""


def test_a_program_that_does_not_trace_calls_select_best_without_loading_opentelemetry():
    """No span can be current where OpenTelemetry's trace API was never imported: the call does not import
    it to find out (8 ms of a loop's first call)."""
    report = json.loads(_python("-c", _UNTRACED_PROGRAM))
    assert report["scored"]
    assert _opentelemetry(report["modules"]) == []


# --- real pool workers -----------------------------------------------------------------------------

# The parent of a one-worker pool. It runs a batch on the worker, then reports what the
# worker has loaded: first for a pool from a PoolRegistry (as the executor gets them),
# then, as a control, for a pool on the stdlib's spawn context. argv[1]:
#   "module": the CLI is an importable main module (``__main__.__spec__`` names the CLI's root
#             module: all that spawn's preparation data reads);
#   "script": run as a file that imports the CLI's ``main``, as the ``templ`` launcher does;
#   "other":  an ordinary script, which the workers must not run again.
PARENT = textwrap.dedent('''
    import importlib.util
    import json
    import multiprocessing
    import sys
    from concurrent.futures import ProcessPoolExecutor

    CLI = sys.argv[1] in ("module", "script")
    # in a process's sys.modules when this script's top level ran there (multiprocessing itself
    # always aliases __mp_main__ to a worker's __main__, so that name says nothing)
    sys.modules["templ_parent_script_ran"] = sys.modules[__name__]
    if sys.argv[1] == "script":
        from templ_pipeline.cli import main  # noqa: F401  the templ launcher's import
    elif sys.argv[1] == "module":
        import templ_pipeline.cli.root  # noqa: F401
    if CLI:
        from templ_pipeline.cli import app  # noqa: F401  every command's module, as templ --help loads them


    def defined_in_main():
        return "found"


    def refused(obj):
        from templ_pipeline.core.worker_init import refuse_main_references

        try:
            refuse_main_references(obj)
        except Exception as error:
            return type(error).__name__
        return None


    def report(registry, task):
        from templ_pipeline.core.batch import align_batch
        from worker_probe import loaded_modules, root_log_handlers

        pool, _ = registry.acquire("process", 1)
        try:
            result = pool.submit(align_batch, task).result(timeout=120)  # what the executor's pools run
            return {"scored": len(result.aligned_scores), "modules": pool.submit(loaded_modules).result(timeout=120),
                    "handlers": pool.submit(root_log_handlers).result(timeout=120)}
        finally:
            registry.release(pool)
            registry.shutdown_all()


    if __name__ == "__main__":
        if sys.argv[1] == "module":
            sys.modules["__main__"].__spec__ = importlib.util.find_spec("templ_pipeline.cli.root")
        from rdkit import Chem
        from rdkit.Chem import AllChem

        from templ_pipeline.core.batch import BatchTask
        from templ_pipeline.core.pools import PoolRegistry

        mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
        AllChem.EmbedMolecule(mol, randomSeed=7)
        task = BatchTask(0, mol, "ethanol", Chem.Mol(mol), (0,))
        stock = PoolRegistry(lambda kind, n: ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")))
        print(json.dumps({"lean": report(PoolRegistry(), task), "stock": report(stock, task),
                          "refused": refused(defined_in_main)}))
''')


@pytest.fixture(scope="module")
def parent_script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("parent") / "templ_parent.py"
    path.write_text(PARENT)
    return path


def _workers(parent_script: Path, mode: str) -> dict:
    return json.loads(_python(str(parent_script), mode, cwd=parent_script.parent))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["module", "script"])
def test_a_worker_of_the_cli_loads_neither_the_cli_nor_its_stack(parent_script, mode):
    report = _workers(parent_script, mode)
    lean, stock = report["lean"], report["stock"]
    assert lean["scored"] == stock["scored"] == 1
    # the control: a stock spawn worker runs the CLI again, with everything it imports
    assert set(_forbidden(stock["modules"])) >= {"rich", "typer"}, "the parent is not set up as the CLI"
    assert _forbidden(lean["modules"]) == []
    assert not {"templ_pipeline.cli", "templ_pipeline.core.pools", "numpy"} & set(lean["modules"])
    assert "templ_pipeline.core.batch" in lean["modules"]
    assert lean["handlers"] == 0


@pytest.mark.slow
def test_a_worker_of_an_ordinary_script_does_not_run_it(parent_script):
    report = _workers(parent_script, "other")
    lean, stock = report["lean"], report["stock"]
    assert "templ_parent_script_ran" in stock["modules"], "the control: a stock spawn worker runs the script again"
    assert "templ_parent_script_ran" not in lean["modules"]
    assert lean["scored"] == stock["scored"] == 1
    assert _forbidden(lean["modules"]) == []
    # what the workers could not find is refused in the parent, by name
    assert report["refused"] == "MainModuleReference"


# --- the telemetry package -------------------------------------------------------------------------

def test_every_exported_name_resolves_to_its_submodule():
    from templ_pipeline.telemetry import catalog, recorder, state

    assert telemetry.catalog is catalog
    assert telemetry.observe is recorder.observe
    assert isinstance(recorder.process_recorder(), recorder.Recorder)
    assert telemetry.disabled is state.disabled
    assert {name for name in telemetry.__all__ if getattr(telemetry, name) is None} == set()
    with pytest.raises(AttributeError):
        telemetry.no_such_name  # noqa: B018


def test_a_bare_import_of_the_package_loads_no_submodule():
    modules = json.loads(_python("-c", _REPORT.format(imports="import templ_pipeline.telemetry")))["modules"]
    assert [m for m in modules if m.startswith(TELEMETRY)] == [TELEMETRY]
    names = _python("-c", "from templ_pipeline import telemetry; from templ_pipeline.telemetry import *; "
                          "print(sorted(telemetry.__all__) == "
                          "sorted(n for n in dir() if n in telemetry.__all__))")
    assert names.strip() == "True"


def telemetry_import_graph(root: Path = REPO / "telemetry") -> dict[str, set[str]]:
    """``module -> telemetry modules it imports``, at module level or inside functions."""
    submodules = {path.stem for path in root.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(root.glob("*.py")):
        name = TELEMETRY if path.stem == "__init__" else f"{TELEMETRY}.{path.stem}"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names if alias.name.startswith(TELEMETRY)}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == TELEMETRY:
                deps |= {f"{TELEMETRY}.{a.name}" if a.name in submodules else TELEMETRY for a in node.names}
            elif (isinstance(node, ast.ImportFrom) and node.level == 0
                  and (node.module or "").startswith(f"{TELEMETRY}.")):
                deps.add(node.module)
        graph[name] = deps - {name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle of ``graph``, each once, starting at its smallest module."""
    found: set[tuple[str, ...]] = set()

    def walk(path: list[str]) -> None:
        for dep in sorted(graph.get(path[-1], ())):
            if dep in path:
                cycle = path[path.index(dep):]
                start = cycle.index(min(cycle))
                found.add(tuple(cycle[start:] + cycle[:start]))
            else:
                walk([*path, dep])

    for module in graph:
        walk([module])
    return [list(cycle) for cycle in sorted(found)]


def test_import_cycles_are_found():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_telemetry_modules_import_without_a_cycle():
    graph = telemetry_import_graph()
    assert {f"{TELEMETRY}.guard", f"{TELEMETRY}.metrics", f"{TELEMETRY}.server"} <= set(graph)
    assert import_cycles(graph) == []


@pytest.mark.parametrize("module", ["guard", "metrics", "server", "tracing"])
def test_each_former_cycle_module_imports_alone(module):
    _python("-c", f"import {TELEMETRY}.{module}")
