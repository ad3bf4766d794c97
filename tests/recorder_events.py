"""Events as the chemistry sends them, for tests that hand them to a telemetry ``Recorder``.

A batch reaches the recorder as a ``BatchDone`` whose result a worker returned: with the span it timed under the
task's carrier (``worker_span``, as ``select_best`` gives its tasks the carrier of its own span), or without one
(the task carried no trace).
"""

from __future__ import annotations

import numpy as np

from templ_pipeline.core.batch import BatchResult, ConformerFailure, ConformerScore
from templ_pipeline.core.events import BatchDone, ExecutorKind, FailureReason
from templ_pipeline.core.trace_context import WorkerSpan, current_carrier, start_worker_span

WORKER_PID = 4242


def worker_span(pid: int = WORKER_PID) -> WorkerSpan | None:
    """The span a worker times for a task carrying the current span's carrier; None when nothing traces."""
    clock = start_worker_span(current_carrier(), pid)
    return None if clock is None else clock.finish()


def batch_done(index: int, size: int, kind: str = ExecutorKind.PROCESS, *, failed: int = 0, seconds: float = 0.01,
               pid: int = WORKER_PID, span: WorkerSpan | None = None) -> BatchDone:
    """Batch ``index`` of ``size`` conformers back from a worker: ``failed`` of them unscorable, the rest scored."""
    scored = [ConformerScore(index * size + i, 0.5, 0.5, np.zeros((1, 3))) for i in range(size - failed)]
    unscorable = [ConformerFailure(index * size + i, FailureReason.NO_COORDINATES) for i in range(size - failed, size)]
    return BatchDone(kind, size, BatchResult(index, scored, unscorable, seconds, pid, span))  # type: ignore[arg-type]
