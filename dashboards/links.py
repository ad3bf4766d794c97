"""Links from the dashboard to Grafana Explore: logs in Loki, traces in Tempo, same time range.

The Explore state is JSON in the URL. It is percent-encoded except for Grafana's
``${...}`` placeholders (datasource uid, job, time range, a clicked series' labels),
which Grafana fills in when the link is opened.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

from grafana_foundation_sdk.builders.dashboard import DashboardLink
from grafana_foundation_sdk.models.dashboard import DashboardLinkType

_PLACEHOLDER = re.compile(r"(\$\{[^}]+\})")
_RANGE = {"from": "${__from}", "to": "${__to}"}

#: Log lines of the job (JSON, one event per line; fields event, reason, cause, trace_id).
JOB_LOGS = '{job="${job}"} | json'
#: Span filter for the job's traces: the scrape job and the OpenTelemetry service name are both "templ".
JOB_SPANS = 'resource.service.name="${job}"'


def _encode(text: str) -> str:
    parts = _PLACEHOLDER.split(text)
    return "".join(part if i % 2 else quote(part, safe="") for i, part in enumerate(parts))


def explore_url(datasource_var: str, datasource_type: str, query: dict[str, object]) -> str:
    """Explore URL running ``query`` on the datasource chosen in ``$<datasource_var>``, dashboard time range."""
    uid = "${" + datasource_var + "}"
    target = {"refId": "A", "datasource": {"type": datasource_type, "uid": uid}, **query}
    panes = {"templ": {"datasource": uid, "queries": [target], "range": _RANGE}}
    return "/explore?schemaVersion=1&orgId=1&panes=" + _encode(json.dumps(panes, separators=(",", ":")))


def logs_url(logql: str) -> str:
    """Explore URL for a LogQL query on ``$loki``."""
    return explore_url("loki", "loki", {"expr": logql, "queryType": "range"})


def traces_url(traceql: str) -> str:
    """Explore URL for a TraceQL search on ``$tempo``."""
    return explore_url("tempo", "tempo", {"queryType": "traceql", "query": traceql, "limit": 20})


def link(title: str, url: str, tooltip: str) -> DashboardLink:
    """A link opening ``url`` in a new tab (dashboard links and panel data links alike)."""
    return (
        DashboardLink(title).type(DashboardLinkType.LINK).url(url).tooltip(tooltip)
        .target_blank(True).icon("external link")
    )


def event_logs(event: str, *filters: str) -> str:
    """LogQL for one log event of the job, with extra ``| field="value"`` filters."""
    return " | ".join((JOB_LOGS, f'event="{event}"', *filters))
