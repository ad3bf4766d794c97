"""A soak: many small queries through one ``templ screen``, with traces and metrics on, watched over time.

The campaign runs as a user runs it: a real ``templ screen`` process on 2 workers, 4 conformers a query,
``--traces-file`` and ``/metrics`` on a free port (found in the run's ``telemetry.metrics_serving`` log
line). The queries are small drug-like molecules made from fragments (a substituent, an aromatic ring, a
linker, a spacer, an end group: about 120,000 distinct ones, none with a stereocentre, so each is one
row), in a fixed order that mixes sizes over the whole run, so RDKit does different work every query.

Every ``--interval`` seconds: the resident memory of the parent and of each worker (the parent's
children started by multiprocessing's spawn; recycled workers come and go), and a scrape of ``/metrics``
(its samples: lines not starting with ``#``; the queries done so far, from
``templ_campaign_queries_total``). Reported: memory and sample count once 10 % of the queries are done
and at the end, with their growth; the output files' sizes; the traces file grouped by trace id (the
largest trace in spans); the time of ``templ screen --resume`` on the finished campaign.

Goals: parent and worker memory grow under 5 % from 10 % of the run to its end, no trace has more than
300 spans, ``--resume`` of the finished campaign takes at most 10 s, and ``/metrics`` keeps its size
(under 5 % growth). ``--no-recycle`` turns worker recycling off, to see a worker's own growth.

    python -m benchmarks.bench_soak --queries 20000     # TEMPL_BENCH_QUICK=1: a few hundred queries
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import psutil
from rdkit import Chem

from benchmarks.common import sized
from benchmarks.goals import Comparison, Goal

TEMPL = [sys.executable, "-m", "templ_pipeline.cli"]
QUERIES = 100_000
WORKERS = 2
CONFORMERS = 4
GROWTH_GOAL_PCT = 5.0
TRACE_SPANS_GOAL = 300
RESUME_GOAL_SECONDS = 10.0
EARLY = 0.10  # the fraction of the queries after which memory and /metrics are the baseline
STEP = 7919  # a prime: index * STEP modulo the combinations visits each once, sizes mixed

R1 = ("C", "CC", "CCC", "CO", "FC(F)(F)", "N#C", "Cl", "F", "CS(=O)(=O)", "CN(C)", "CC(C)", "O=C(C)", "Br",
      "FC(F)(F)O", "CCO", "C1CC1")
RINGS = ("c1ccc(cc1)", "c1cccc(c1)", "c1ccc(nc1)", "c1ccc(s1)", "c1cc(F)c(cc1)", "c1cnc(nc1)", "c1ccc(o1)",
         "c1cc(C)c(cc1)")
LINKERS = ("C(=O)N", "C(=O)NC", "NC(=O)", "S(=O)(=O)N", "OC", "CN", "C(=O)O", "NC(=O)N", "CC(=O)N", "OCC(=O)N")
ENDS = ("C", "CC", "C1CC1", "CCO", "CCN", "c1ccccc1", "C1CCOCC1", "CC#N", "C(C)C", "CC(F)(F)F", "c1ccncc1",
        "C1CCCC1", "CCOC", "C1CCN(C)CC1")
SPACERS = 8  # 0 to 7 CH2 between the linker and the end group


def library(count: int) -> list[tuple[str, str]]:
    """``count`` (SMILES, id) pairs, distinct while the fragments last (then they repeat, ids stay distinct)."""
    combos = list(itertools.product(range(SPACERS), R1, RINGS, LINKERS, ENDS))
    seen: set[str] = set()
    distinct: list[str] = []
    for index in range(len(combos)):
        spacer, r1, ring, linker, end = combos[index * STEP % len(combos)]
        smiles = f"{r1}{ring}{linker}{'C' * spacer}{end}"
        key = Chem.CanonSmiles(smiles)
        if key not in seen:
            seen.add(key)
            distinct.append(smiles)
            if len(distinct) == count:
                break
    return [(distinct[number % len(distinct)], f"soak_{number}") for number in range(count)]


@dataclass
class Sample:
    """One look at the campaign: seconds since its start, queries done, memory (bytes), /metrics samples."""

    seconds: float
    done: int | None
    parent: int
    workers: dict[int, int] = field(default_factory=dict)  # pid -> resident bytes
    metric_samples: int | None = None


def _workers(process: psutil.Process) -> dict[int, int]:
    """The campaign's worker processes (spawned by multiprocessing) and their resident bytes."""
    found = {}
    for child in process.children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found[child.pid] = child.memory_info().rss
        except psutil.Error:
            continue  # it ended between the listing and the reading
    return found


