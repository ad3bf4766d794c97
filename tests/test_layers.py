"""Dependencies point down: the chemistry (``core``) and the campaign runner import nothing of telemetry or
the CLI; they emit typed events, and telemetry observes them at the edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

PACKAGE = Path(__file__).resolve().parents[1] / "templ_pipeline"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, by its full name (``from a import b`` gives ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_core_and_campaign_import_no_telemetry_and_no_cli():
    upward = ("templ_pipeline.telemetry", "templ_pipeline.cli", "templ_pipeline.dashboards")
    found = {(str(path.relative_to(PACKAGE)), name)
             for folder in ("core", "campaign") for path in sorted((PACKAGE / folder).rglob("*.py"))
             for name in _imports(path) if name.startswith(upward)}
    assert found == set()


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "module.py"
    module.write_text("from templ_pipeline import telemetry\nimport templ_pipeline.cli.root\n")
    assert {"templ_pipeline.telemetry", "templ_pipeline.cli.root"} <= _imports(module)
