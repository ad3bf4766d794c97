"""The telemetry surfaces of a real ``templ`` run: /metrics over HTTP, the trace file, the logs."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from google.protobuf.json_format import ParseDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from ports import free_port, silent_listener
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from templ_runs import TEMPL, templ_env

from templ_pipeline.io import examples

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def get(url: str, accept: str | None = None, timeout: float = 5) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read().decode()


@pytest.fixture(scope="module")
def template_file(tmp_path_factory) -> Path:
    from rdkit import Chem

    path = tmp_path_factory.mktemp("surfaces") / "template.sdf"
    with Chem.SDWriter(str(path)) as writer:
        writer.write(next(e.template for e in examples() if e.name == "mpro"))
    return path


class Run:
    """A ``templ select-best`` subprocess serving /metrics on a free port; always killed at the end."""

    def __init__(self, tmp: Path, template: Path, *extra: str, port: int | None = None, n: int = 120,
                 workers: int = 2, hold: float = 4.0, traces: bool = True) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.traces = tmp / "traces.jsonl"
        self.log = tmp / "run.log"
        args = ["select-best", "-t", str(template), "-q", "O=C(Nc1cccnc1)c1ccc(F)cc1OC", "-n", str(n),
                "-w", str(workers), "-o", str(tmp / "out.sdf"), "--metrics-addr", f"127.0.0.1:{self.port}",
                "--hold-metrics", str(hold), "--log-file", str(self.log), *extra]
        if traces:
            args += ["--traces-file", str(self.traces)]
        self.proc = subprocess.Popen([*TEMPL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=templ_env(["OTEL_*"]))

    def wait_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.communicate(timeout=30)
            try:
                if get(self.base + "/healthz", timeout=1)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.02)
        raise AssertionError("endpoint never came up")

    def wait_scored(self, n: int, timeout: float = 120) -> str:
        """Scrape until the run has counted ``n`` scored conformers (the hold period); return that scrape."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = get(self.base + "/metrics")[2]
            if f"templ_conformers_scored_total {float(n)}" in body:
                return body
            time.sleep(0.05)
        raise AssertionError("the run never finished")

    def finish(self) -> tuple[str, str]:
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err
        return out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


@pytest.fixture
def run(tmp_path, template_file):
    started: list[Run] = []

    def start(*extra: str, **kwargs) -> Run:
        started.append(Run(tmp_path, template_file, *extra, **kwargs))
        return started[-1]

    yield start
    for each in started:
        each.kill()


def promtool_check(exposition: str) -> None:
    import shutil

    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (make test installs Debian's prometheus package)")
    result = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr)