def _scrape(url: str) -> tuple[int, int] | None:
    """Samples on ``/metrics`` and the queries done (the sum of templ_campaign_queries_total); None if down."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    samples = done = 0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        samples += 1
        if line.startswith("templ_campaign_queries_total"):
            done += int(float(line.rsplit("}", 1)[-1].split()[0]))
    return samples, done


def _metrics_url(log: Path) -> str | None:
    """The ``/metrics`` URL the run's JSON log announces (None until it has)."""
    if not log.exists():
        return None
    for line in log.read_text().splitlines():
        if '"telemetry.metrics_serving"' in line:
            return str(json.loads(line)["url"])
    return None


def _watch(process: subprocess.Popen[bytes], log: Path, interval: float) -> list[Sample]:
    """Sample the campaign every ``interval`` seconds until it exits."""
    watched = psutil.Process(process.pid)
    started = time.monotonic()
    url: str | None = None
    samples: list[Sample] = []
    while process.poll() is None:
        url = url or _metrics_url(log)
        scraped = _scrape(url) if url else None
        try:
            sample = Sample(time.monotonic() - started, scraped[1] if scraped else None,
                            watched.memory_info().rss, _workers(watched), scraped[0] if scraped else None)
        except psutil.Error:
            break  # the campaign has just exited
        samples.append(sample)
        time.sleep(interval)
    return samples


def _growth(before: float | None, after: float | None) -> float | None:
    return None if not before or after is None else round(100.0 * (after - before) / before, 2)


