"""End to end: a real Prometheus scrapes a real ``templ screen`` campaign every second.

Every query of the dashboard's Campaign row must return data for the campaign, the scrapes
must have seen it mid-way (queries in flight, progress between 0 and 1, an ETA), its final
values must be the campaign's, the campaign alerts must parse and stay quiet, and the trace
file must hold the campaign, query and worker spans in one tree.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from dashboard_queries import (
    Prometheus,
    alert_rules,
    fill_variables,
    load_dashboard,
    panel_queries,
    prometheus,  # noqa: F401  (fixture)
    tail,
)
from processes import stop
from templ_runs import TEMPL

from templ_pipeline.campaign.pool import DEPTH
from templ_pipeline.dashboards import alerts
from templ_pipeline.telemetry import catalog as c

CAMPAIGN_ALERTS = (alerts.CAMPAIGN_FAILURES, alerts.STALLED)

#: Small drug-like ligands (name last, as in a .smi file) and two records that are not SMILES.
QUERIES = """\
CC(=O)Oc1ccccc1C(=O)O aspirin
CC(C)Cc1ccc(cc1)C(C)C(=O)O ibuprofen
CC(=O)Nc1ccc(O)cc1 paracetamol
O=C(Nc1cccnc1)c1ccc(F)cc1OC nicotinanilide
COc1ccc2[nH]cc(CCN)c2c1 methoxytryptamine
CN1CCC[C@H]1c1cccnc1 nicotine
Cn1cnc2c1c(=O)n(C)c(=O)n2C caffeine
OC(=O)c1ccccc1O salicylic_acid
Oc1cccc2ccccc12 naphthol
CC(C)NCC(O)c1ccc(O)c(O)c1 isoprenaline
NC(=O)c1cccnc1 nicotinamide
CCOC(=O)c1ccc(N)cc1 benzocaine
CN(C)CCOC(c1ccccc1)c1ccccc1 diphenhydramine
O=C(O)Cc1ccccc1Nc1c(Cl)cccc1Cl diclofenac
CC(=O)c1ccc(O)cc1 hydroxyacetophenone
NC(=O)c1ccc(Cl)cc1 chlorobenzamide
OCC1OC(O)C(O)C(O)C1O glucose
O=C(Nc1ccccn1)c1ccccc1 benzamidopyridine
Cc1ccc(cc1)S(N)(=O)=O tosylamide
COc1ccc(cc1)C(=O)O anisic_acid
Oc1ccc(cc1)C(F)(F)F trifluoromethylphenol
O=C1NC(=O)c2ccccc12 phthalimide
Nc1ccc(cc1)S(N)(=O)=O sulfanilamide
c1ccc(nc1)-c1ccccn1 bipyridine
OC(=O)c1cc(O)c(O)c(O)c1 gallic_acid
CC(C)(C)c1ccc(O)cc1 tert_butylphenol
CN1C(=O)CN=C(c2ccccc2)c2cc(Cl)ccc12 diazepam
OC(=O)/C=C/c1ccc(O)cc1 coumaric_acid
O=C(c1ccccc1)c1ccc(O)cc1 hydroxybenzophenone
CCN(CC)C(=O)c1cccc(C)c1 deet
COc1cc(C=O)ccc1O vanillin
O=C(Nc1ccccc1)c1ccccc1 benzanilide
CC(=O)Nc1nnc(s1)S(N)(=O)=O acetazolamide
NCCc1ccc(O)c(O)c1 dopamine
c1ccc2ncccc2c1 quinoline
O=c1ccc2ccccc2o1 coumarin
CC(O)C(=O)Nc1ccccc1 lactanilide
O=C(Nc1ccccc1)c1ccccc1O salicylanilide
N#Cc1ccc(cc1)C(N)=O cyanobenzamide
CC1(C)SC2C(NC(=O)Cc3ccccc3)C(=O)N2C1C(=O)O penicillin_g
Cc1ncc(CO)c(CO)c1O pyridoxine
OC(=O)c1ccncc1 isonicotinic_acid
OC(=O)CNC(=O)c1ccc(F)cc1 fluorohippuric_acid
CC(=O)c1ccccn1 acetylpyridine
C(c1ccccc1)n1ccnc1 benzylimidazole
CC(=O)OCC(=O)c1ccccc1 phenacyl_acetate
this_is_not_smiles broken_1
C1CC1(((( broken_2
"""
N_QUERIES = len(QUERIES.splitlines())
N_INVALID = 2
#: Conformers per query: with 2 workers on 2 cores the campaign lasts about 25 s (100 conformers
#: of these ligands take about 1 s to embed and score), long enough for several scrapes and rule
#: evaluations mid-way and for ``$__rate_interval`` windows (8 s here) inside it.
NUM_CONFORMERS = 100
WORKERS = 2
HOLD_SECONDS = 8
JOB_TIMEOUT = 75

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def templ_screen() -> None:
    result = subprocess.run([*TEMPL, "screen", "--help"], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        pytest.skip(f"`templ screen` is not available: {result.stderr.strip()[-300:]}")


def _run_screen(prometheus: Prometheus, template: Path, workdir: Path) -> dict[str, set[str]]:
    """Run ``templ screen`` to the end, its /metrics scraped; return the states each alert was seen in."""
    queries = workdir / "queries.smi"
    queries.write_text(QUERIES)
    output = workdir / "screen.out"
    command = [*TEMPL, "screen", "--template", str(template), "--queries", str(queries),
               "--output-dir", str(workdir / "campaign"), "--num-conformers", str(NUM_CONFORMERS),
               "--workers", str(WORKERS), "--metrics-addr", f"127.0.0.1:{prometheus.target_port}",
               "--hold-metrics", str(HOLD_SECONDS), "--log-format", "json", "--log-file", str(workdir / "templ.log"),
               "--traces-file", str(workdir / "traces.jsonl"),
               # one molecule per query, as the campaign was sized: enumerated, glucose and penicillin G
               # would be 8 isomers each and the run twice as long
               "--stereo", "first"]
    seen: dict[str, set[str]] = {}
    with open(output, "w") as out:
        job = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + JOB_TIMEOUT
            while job.poll() is None and time.monotonic() < deadline:
                for name, states in prometheus.alert_states().items():
                    seen.setdefault(name, set()).update(states)
                time.sleep(0.5)
        finally:
            if job.poll() is None:
                stop(job, grace=10)  # SIGTERM: the campaign ends its workers and exits
    assert job.returncode == 0, tail(output)
    return seen


def _range(prometheus: Prometheus, expr: str, start: float, end: float) -> list[dict]:
    answer = prometheus.api("/api/v1/query_range", query=expr, start=start, end=end, step=1)
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def _values(result: list[dict]) -> list[float]:
    return [float(v) for series in result for _t, v in series["values"]]


def _spans(path: Path) -> list[dict]:
    return [span for line in path.read_text().splitlines() for rs in json.loads(line)["resourceSpans"]
            for ss in rs["scopeSpans"] for span in ss["spans"]]


def test_campaign_row_on_a_scraped_screen(templ_screen, prometheus, template_sdf, tmp_path):
    started = time.time()
    alerts_seen = _run_screen(prometheus, template_sdf, tmp_path)
    ended = time.time()
    instance = f"127.0.0.1:{prometheus.target_port}"

    def fill(expr: str) -> str:
        return fill_variables(expr, job="templ", instance=instance)

    campaign = [query for query in panel_queries(load_dashboard()) if query.row == "Campaign"]
    assert campaign
    empty = []
    for query in campaign:
        if not _range(prometheus, fill(query.expr), started, ended):
            empty.append(f"{query.panel}: {fill(query.expr)}")
    assert not empty, "Campaign panels without data:\n" + "\n".join(empty) + "\n" + tail(tmp_path / "screen.out")

    by_panel = {query.panel: fill(query.expr) for query in campaign}
    progress = _values(_range(prometheus, by_panel["Campaign progress"], started, ended))
    assert any(0 < p < 1 for p in progress) and progress[-1] == 1, progress  # seen mid-way, and done
    assert any(eta > 0 for eta in _values(_range(prometheus, by_panel["ETA"], started, ended)))
    in_flight = _values(_range(prometheus, f'templ_campaign_queries_in_flight{{instance="{instance}"}}', started,
                               ended))
    assert 1 <= max(in_flight) <= WORKERS * DEPTH and in_flight[-1] == 0, in_flight  # each runs one, a few wait

    def final(expr: str) -> float:
        """The value during the hold, when the campaign is done and /metrics still answers."""
        result = prometheus.api("/api/v1/query", query=expr, time=ended - HOLD_SECONDS / 2)["data"]["result"]
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    selector = f'job="templ", instance="{instance}"'
    assert final(f"sum(templ_campaign_queries_total{{{selector}}})") == N_QUERIES
    assert final(f'templ_campaign_queries_total{{{selector}, status="failed", reason="invalid_smiles"}}') == N_INVALID
    assert final(f"templ_campaign_queries_expected{{{selector}}}") == N_QUERIES
    assert final(f'sum(templ_campaign_query_duration_seconds_count{{{selector}, status="ok"}})') == (
        N_QUERIES - N_INVALID)

    rules = alert_rules()
    for name in CAMPAIGN_ALERTS:  # 2 of 48 queries failed (4 %, under 10 %), and the campaign never stalled
        answer = prometheus.api("/api/v1/query", query=rules[name]["expr"], time=ended - HOLD_SECONDS / 2)
        assert answer["status"] == "success", (name, answer)
        assert "firing" not in alerts_seen.get(name, set()), (name, alerts_seen)

    log = [json.loads(line) for line in (tmp_path / "templ.log").read_text().splitlines()]
    finished = [line for line in log if line["event"] == c.EVENT_QUERY_FINISHED]
    assert sorted(line["query_id"] for line in finished) == ["broken_1", "broken_2"]  # ok ones are debug lines
    assert all(line["level"] == "warning" and line["reason"] == "invalid_smiles" and line["detail"]
               for line in finished)

    spans = _spans(tmp_path / "traces.jsonl")
    (root,) = [s for s in spans if s["name"] == c.SPAN_CAMPAIGN]
    queries = {s["spanId"]: s for s in spans if s["name"] == c.SPAN_QUERY}
    assert len(queries) == N_QUERIES
    # each query is the root of its own trace, linked to the campaign's span
    assert all(not s.get("parentSpanId") and s["traceId"] != root["traceId"] for s in queries.values())
    assert all([(link["traceId"], link["spanId"]) for link in s["links"]] == [(root["traceId"], root["spanId"])]
               for s in queries.values())
    for name in (c.SPAN_CONFORMERS, c.SPAN_SCREEN_SCORE):
        children = [s for s in spans if s["name"] == name]
        assert len(children) >= N_QUERIES - N_INVALID, name
        assert all(s["parentSpanId"] in queries for s in children), name
