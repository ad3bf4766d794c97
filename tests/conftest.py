"""Shared fixtures: small real molecules, generated once per test session.

The suite runs with ``TEMPL_EXACT_WORKERS=1`` (set here, so the ``templ`` runs it
starts inherit it): most tests exercise pools, ladders and limits with a few dozen
conformers and more workers than this machine's 2 CPUs, which work-aware sizing
would rightly run sequentially or on fewer workers. The sizing tests
(``tests/test_sizing.py``) clear it to test that sizing.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest
from rdkit import Chem
from sdf_files import write_sdf

from templ_pipeline.core.conformers import generate_conformers
from templ_pipeline.io import examples

QUERY_SMILES = "O=C(Nc1cccnc1)c1ccc(F)cc1OC"

os.environ["TEMPL_EXACT_WORKERS"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with a ``slow`` test first, then files with more tests: ``make test`` hands whole files to its
    processes in this order (``--dist loadfile --no-loadscope-reorder``). xdist's own order (by test count
    alone) put the long one-test files (the end-to-end runs, 20-50 s each) last, where one process ran them
    while the other had nothing left: 50 s of a 512 s suite here."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    count: dict[Path, int] = {}
    for item in items:
        count[item.path] = count.get(item.path, 0) + 1
    items.sort(key=lambda item: (item.path not in slow, -count[item.path], str(item.path)))  # stable in a file


@pytest.fixture(autouse=True)
def no_recorder_left_subscribed():
    """A test that subscribes an observer to every call of the process unsubscribes it: one left behind would
    record the next tests' calls (on a recorder whose spans and metrics they never see). It is removed here
    so that the next test starts clean, and the test that left it fails."""
    from templ_pipeline.core import events

    yield
    left = events.process_observers()
    for observer in left:
        events.unsubscribe_process(observer)
    assert not left, f"observers left subscribed to the process: {left}"


@pytest.fixture(scope="session")
def template() -> Chem.Mol:
    """A template ligand with one 3D pose (bundled example)."""
    return next(example.template for example in examples() if example.name == "mpro")


@pytest.fixture(scope="session")
def template_sdf(tmp_path_factory, template):
    """The template ligand written to an SDF file, for runs of the ``templ`` command."""
    return write_sdf(tmp_path_factory.mktemp("template") / "template.sdf", template)


@pytest.fixture(scope="session")
def query_confs() -> Chem.Mol:
    """24 ETKDG conformers of a drug-like query ligand."""
    return generate_conformers(QUERY_SMILES, 24, seed=11)


@pytest.fixture(scope="session")
def broken_confs(query_confs) -> tuple[Chem.Mol, int, int]:
    """The query's conformers with the second one's atoms all at the origin and a NaN in the fifth: (the
    molecule, the collapsed conformer's id, the NaN one's)."""
    import math

    import numpy as np

    broken = Chem.Mol(query_confs)
    ids = [conf.GetId() for conf in broken.GetConformers()]
    zero, nan = ids[1], ids[4]
    broken.GetConformer(zero).SetPositions(np.zeros((broken.GetNumAtoms(), 3)))
    positions = broken.GetConformer(nan).GetPositions()
    positions[2, 1] = math.nan
    broken.GetConformer(nan).SetPositions(positions)
    return broken, zero, nan


@contextmanager
def _recording(metrics):
    """A recorder on ``metrics`` that hears every call of the process while the test runs, as a run's telemetry
    session subscribes its own."""
    from templ_pipeline.core import events
    from templ_pipeline.telemetry.recorder import Recorder

    recorder = Recorder(metrics)
    events.subscribe_process(recorder)
    try:
        yield recorder
    finally:
        events.unsubscribe_process(recorder)


@pytest.fixture
def tel_json():
    """Telemetry on real libraries with logs rendered: in-memory spans, fresh metrics, JSON log lines in ``stream``,
    every call of the process recorded."""
    import io
    from types import SimpleNamespace

    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from templ_pipeline import telemetry

    exporter = InMemorySpanExporter()
    stream = io.StringIO()
    telemetry.testing.reset()
    telemetry.configure(span_exporter=exporter, synchronous=True, log_format="json", log_stream=stream,
                        run_id="test-run", log_level="DEBUG")
    metrics = telemetry.testing.reset_metrics()
    with _recording(metrics) as recorder:
        yield SimpleNamespace(exporter=exporter, stream=stream, metrics=metrics, registry=metrics.registry,
                              recorder=recorder)
    telemetry.testing.reset()


@pytest.fixture
def tel():
    """Telemetry on real libraries: in-memory spans (synchronous export), fresh metrics, captured logs, every call
    of the process recorded."""
    from types import SimpleNamespace

    import structlog
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from templ_pipeline import telemetry

    exporter = InMemorySpanExporter()
    telemetry.testing.reset()
    telemetry.configure(span_exporter=exporter, synchronous=True, log_format="json", run_id="test")
    metrics = telemetry.testing.reset_metrics()
    with structlog.testing.capture_logs() as logs, _recording(metrics) as recorder:
        yield SimpleNamespace(exporter=exporter, registry=metrics.registry, logs=logs, recorder=recorder)
    telemetry.testing.reset()


@pytest.fixture(scope="session")
def unscorable_conformers(tmp_path_factory) -> Path:
    """Four records of the query with every atom at the origin: each conformer fails (no_coordinates), so a
    ``select-best --conformers`` run scores nothing and exits 1. A property of the conformers, not of the
    molecule, so no check of the query up front (preparation's) can refuse it instead."""
    mol = generate_conformers(QUERY_SMILES, 4, seed=5)
    for conf in mol.GetConformers():
        conf.SetPositions(conf.GetPositions() * 0.0)
    return write_sdf(tmp_path_factory.mktemp("unscorable") / "collapsed.sdf", mol)
