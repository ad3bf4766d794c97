"""The wheel as a user gets it: built from the working tree, installed into a fresh venv outside the checkout.

An editable install finds everything in the checkout and so hides what the wheel
lacks (``templ demo`` once failed from a wheel: ``data/examples.csv`` was not
package data). These tests build the wheel from a copy of the tree, install it
with its dependencies into a new virtualenv in a temporary directory, and run the
CLI from there, with no path into the checkout.
"""

from __future__ import annotations

import ast
import email
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from templ_runs import run_templ, templ_env

from templ_pipeline import __version__
from templ_pipeline.cli.dashboards import deployed_files, export
from templ_pipeline.errors import InputError

REPO = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 600
RUN_TIMEOUT = 300


#: What points Python at the checkout, left out of the fresh venv's environment.
CHECKOUT_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")


def _working_files() -> list[str]:
    """The files a clone of the working tree has: tracked or new, not ignored (no venv, no build output)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, timeout=RUN_TIMEOUT, check=True).stdout
    return [name for name in listed.split("\0") if name and (REPO / name).is_file()]


def _run(argv: list[str], cwd: Path, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=templ_env(CHECKOUT_VARIABLES), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built (isolated, as pip builds it for a user) from a copy of the working tree."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    for relative in _working_files():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, source / relative)
    out = base / "dist"
    done = _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(source)],
                cwd=base, timeout=INSTALL_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("templ_pipeline-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv, outside the checkout, with the wheel and its dependencies installed."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    done = _run([sys.executable, "-m", "venv", str(venv)], cwd=venv.parent)
    assert done.returncode == 0, done.stderr
    done = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], cwd=venv.parent,
                timeout=INSTALL_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def test_the_wheel_installs_one_import_package_with_its_data_and_license(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = f"templ_pipeline-{__version__}.dist-info"
        top_level = {name.split("/", 1)[0] for name in names} - {dist_info}
        metadata = email.message_from_bytes(archive.read(f"{dist_info}/METADATA"))
    assert top_level == {"templ_pipeline"}  # no generic `telemetry` or `dashboards` package in users' environments
    assert {"templ_pipeline/telemetry/catalog.py",
            "templ_pipeline/data/examples.csv", "templ_pipeline/data/screen_library.smi",
            "templ_pipeline/dashboards/grafana/dashboards/templ-executor.json",
            "templ_pipeline/dashboards/prometheus/alerts.yml", "templ_pipeline/py.typed",
            f"{dist_info}/licenses/LICENSE"} <= names
    assert metadata["Version"] == __version__
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.11"
    assert "Topic :: Scientific/Engineering :: Chemistry" in metadata.get_all("Classifier")
    assert not any(req.startswith("psutil") for req in metadata.get_all("Requires-Dist") if "extra ==" not in req)


def test_the_wheel_ships_the_generated_dashboard_files_and_none_of_their_generators(wheel):
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name.removeprefix("templ_pipeline/dashboards/") for name in archive.namelist()
                   if name.startswith("templ_pipeline/dashboards/")}
    # the generators import grafana-foundation-sdk, a test-only dependency: installed, they could not be imported
    assert sorted(name for name in shipped if name.endswith(".py")) == []
    assert shipped == {str(relative) for relative in _committed_deployed_files()}


@pytest.mark.slow
def test_demo_doctor_and_dashboards_run_from_a_fresh_venv(fresh_venv, tmp_path):
    templ = str(fresh_venv / "bin" / "templ")
    python = str(fresh_venv / "bin" / "python")
    probe = ("import templ_pipeline, sys; print(templ_pipeline.__file__); import importlib.util as u; "
             "print(u.find_spec('telemetry'), u.find_spec('dashboards'))")
    where = _run([python, "-c", probe], cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    location, specs = where.stdout.splitlines()
    assert Path(location).is_relative_to(fresh_venv) and specs == "None None"

    demo = _run([templ, "demo", "--num-conformers", "20", "--output", "demo.sdf", "--no-metrics-server"], cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (tmp_path / "demo.sdf").stat().st_size > 0

    doctor = _run([templ, "doctor", "--json"], cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stderr[-3000:]
    assert json.loads(doctor.stdout)["status"] in ("ok", "warning", "critical")

    exported = _run([templ, "dashboards", "export", "deploy"], cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    deploy = tmp_path / "deploy"
    written = {path.relative_to(deploy) for path in deploy.rglob("*") if path.is_file()}
    assert written == _committed_deployed_files()
    for relative in written:
        assert (deploy / relative).read_bytes() == (REPO / "dashboards" / relative).read_bytes()
    generators = _run([python, "-c", "import templ_pipeline.dashboards.generate"], cwd=tmp_path)
    assert "No module named 'templ_pipeline.dashboards.generate'" in generators.stderr


# --- the import names ------------------------------------------------------------------------------

def _top_level_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        found += [f"{path.relative_to(REPO)}:{node.lineno} {name}" for name in names
                  if name.split(".")[0] in ("telemetry", "dashboards")]
    return found


def test_nothing_imports_telemetry_or_dashboards_by_their_folder_names():
    # Run from the checkout, `import telemetry` would load the folder a second time beside
    # templ_pipeline.telemetry: two metric registries, two tracer setups.
    paths = sorted(p for base in ("templ_pipeline", "telemetry", "dashboards", "benchmarks", "tests", "scripts")
                   for p in (REPO / base).rglob("*.py"))
    assert paths
    assert [hit for path in paths for hit in _top_level_imports(path)] == []


# --- templ dashboards export ------------------------------------------------------------------------

def _committed_deployed_files() -> set[Path]:
    """The files under dashboards/grafana, prometheus and compose, relative to dashboards/."""
    return {path.relative_to(REPO / "dashboards") for base in ("grafana", "prometheus", "compose")
            for path in (REPO / "dashboards" / base).rglob("*") if path.is_file()}


def test_export_writes_every_deployed_file_as_committed(tmp_path):
    written = export(tmp_path / "deploy")
    committed = _committed_deployed_files()
    assert {path.relative_to(tmp_path / "deploy") for path in written} == committed == {
        Path(*relative.parts) for relative in deployed_files()}
    for path in written:
        assert path.read_bytes() == (REPO / "dashboards" / path.relative_to(tmp_path / "deploy")).read_bytes()


def test_export_replaces_files_only_when_asked_and_never_a_symlink(tmp_path):
    target = tmp_path / "deploy"
    export(target)
    alerts = target / "prometheus" / "alerts.yml"
    alerts.write_text("edited\n")
    with pytest.raises(InputError, match="pass --overwrite"):
        export(target)
    assert alerts.read_text() == "edited\n"
    export(target, overwrite=True)
    assert alerts.read_bytes() == (REPO / "dashboards" / "prometheus" / "alerts.yml").read_bytes()

    outside = tmp_path / "outside.yml"
    outside.write_text("not ours\n")
    alerts.unlink()
    alerts.symlink_to(outside)
    with pytest.raises(InputError, match="symbolic link"):
        export(target, overwrite=True)
    assert alerts.is_symlink() and outside.read_text() == "not ours\n"


def test_export_command_says_what_is_in_the_way(tmp_path):
    (tmp_path / "deploy").write_text("a file\n")
    done = run_templ("dashboards", "export", tmp_path / "deploy", timeout=RUN_TIMEOUT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'deploy'}: exists and is not a directory"]


def test_the_compose_image_copies_everything_the_build_reads():
    # The compose stack's image runs `pip install .` on the files it copies: a file the
    # build reads (readme, license, a mapped package folder) missing there fails the build.
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", "setup.py", project["project"]["readme"], *project["project"]["license-files"],
              "templ_pipeline", *project["tool"]["setuptools"]["package-dir"].values()}
    copied = set()
    for line in (REPO / "dashboards" / "compose" / "templ.Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            copied |= set(line.split()[1:-1])
    assert needed <= copied, sorted(needed - copied)
