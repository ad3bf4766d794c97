"""Batch-job delivery of the final metrics: node_exporter textfile and Pushgateway."""

from __future__ import annotations

import http.client
import os
import socket
import urllib.error
from pathlib import Path

from prometheus_client import CollectorRegistry, push_to_gateway, write_to_textfile

from telemetry.metrics import get_metrics

__all__ = ["PushError", "push_metrics", "write_textfile"]


class PushError(RuntimeError):
    """The Pushgateway could not be reached or refused the push."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot push metrics to {url}: {reason}")
        self.url = url
        self.reason = reason


def write_textfile(path: str | os.PathLike[str], registry: CollectorRegistry | None = None) -> None:
    """Write the exposition of ``registry`` (default: TEMPL's) to ``path`` for node_exporter.

    prometheus-client writes ``<path>.<pid>.<thread>`` in the same directory and
    ``rename(2)``s it over ``path``, so the collector never reads a partial file
    and the temporary name (not ``*.prom``) is never collected; the temporary file
    is removed if anything fails. ``path`` must end in ``.prom`` (ValueError otherwise).
    """
    target = Path(path)
    if target.suffix != ".prom":
        raise ValueError(f"{os.fspath(path)!r}: node_exporter's textfile collector only reads files ending in .prom")
    write_to_textfile(os.fspath(target), registry if registry is not None else get_metrics().registry)


def push_metrics(
    url: str,
    job: str = "templ",
    grouping_key: dict[str, str] | None = None,
    registry: CollectorRegistry | None = None,
    timeout: float = 10,
) -> None:
    """PUT the final metrics to the Pushgateway at ``url``, replacing the group's previous push.

    The default grouping key is ``{"instance": socket.gethostname()}``: one group
    per host that always holds the latest run, so dashboards show the last run of
    each node and the Pushgateway (which never expires groups) does not grow by one
    group per run. ``run_id`` is left out on purpose: in the grouping key it would
    leave a group, and its series, behind for every run; it stays in logs and trace
    resources. Pass ``grouping_key`` explicitly (e.g. with a scheduler job id) when
    several runs share a host and must not overwrite each other; delete such groups
    when done. Raises :class:`PushError` when the gateway is unreachable, times out
    or answers with an HTTP error.
    """
    key = grouping_key if grouping_key is not None else {"instance": socket.gethostname()}
    try:
        push_to_gateway(url, job=job, registry=registry if registry is not None else get_metrics().registry,
                        grouping_key=key, timeout=timeout)
    except urllib.error.HTTPError as exc:
        body = exc.read(500).decode("utf-8", "replace").strip()
        raise PushError(url, f"HTTP {exc.code} {exc.reason}" + (f": {body}" if body else "")) from exc
    except urllib.error.URLError as exc:
        raise PushError(url, str(exc.reason)) from exc
    except TimeoutError as exc:
        raise PushError(url, f"no answer within {timeout} s") from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise PushError(url, f"{type(exc).__name__}: {exc}") from exc
