"""Batch-job delivery of the final metrics: node_exporter textfile, Pushgateway, file_sd target file.

Several jobs share a node (a Slurm node runs many jobs at once), so everything a job
delivers carries its job id (:func:`job_id`): the textfile's name and samples, the
Pushgateway grouping key, the labels of its file_sd target.

The textfile and the push hold what outlives the process: TEMPL's catalog metrics without
the ``live`` ones (thread headroom, live thread counts, the current pool's workers) and
without the default collectors' ``process_*``/``python_*`` families. A finished job's last
headroom would otherwise keep a headroom alert firing for as long as the file or group
stays, and node_exporter exports its own ``process_*`` series and refuses a textfile that
repeats one ("collected metric process_cpu_seconds_total ... was collected before").
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import urllib.error
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, delete_from_gateway, generate_latest, push_to_gateway
from prometheus_client.core import Metric

from templ_pipeline.safe_files import write_atomically
from templ_pipeline.telemetry.catalog import JOB_LABEL, METRICS
from templ_pipeline.telemetry.metrics import get_metrics

__all__ = [
    "PushError",
    "delete_pushed",
    "delivered_metrics",
    "job_id",
    "push_metrics",
    "scheduler_job_id",
    "textfile_name",
    "write_sd_file",
    "write_textfile",
]

#: Catalog metrics that describe the run rather than the process's state at this instant.
DELIVERED_NAMES: frozenset[str] = frozenset(spec.name for spec in METRICS if not spec.live)
_UNSAFE_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def _set(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value if value and value != "undefined" else None


def scheduler_job_id(environ: Mapping[str, str] = os.environ) -> str | None:
    """The batch scheduler's id of this job, or None outside one.

    ``TEMPL_JOB_ID`` (set by the user) first, then Slurm ``SLURM_JOB_ID`` (unique per array
    task), PBS/Torque ``PBS_JOBID`` (``123[4].server`` for array tasks), LSF ``LSB_JOBID`` with
    ``[LSB_JOBINDEX]`` for an array task, and Grid Engine ``JOB_ID`` with ``.SGE_TASK_ID`` for an
    array task (LSF and Grid Engine give all tasks of an array one job id; SGE says "undefined"
    outside arrays).
    """
    for name in ("TEMPL_JOB_ID", "SLURM_JOB_ID", "PBS_JOBID"):
        if (value := _set(environ, name)) is not None:
            return value
    if (lsf := _set(environ, "LSB_JOBID")) is not None:
        index = _set(environ, "LSB_JOBINDEX")
        return f"{lsf}[{index}]" if index not in (None, "0") else lsf
    if (sge := _set(environ, "JOB_ID")) is not None:
        task = _set(environ, "SGE_TASK_ID")
        return f"{sge}.{task}" if task is not None else sge
    return None


def job_id(environ: Mapping[str, str] = os.environ) -> str:
    """This job's id on the node: the scheduler's (:func:`scheduler_job_id`), else the run id of the logs."""
    from templ_pipeline.telemetry.logs import get_run_id

    return scheduler_job_id(environ) or get_run_id() or f"pid{os.getpid()}"


def textfile_name(job: str) -> str:
    """``templ_<job>.prom``: one textfile per job in a shared collector directory (unsafe characters -> ``_``)."""
    return f"templ_{_UNSAFE_IN_FILE_NAME.sub('_', job)}.prom"


class _Delivered:
    """A collector view of a registry: its delivered families, with ``labels`` added to every sample."""

    def __init__(self, registry: CollectorRegistry, labels: Mapping[str, str]) -> None:
        self._registry = registry
        self._labels = dict(labels)

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            if metric.name in DELIVERED_NAMES or metric.name + "_total" in DELIVERED_NAMES:
                if self._labels:
                    metric.samples = [s._replace(labels={**s.labels, **self._labels}) for s in metric.samples]
                yield metric


def delivered_metrics(registry: CollectorRegistry | None = None, labels: Mapping[str, str] | None = None) -> Any:
    """What a textfile or a push holds (see the module docstring), as a registry for prometheus-client."""
    return _Delivered(registry if registry is not None else get_metrics().registry, labels or {})


def write_textfile(path: str | os.PathLike[str], registry: CollectorRegistry | None = None,
                   labels: Mapping[str, str] | None = None) -> Path:
    """Write the delivered metrics of ``registry`` (default: TEMPL's) to ``path`` for node_exporter.

    ``labels`` (``{"job_id": ...}``) go on every sample, so two jobs' files never hold the same
    series. The file is written by :func:`~templ_pipeline.safe_files.write_atomically`: a
    temporary ``.<name>.<random>.tmp`` (not ``*.prom``, so never collected) renamed over
    ``path``; the collector never reads a partial file, and a failure leaves the old one.
    ``path`` must end in ``.prom`` (ValueError otherwise).
    """
    target = Path(path)
    if target.suffix != ".prom":
        raise ValueError(f"{os.fspath(path)!r}: node_exporter's textfile collector only reads files ending in .prom")
    return write_atomically(target, generate_latest(delivered_metrics(registry, labels)), "--metrics-textfile")


def write_sd_file(path: str | os.PathLike[str], target: str, labels: Mapping[str, str]) -> Path:
    """Write a Prometheus ``file_sd_configs`` target file: one target (``HOST:PORT``) with ``labels``.

    Written atomically, so Prometheus (which re-reads the file on change) never reads half of it.
    """
    document = [{"targets": [target], "labels": dict(labels)}]
    return write_atomically(path, (json.dumps(document, indent=2) + "\n").encode(), "--metrics-sd-file")


def _gateway_call(url: str, timeout: float, call: Callable[[], None]) -> None:
    try:
        call()
    except urllib.error.HTTPError as exc:
        body = exc.read(500).decode("utf-8", "replace").strip()
        raise PushError(url, f"HTTP {exc.code} {exc.reason}" + (f": {body}" if body else "")) from exc
    except urllib.error.URLError as exc:
        raise PushError(url, str(exc.reason)) from exc
    except TimeoutError as exc:
        raise PushError(url, f"no answer within {timeout} s") from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise PushError(url, f"{type(exc).__name__}: {exc}") from exc


class PushError(RuntimeError):
    """The Pushgateway could not be reached or refused the push."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot push metrics to {url}: {reason}")
        self.url = url
        self.reason = reason


