"""A batch split between a lean worker and its parent: the worker aligns (no numpy), the parent checks the
coordinates first and reads the aligned ones after; the same scores and poses as one process doing all three.

Real RDKit, and a real pickle round trip (what crosses to and from a pool worker).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from rdkit import Chem
from templ_runs import templ_env

from templ_pipeline.core.batch import (
    BatchTask,
    align_batch,
    batch_query,
    has_coordinates,
    mol_to_bytes,
    sanitized_copy_without_conformers,
    score_batch,
    split_usable,
    with_positions,
)

pytestmark = pytest.mark.fast


def _task(confs: Chem.Mol, template: Chem.Mol, conf_ids: tuple[int, ...]) -> BatchTask:
    base = sanitized_copy_without_conformers(confs)
    return BatchTask(0, template, "template", batch_query(base, confs, conf_ids), conf_ids)


def _signature(result) -> list:
    return ([(s.conf_id, s.shape, s.color, s.positions.tolist()) for s in result.scored],
            [(f.conf_id, str(f.reason), f.detail) for f in result.failed])


def test_a_worker_batch_pickled_both_ways_scores_and_poses_as_one_process_does(broken_confs, template):
    broken, zero, nan = broken_confs
    ids = [conf.GetId() for conf in broken.GetConformers()]
    whole = score_batch(_task(broken, template, tuple(ids)))
    usable, unusable = split_usable(broken, ids)
    assert [(f.conf_id, str(f.reason)) for f in unusable] == [(zero, "no_coordinates"), (nan, "no_coordinates")]
    # all at once, as the check of one conformer says one by one
    assert [cid for cid in ids if not has_coordinates(broken.GetConformer(cid).GetPositions())] == [zero, nan]
    assert usable == [cid for cid in ids if cid not in (zero, nan)]
    sent = pickle.loads(pickle.dumps(_task(broken, template, tuple(usable))))  # to the worker
    returned = pickle.loads(pickle.dumps(align_batch(sent)))  # and back
    assert returned.scored == [] and [cid for cid, _, _ in returned.aligned_scores] == usable
    arrived = with_positions(returned)
    assert arrived.aligned is None and arrived.aligned_scores == []
    arrived.failed = sorted([*unusable, *arrived.failed], key=lambda failure: failure.conf_id)
    # the coordinates crossed in double precision: equal to the last bit, not approximately
    assert _signature(arrived) == _signature(whole)
    assert [f.conf_id for f in whole.failed] == [zero, nan]


def test_a_batch_with_nothing_aligned_sends_no_molecule_back(broken_confs, template):
    broken, _, _ = broken_confs
    result = align_batch(_task(broken, template, ()))
    assert result.aligned is None and with_positions(result) is result
    assert pickle.loads(pickle.dumps(result)).aligned is None


def test_the_aligned_molecule_is_pickled_with_double_precision_coordinates(query_confs, template):
    conf_id = query_confs.GetConformers()[0].GetId()
    result = align_batch(_task(query_confs, template, (conf_id,)))
    state = result.__getstate__()
    assert state["aligned"] == mol_to_bytes(result.aligned)
    back = pickle.loads(pickle.dumps(result))
    assert np.array_equal(back.aligned.GetConformer(conf_id).GetPositions(),
                          result.aligned.GetConformer(conf_id).GetPositions())


_LEAN = """
import json, pickle, sys
from templ_pipeline.core.batch import align_batch
result = align_batch(pickle.loads(sys.stdin.buffer.read()))
print(json.dumps({"numpy": "numpy" in sys.modules, "aligned": len(result.aligned_scores)}))
"""


def test_aligning_a_batch_loads_no_numpy(query_confs, template):
    conf_ids = tuple(conf.GetId() for conf in query_confs.GetConformers())[:3]
    done = subprocess.run([sys.executable, "-c", _LEAN], input=pickle.dumps(_task(query_confs, template, conf_ids)),
                          capture_output=True, env=templ_env(), timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads(done.stdout) == {"numpy": False, "aligned": 3}