def _value(body: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    for family in parse_text(body):
        for sample in family.samples:
            if sample.name == name and (labels is None or all(sample.labels.get(k) == v for k, v in labels.items())):
                return sample.value
    return None


def test_scrape_during_and_after_a_run_counts_worker_results_once(run):
    job = run(n=160, workers=2)
    job.wait_up()
    during = get(job.base + "/metrics")[2]
    assert job.proc.poll() is None, "the first scrape must happen while the run is going"
    promtool_check(during)
    after = job.wait_scored(160)
    promtool_check(after)
    # scored inside process workers, counted once in the parent
    assert _value(after, "templ_conformers_scored_total") == 160
    assert _value(after, "templ_select_best_batches_total", {"executor_kind": "process"}) >= 2
    assert _value(after, "process_resident_memory_bytes") > 0  # the process collector is there
    out, _ = job.finish()
    assert "scored 160, failed 0" in out


def test_openmetrics_exemplars_match_spans_and_worker_spans_join_the_trace(run):
    job = run(n=80, workers=2)
    job.wait_up()
    job.wait_scored(80)
    status, content_type, body = get(job.base + "/metrics", accept=OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in parse_openmetrics(body)}
    exemplars = [s.exemplar for s in families["templ_select_best_batch_duration_seconds"].samples if s.exemplar]
    assert exemplars
    job.finish()
    lines = job.traces.read_text().splitlines()
    spans = [span for line in lines for rs in json.loads(line)["resourceSpans"] for ss in rs["scopeSpans"]
             for span in ss["spans"]]
    by_id = {span["spanId"]: span for span in spans}
    (call,) = [s for s in spans if s["name"] == "select_best"]
    batches = [s for s in spans if s["name"] == "select_best.batch"]
    for exemplar in exemplars:
        span = by_id[exemplar.labels["span_id"]]
        assert span["traceId"] == exemplar.labels["trace_id"] == call["traceId"]
    worker_pids = {a["value"]["intValue"] for s in batches for a in s["attributes"] if a["key"] == "process.pid"}
    assert worker_pids and str(job.proc.pid) not in worker_pids, "batch spans come from the worker processes"
    assert all(s["traceId"] == call["traceId"] and s["parentSpanId"] == call["spanId"] for s in batches)


def test_no_exemplars_when_no_span_is_exported(run):
    job = run(n=40, workers=2, traces=False)  # spans recorded for the logs' trace ids, exported nowhere
    job.wait_up()
    job.wait_scored(40)
    body = get(job.base + "/metrics", accept=OPENMETRICS)[2]
    families = {f.name: f for f in parse_openmetrics(body)}
    samples = families["templ_select_best_batch_duration_seconds"].samples
    assert any(s.name.endswith("_count") and s.value >= 1 for s in samples)
    assert not [s for family in families.values() for s in family.samples if s.exemplar]
    job.finish()
    done = next(json.loads(line) for line in job.log.read_text().splitlines() if '"select_best.done"' in line)
    assert len(done["trace_id"]) == 32


def test_trace_file_is_valid_otlp_json(run):
    job = run(n=40, workers=1, hold=0)
    job.finish()
    names = set()
    for line in job.traces.read_text().splitlines():
        message = json.loads(line)
        for rs in message["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    names.add(span["name"])
                    assert len(span["traceId"]) == 32 and int(span["traceId"], 16)
                    assert len(span["spanId"]) == 16 and int(span["spanId"], 16)
                    assert isinstance(span["kind"], int)
                    for key in ("traceId", "spanId", "parentSpanId"):  # protobuf's JSON wants base64 back
                        if key in span:
                            span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
        parsed = ParseDict(message, ExportTraceServiceRequest())
        assert parsed.resource_spans[0].scope_spans[0].spans
    assert {"select_best", "select_best.batch"} <= names


def _attributes(span: dict) -> dict:
    return {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}


def test_trace_file_has_the_conformer_generation_span(run):
    job = run(n=12, workers=2, hold=0)
    job.finish()
    spans = [span for line in job.traces.read_text().splitlines() for rs in json.loads(line)["resourceSpans"]
             for ss in rs["scopeSpans"] for span in ss["spans"]]
    (generate,) = [s for s in spans if s["name"] == "conformers.generate"]
    attributes = _attributes(generate)
    assert int(attributes["templ.conformers.requested"]) == 12
    assert 1 <= int(attributes["templ.conformers.generated"]) <= 12
    assert int(attributes["templ.executor.workers_requested"]) == 2
    assert 1 <= int(attributes["templ.executor.workers_granted"]) <= 2
    (call,) = [s for s in spans if s["name"] == "select_best"]
    assert int(generate["endTimeUnixNano"]) <= int(call["startTimeUnixNano"])


def test_log_file_has_json_events_with_trace_and_run_ids(run):
    job = run("--log-level", "debug", n=40, workers=2, hold=0)  # the per-batch lines are debug: asked for here
    job.finish()
    events = [json.loads(line) for line in job.log.read_text().splitlines()]
    assert {"executor.created", "select_best.batch_done", "select_best.done"} <= {e["event"] for e in events}
    run_ids = {e["run_id"] for e in events}
    assert len(run_ids) == 1
    for event in events:
        assert {"timestamp", "level", "event", "logger", "run_id"} <= set(event)
        assert event["timestamp"].endswith(("Z", "+00:00"))
    done = next(e for e in events if e["event"] == "select_best.done")
    assert len(done["trace_id"]) == 32 and len(done["span_id"]) == 16


def test_concurrent_and_malformed_requests_do_not_stop_the_endpoint(run):
    job = run(n=200, workers=2, hold=6)
    job.wait_up()
    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(lambda _: get(job.base + "/metrics", timeout=20)[0], range(50)))
    assert statuses == [200] * 50
    for garbage in (b"\x00\x01\x02 nonsense\r\n\r\n", b"GET /metrics HTTP/9.9\r\n\r\n", b"GET", b""):
        with socket.create_connection(("127.0.0.1", job.port), timeout=5) as sock:
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1024)
    assert get(job.base + "/healthz")[0] == 200
    assert get(job.base + "/metrics")[0] == 200
    job.finish()


def _listening_addresses(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_default_endpoint_listens_on_loopback_only(tmp_path, template_file):
    from templ_pipeline.telemetry.server import DEFAULT_PORT

    blocker_free = not _listening_addresses(DEFAULT_PORT)
    if not blocker_free:
        pytest.skip(f"port {DEFAULT_PORT} is in use on this machine")
    job = Run(tmp_path, template_file, n=40, hold=3)
    job.proc.kill()
    job.proc.communicate(timeout=60)
    args = ["demo", "-n", "40", "-o", str(tmp_path / "demo.sdf"), "--hold-metrics", "3"]
    proc = subprocess.Popen([*TEMPL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _listening_addresses(DEFAULT_PORT) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _listening_addresses(DEFAULT_PORT) == {"0100007F"}  # 127.0.0.1, nothing else
    finally:
        proc.kill()
        proc.communicate(timeout=60)


def test_port_in_use(tmp_path, template_file):
    with silent_listener() as taken:
        port = taken.getsockname()[1]
        explicit = subprocess.run(
            [*TEMPL, "select-best", "-t", str(template_file), "-q", "CCOc1ccccc1", "-n", "4",
             "-o", str(tmp_path / "x.sdf"), "--metrics-addr", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=120)
        assert explicit.returncode == 2
        assert f"--metrics-addr: cannot listen on 127.0.0.1:{port}: address in use" in explicit.stderr
        assert "Traceback" not in explicit.stderr


def test_unreachable_otlp_endpoint_costs_one_warning(tmp_path, template_file):
    env = templ_env(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
                    OTEL_EXPORTER_OTLP_TIMEOUT="1")
    result = subprocess.run(
        [*TEMPL, "select-best", "-t", str(template_file), "-q", "CCOc1ccccc1", "-n", "12", "-w", "2",
         "-o", str(tmp_path / "x.sdf"), "--no-metrics-server", "--log-format", "json"],
        capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    warnings = [json.loads(line) for line in result.stderr.splitlines()
                if line.startswith("{") and json.loads(line)["level"] in ("warning", "error")]
    assert len(warnings) <= 2 and any(w["event"] == "telemetry.export_failed" for w in warnings), warnings