def default_grouping_key(job: str | None = None) -> dict[str, str]:
    """``{"instance": <hostname>, "job_id": <job id>}``: one group per job, so jobs sharing a node do not
    overwrite each other's push."""
    return {"instance": socket.gethostname(), JOB_LABEL: job if job is not None else job_id()}


def push_metrics(
    url: str,
    job: str = "templ",
    grouping_key: dict[str, str] | None = None,
    registry: CollectorRegistry | None = None,
    timeout: float = 10,
) -> None:
    """PUT the delivered metrics to the Pushgateway at ``url``, replacing the group's previous push.

    The default grouping key is :func:`default_grouping_key`: one group per job. The
    Pushgateway never expires a group, so a group per job stays until it is deleted
    (:func:`delete_pushed`, ``--push-delete-on-exit``); the push holds no live gauges, so
    what stays cannot keep a headroom alert firing. Raises :class:`PushError` when the
    gateway is unreachable, times out or answers with an HTTP error.
    """
    key = grouping_key if grouping_key is not None else default_grouping_key()
    collected = delivered_metrics(registry)
    _gateway_call(url, timeout, lambda: push_to_gateway(url, job=job, registry=collected, grouping_key=key,
                                                        timeout=timeout))


def delete_pushed(url: str, job: str = "templ", grouping_key: dict[str, str] | None = None,
                  timeout: float = 10) -> None:
    """DELETE the group (``job`` and ``grouping_key``) from the Pushgateway; :class:`PushError` on failure."""
    key = grouping_key if grouping_key is not None else default_grouping_key()
    _gateway_call(url, timeout, lambda: delete_from_gateway(url, job=job, grouping_key=key, timeout=timeout))