def _mb(value: float | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def _memory(samples: list[Sample], queries: int) -> dict:
    """Memory and /metrics samples at 10 % of the queries and at the end, and their growth."""
    watched = [sample for sample in samples if sample.done is not None and sample.workers]
    early = next((sample for sample in watched if (sample.done or 0) >= EARLY * queries),
                 watched[0] if watched else None)
    end = watched[-1] if watched else None
    if early is None or end is None:
        return {"error": "no sample with the campaign's workers and /metrics"}
    lives: dict[int, list[int]] = {}
    for sample in samples:
        for pid, resident in sample.workers.items():
            lives.setdefault(pid, []).append(resident)
    # a worker's own growth: from its second sample (after its start-up) to its last
    own = [_growth(life[1], life[-1]) for life in lives.values() if len(life) >= 4]
    return {
        "early": {"seconds": round(early.seconds, 1), "done": early.done, "parent_mb": _mb(early.parent),
                  "workers_mb": sorted(_mb(value) for value in early.workers.values()),
                  "metric_samples": early.metric_samples},
        "end": {"seconds": round(end.seconds, 1), "done": end.done, "parent_mb": _mb(end.parent),
                "workers_mb": sorted(_mb(value) for value in end.workers.values()),
                "metric_samples": end.metric_samples},
        "first_metric_samples": next((s.metric_samples for s in samples if s.metric_samples is not None), None),
        "parent_growth_pct": _growth(early.parent, end.parent),
        "workers_growth_pct": _growth(max(early.workers.values()), max(end.workers.values())),
        "metric_samples_growth_pct": _growth(early.metric_samples, end.metric_samples),
        "workers_seen": len(lives),
        "largest_growth_within_one_worker_pct": max((value for value in own if value is not None), default=None),
        "samples": len(samples),
    }


def _traces(path: Path) -> dict:
    """Spans per trace in an OTLP/JSON lines file: how many traces, the largest, bytes."""
    spans: Counter[str] = Counter()
    if path.exists():
        with path.open() as lines:
            for line in lines:
                for resource in json.loads(line).get("resourceSpans", ()):
                    for scope in resource.get("scopeSpans", ()):
                        spans.update(span["traceId"] for span in scope.get("spans", ()))
    largest = spans.most_common(1)
    return {"traces": len(spans), "spans": sum(spans.values()), "largest_trace_spans": largest[0][1] if largest else 0,
            "bytes": path.stat().st_size if path.exists() else 0}


def _replacements(log: Path) -> Counter[str]:
    """Workers replaced during the run, by reason (the campaign.worker_replaced log lines)."""
    found: Counter[str] = Counter()
    for line in log.read_text().splitlines():
        if '"campaign.worker_replaced"' in line:
            found[json.loads(line)["reason"]] += 1
    return found


def run(n_queries: int | None = None, interval: float | None = None, recycle: bool = True,
        tmp_dir: Path | None = None) -> dict:
    """Screen ``n_queries`` small queries, watching memory and /metrics; the report, with its goals."""
    queries = n_queries or sized(QUERIES, 300)
    interval = interval or sized(2.0, 0.5)
    template = Path(str(resources.files("templ_pipeline") / "data" / "mpro_template.sdf"))
    env = dict(os.environ)
    if not recycle:
        env.update(TEMPL_RECYCLE_QUERIES="0", TEMPL_RECYCLE_GROWTH="0")
    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        root = Path(tmp)
        smi = root / "queries.smi"
        smi.write_text("".join(f"{smiles} {name}\n" for smiles, name in library(queries)))
        out, log, traces = root / "campaign", root / "log.jsonl", root / "traces.jsonl"
        command = [*TEMPL, "screen", "-t", str(template), "-q", str(smi), "-o", str(out), "-n", str(CONFORMERS),
                   "-w", str(WORKERS), "--exact-workers"]
        print(f"  soak: {queries} queries, {WORKERS} workers, {CONFORMERS} conformers, sampled every {interval:g} s"
              f" in {root}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        with subprocess.Popen([*command, "--traces-file", str(traces), "--metrics-addr", "127.0.0.1:0",
                               "--log-format", "json", "--log-file", str(log), "--json"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env) as process:
            samples = _watch(process, log, interval)
            stdout, stderr = process.communicate(timeout=600)  # it has ended: _watch waits for it
        seconds = time.perf_counter() - started
        if process.returncode != 0:
            raise RuntimeError(f"templ screen exited with {process.returncode}: {stderr.decode()[-2000:]}")
        summary = json.loads(stdout)
        started = time.perf_counter()
        resumed = subprocess.run([*command, "--resume", "--no-metrics-server", "--log-format", "json",
                                  "--log-file", str(root / "resume.log.jsonl")],
                                 stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=3600)
        resume_seconds = time.perf_counter() - started
        if resumed.returncode != 0:
            raise RuntimeError(f"templ screen --resume exited with {resumed.returncode}: {resumed.stderr[-2000:]!r}")
        sizes = {path.name: path.stat().st_size for path in sorted(out.iterdir()) if path.is_file()}
        sizes.update({"traces.jsonl": traces.stat().st_size if traces.exists() else 0, "log.jsonl": log.stat().st_size})
        spans = _traces(traces)
        replaced = _replacements(log)
    memory = _memory(samples, queries)
    return {
        "queries": queries,
        "workers": WORKERS,
        "conformers_per_query": CONFORMERS,
        "recycling": recycle,
        "interval_seconds": interval,
        "seconds": round(seconds, 1),
        "queries_per_second": round(queries / seconds, 1),
        "summary": {**{key: summary["queries"].get(key) for key in ("done", "ok", "failed")},
                    "workers": summary.get("workers"), "queries_per_second": summary.get("queries_per_second")},
        "memory": memory,
        "workers_replaced": dict(replaced),
        "file_bytes": sizes,
        "traces": {**spans, "bytes_per_query": round(spans["bytes"] / queries)},
        "resume_seconds": round(resume_seconds, 2),
        "goals": [goal.as_dict() for goal in (
            Goal("parent_rss_growth", f"the templ screen process's resident memory at the end vs at {EARLY:.0%} of "
                 f"{queries} queries", memory.get("parent_growth_pct"), Comparison.BELOW, GROWTH_GOAL_PCT, "%"),
            Goal("worker_rss_growth", f"the largest worker's resident memory at the end vs at {EARLY:.0%} of the "
                 "queries (recycled workers included)", memory.get("workers_growth_pct"), Comparison.BELOW,
                 GROWTH_GOAL_PCT, "%"),
            Goal("largest_trace", f"spans in the largest trace of the traces file ({spans['traces']} traces)",
                 spans["largest_trace_spans"], Comparison.AT_MOST, TRACE_SPANS_GOAL, "spans"),
            Goal("resume_seconds", f"templ screen --resume of the finished campaign ({queries} rows to skip)",
                 round(resume_seconds, 2), Comparison.AT_MOST, RESUME_GOAL_SECONDS, "s"),
            Goal("metric_samples_growth", f"samples on /metrics at the end vs at {EARLY:.0%} of the queries",
                 memory.get("metric_samples_growth_pct"), Comparison.BELOW, GROWTH_GOAL_PCT, "%"),
        )],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=None,
                        help=f"queries to screen (default {QUERIES}; TEMPL_BENCH_QUICK=1: 300)")
    parser.add_argument("--interval", type=float, default=None, help="seconds between samples (default 2)")
    parser.add_argument("--no-recycle", action="store_true", help="keep every worker for the whole run")
    parser.add_argument("--tmp-dir", type=Path, default=None,
                        help="where the run's directory is made (removed at the end); the traces take 2-3 kB a query")
    args = parser.parse_args(argv)
    if args.queries is not None and args.queries < 1:
        parser.error("--queries must be at least 1")
    print(json.dumps(run(args.queries, args.interval, not args.no_recycle, args.tmp_dir), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
