"""``templ screen`` against the two ways users screened before it, equal work, same run.

Inputs: the bundled library (24 drug-like ligands, ``templ_pipeline/data/screen_library.smi``)
against the bundled Mpro template, 50 conformers each.

Equal work: ``screen`` prepares each query (its largest fragment, one molecule per unassigned
stereoisomer: the 24 ligands are 32 molecules), so both baselines do the same:

- (a) an in-process sequential loop: per query, :func:`~templ_pipeline.core.preparation.prepare`
  with the default options, then for each prepared molecule ETKDG with the campaign's parameters
  on one thread and the plain AlignMol loop over its conformers. The molecules, conformers and
  alignments of both sides are counted and must be equal (the run stops otherwise);
- (b) a shell loop of ``templ select-best --query`` calls at the same worker count (the same
  preparation and the same isomers: the commands share their steps; counted from their log lines,
  and held to the same equality);
- ``templ screen`` at 1 and 2 workers (the command, start-up included).

Both score against the one template with free ETKDG (``--top-templates all``), as loop (a) does.
Loop (a) and the two campaigns alternate, best of ``repeats``. Goals on the 2-core reference machine:
2 workers at least 1.9x loop (a) (the limit is 2.0) and 2.5x loop (b); 1 worker at least 0.98x loop (a).
Also the parent's CPU per conformer during a campaign (goal: at most 15 microseconds at any pace,
so that one parent can keep 64 workers busy; see :func:`parent_cpu`), and from the measured costs the
predicted share of a core the parent needs at 8, 16 and 64 workers.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, astuple, dataclass
from importlib import resources
from pathlib import Path

from rdkit import Chem
from rdkit.Chem import AllChem, rdShapeAlign

from benchmarks.common import sized
from benchmarks.goals import Comparison, Goal
from templ_pipeline.core.embedding import etkdg_parameters
from templ_pipeline.core.preparation import prepare

CONFORMERS = 50
SEED = 42
WORKER_COUNTS = (8, 16, 64)
TEMPL = [sys.executable, "-m", "templ_pipeline.cli"]
FREE_CONFORMERS = ("--top-templates", "all")
"""Free ETKDG, as loop (a) embeds: the template is not chosen and its core not pinned (bench_templates
measures that), so the commands do the loop's work."""
PARENT_CPU_GOAL_US = 15.0


@dataclass(frozen=True, slots=True)
class Work:
    """What a run embedded and scored: prepared molecules with a conformer, conformers, conformers aligned."""

    molecules: int
    conformers: int
    scored: int


def _data(name: str) -> Path:
    return Path(str(resources.files("templ_pipeline") / "data" / name))


def _library() -> list[tuple[str, str]]:
    lines = _data("screen_library.smi").read_text().splitlines()
    return [(fields[0], fields[1]) for line in lines
            if line.strip() and not line.startswith("#") and len(fields := line.split(maxsplit=1)) == 2]


def loop_a(queries: list[tuple[str, str]], template: Chem.Mol, conformers: int = CONFORMERS) -> Work:
    """The in-process baseline, query by query: prepared as ``screen`` prepares it, each prepared molecule
    embedded with the campaign's ETKDG parameters on one thread, then AlignMol on every conformer."""
    molecules = embedded = scored = 0
    params = etkdg_parameters(SEED, 1, random_coords=False)
    for smiles, _ in queries:
        for isomer in prepare(Chem.MolFromSmiles(smiles), input_smiles=smiles).isomers:
            with_hs = Chem.AddHs(isomer.mol)
            AllChem.EmbedMultipleConfs(with_hs, numConfs=conformers, params=params)
            confs = Chem.RemoveHs(with_hs)
            molecules += confs.GetNumConformers() > 0
            embedded += confs.GetNumConformers()
            for conf in confs.GetConformers():
                rdShapeAlign.AlignMol(template, Chem.Mol(confs, confId=conf.GetId()), useColors=True)
                scored += 1
    return Work(molecules, embedded, scored)


def campaign_work(output_dir: Path) -> Work:
    """What a campaign embedded and scored, from its ``scores.csv`` (one row per prepared molecule)."""
    with (output_dir / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    counts = [(int(row["n_conformers"] or 0), int(row["n_scored"] or 0)) for row in rows]
    return Work(sum(made > 0 for made, _ in counts), sum(made for made, _ in counts),
                sum(scored for _, scored in counts))


def log_work(log_file: Path) -> Work:
    """What ``templ select-best`` calls embedded and scored, from their JSON log lines (``conformers.done``
    per prepared molecule, ``select_best.done`` per scoring)."""
    events = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    made = [event["generated"] for event in events if event.get("event") == "conformers.done"]
    scored = sum(event["scored"] for event in events if event.get("event") == "select_best.done")
    return Work(sum(count > 0 for count in made), sum(made), scored)


def _timed(argv: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {done.returncode}: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def screen_command(workers: int, root: Path, queries: Path, conformers: int, tag: str) -> tuple[float, Work]:
    """``templ screen`` at ``workers`` (the command, start-up included): seconds, and what it embedded and scored."""
    out = root / f"screen_{workers}_{tag}"
    seconds = _timed([*TEMPL, "screen", "-t", str(_data("mpro_template.sdf")), "-q", str(queries),
                      "-o", str(out), "-n", str(conformers), "-w", str(workers), "--no-metrics-server",
                      *FREE_CONFORMERS, "--log-file", str(root / f"screen_{workers}_{tag}.jsonl")])
    return seconds, campaign_work(out)


def loop_b(queries: list[tuple[str, str]], workers: int, root: Path, conformers: int) -> tuple[float, Work]:
    """The shell loop: one ``templ select-best --query`` per query; seconds, and what the calls embedded and
    scored (from their log)."""
    log_file = root / f"loop_{workers}.jsonl"
    started = time.perf_counter()
    for number, (smiles, _) in enumerate(queries):
        _timed([*TEMPL, "select-best", "-t", str(_data("mpro_template.sdf")), "--query", smiles,
                "-n", str(conformers), "-w", str(workers), "-o", str(root / f"pose_{workers}_{number}.sdf"),
                "--no-metrics-server", *FREE_CONFORMERS, "--log-file", str(log_file)])
    return time.perf_counter() - started, log_work(log_file)


def _campaign_cpu(queries: Path, output_dir: Path, workers: int, conformers: int) -> tuple[float, int, Work]:
    """A campaign as the CLI runs it, in this process: the parent's own CPU seconds (workers are children),
    the queries done and what was embedded."""
    from rich.console import Console
    from rich.progress import Progress

    from templ_pipeline.cli import screen as cli_screen
    from templ_pipeline.core.template_choice import ChoiceOptions

    request = cli_screen.ScreenRequest(
        template=_data("mpro_template.sdf"), queries=queries, output_dir=output_dir, num_conformers=conformers,
        seed=SEED, workers=workers, metric="combo", resume=False, per_template=False, use_input_conformers=False,
        query_timeout=600.0, smiles_column="smiles", id_column="id", exact_workers=False,
        choice=ChoiceOptions(top=None))  # free ETKDG, as FREE_CONFORMERS

    class Stage:
        stage = campaign = ""

    with open(os.devnull, "w") as devnull:
        quiet = Console(file=devnull)
        before = time.process_time()  # CLOCK_PROCESS_CPUTIME_ID: this process's threads, not its workers
        tally = cli_screen.run(cli_screen.prepare(request), console=quiet, out=quiet, progress=Stage(),
                               start_progress=Progress.start)
        cpu = time.process_time() - before
    return cpu, tally.done, campaign_work(output_dir)


def parent_cpu(workers: int, root: Path, queries: list[tuple[str, str]], conformers: int = CONFORMERS,
               busy: int = 300, runs: int = 3) -> dict:
    """The parent's CPU per query and per conformer, in two regimes.

    After a small campaign that loads every module, ``library``: the bundled library, whose
    queries take 0.2-1.5 s each, so the parent sleeps between results and wakes on cold caches
    (2 workers on 2 cores: measured here, unpickling a query's outcome took 17 us in a loop and 190 us
    just after a wait, opening its span 3 us and 85 us); ``busy``: ``busy`` small alcohols, whose
    results arrive every 30 ms or so, the rate at which 64 workers would deliver drug-like queries.
    The per-conformer figure is the CPU over the conformers the campaign embedded (every
    stereoisomer's): the parent never sees a conformer. Each pace runs ``runs`` times and reports its
    run of median CPU, with every run's figure.

    Both figures include what a campaign costs the parent however short it is (template, campaign
    files, hit list, grant, workers started and stopped): ``one_query`` is the median CPU of a campaign
    of one small query, and each pace's ``us_per_conformer_beyond_one_query`` its CPU less that, over
    its conformers less that one's: the rate a long campaign approaches (reported, not judged).
    """
    from benchmarks.bench_telemetry_overhead import DropSpans
    from templ_pipeline import telemetry
    from templ_pipeline.core import events
    from templ_pipeline.telemetry.logs import unconfigure_logging

    with open(os.devnull, "w") as devnull:
        # spans are made and handed to a batch processor, as in a traced run, then dropped
        telemetry.configure(span_exporter=DropSpans(), log_format="json", log_stream=devnull, log_level="INFO")
        events.subscribe_process(telemetry.observe)  # as the CLI's session does
        try:
            small, library, alcohols = root / "small.smi", root / "library.smi", root / "busy.smi"
            single = root / "single.smi"
            small.write_text("".join(f"{smiles} {name}\n" for smiles, name in queries[:2]))
            library.write_text("".join(f"{smiles} {name}\n" for smiles, name in queries))
            alcohols.write_text("".join(f"{'C' * (1 + number % 6)}O alcohol_{number}\n" for number in range(busy)))
            single.write_text("CCO ethanol\n")
            _campaign_cpu(small, root / "cpu_warm", workers, conformers)
            one = sorted((_campaign_cpu(single, root / f"cpu_one_{run_number}", workers, conformers)
                          for run_number in range(runs)), key=lambda run: run[0])[runs // 2]
            one_cpu, one_conformers = one[0], one[2].conformers
            report: dict = {"one_query": {"ms": round(1e3 * one_cpu, 2), "conformers": one_conformers}}
            for name, path in (("library", library), ("busy", alcohols)):
                measured = []
                for run_number in range(runs):
                    started = time.perf_counter()
                    cpu, done, work = _campaign_cpu(path, root / f"cpu_{name}_{run_number}", workers, conformers)
                    measured.append((cpu, done, work, time.perf_counter() - started))
                # the run of median CPU: one campaign's figure moved by 10-30 % from run to run here
                cpu, done, work, seconds = sorted(measured, key=lambda run: run[0])[len(measured) // 2]
                report[name] = {"queries": done, "molecules": work.molecules, "conformers": work.conformers,
                                "queries_per_second": round(done / seconds, 2),
                                "ms_per_query": round(1e3 * cpu / done, 3),
                                "us_per_conformer": round(1e6 * cpu / work.conformers, 2),
                                "us_per_conformer_each_run": [round(1e6 * run[0] / run[2].conformers, 2)
                                                              for run in measured],
                                "us_per_conformer_beyond_one_query": round(
                                    1e6 * (cpu - one_cpu) / (work.conformers - one_conformers), 2)}
        finally:
            events.unsubscribe_process(telemetry.observe)
            unconfigure_logging()  # the benchmarks after this one log to stderr, not to a closed file
    return report


def _queries_file(queries: list[tuple[str, str]], root: Path) -> Path:
    path = root / "queries.smi"
    path.write_text("".join(f"{smiles} {name}\n" for smiles, name in queries))
    return path


def _best(samples: list[tuple[float, Work]]) -> tuple[float, Work]:
    return min(samples, key=lambda sample: sample[0])


def run(n_queries: int | None = None, conformers: int | None = None, repeats: int | None = None) -> dict:
    """Run the benchmark: loop (a) and the campaigns alternate, best of ``repeats``; loop (b) once."""
    from templ_pipeline.io import read_template

    queries = _library()[:n_queries or sized(None, 3)]
    conformers = conformers or sized(CONFORMERS, 5)
    repeats = repeats or sized(2, 1)
    template = read_template(_data("mpro_template.sdf"))
    samples: dict[str, list[tuple[float, Work]]] = {"loop_a": [], "screen_1": [], "screen_2": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = _queries_file(queries, root)
        for repeat in range(repeats):
            started = time.perf_counter()
            work = loop_a(queries, template, conformers)
            samples["loop_a"].append((time.perf_counter() - started, work))
            for workers in (1, 2):
                samples[f"screen_{workers}"].append(screen_command(workers, root, path, conformers, str(repeat)))
        best = {name: _best(found) for name, found in samples.items()}
        for workers in (1, 2):
            best[f"loop_b_{workers}"] = loop_b(queries, workers, root, conformers)
        works = {name: done for name, (_, done) in best.items()}
        print(f"  equal work (molecules, conformers embedded, conformers scored): "
              f"{', '.join(f'{name} {astuple(done)}' for name, done in works.items())}", file=sys.stderr, flush=True)
        if len(set(works.values())) != 1:
            raise RuntimeError(f"unequal work: {works}")
        seconds = {name: seconds for name, (seconds, _) in best.items()}
        cpu_runs = sized(3, 1)
        parent = parent_cpu(2, root, queries, conformers, busy=sized(300, 20), runs=cpu_runs)
    per_query_cpu = parent["busy"]["ms_per_query"] / 1e3
    per_query_worker = seconds["loop_a"] / len(queries)  # a worker's time per query: the sequential loop's
    speedup = {
        "screen_2_vs_loop_a": round(seconds["loop_a"] / seconds["screen_2"], 3),
        "screen_2_vs_loop_b_2": round(seconds["loop_b_2"] / seconds["screen_2"], 3),
        "screen_1_vs_loop_a": round(seconds["loop_a"] / seconds["screen_1"], 3),
        "screen_1_vs_loop_b_1": round(seconds["loop_b_1"] / seconds["screen_1"], 3),
    }
    done = works["loop_a"]
    same = (f"the same {len(queries)} queries prepared into {done.molecules} molecules, {done.conformers} "
            f"conformers embedded and aligned on both sides")
    paces = [regime for name, regime in parent.items() if name != "one_query"]
    worst_parent = max(regime["us_per_conformer"] for regime in paces)
    worst_beyond = max(regime["us_per_conformer_beyond_one_query"] for regime in paces)
    campaigns = f"median of {cpu_runs} campaigns each" if cpu_runs > 1 else "one campaign each"
    return {
        "queries": len(queries),
        "conformers_per_query": conformers,
        "equal_work": {name: asdict(found) for name, found in works.items()},
        "repeats": repeats,
        "seconds": {name: round(value, 2) for name, value in seconds.items()},
        "seconds_each_repeat": {name: [round(value, 2) for value, _ in found] for name, found in samples.items()},
        "speedup": speedup,
        "parent_cpu": parent,
        # the parent's share of one core when W workers are busy: W * (its CPU per query) / (a query's time)
        "predicted_parent_core_share": {str(w): round(w * per_query_cpu / per_query_worker, 3)
                                        for w in WORKER_COUNTS},
        "workers_one_parent_keeps_busy": int(per_query_worker / per_query_cpu) if per_query_cpu else None,
        "goals": [goal.as_dict() for goal in (
            Goal("screen_2_vs_loop_a", f"templ screen -w 2 (command) vs the in-process loop, best of {repeats}: "
                 + same, speedup["screen_2_vs_loop_a"], Comparison.AT_LEAST, 1.9),
            Goal("screen_1_vs_loop_a", f"templ screen -w 1 (command) vs the in-process loop, best of {repeats}: "
                 + same, speedup["screen_1_vs_loop_a"], Comparison.AT_LEAST, 0.98),
            Goal("screen_2_vs_loop_b_2", "templ screen -w 2 vs one templ select-best --query -w 2 per query "
                 "(once): " + same, speedup["screen_2_vs_loop_b_2"], Comparison.AT_LEAST, 2.5),
            Goal("parent_cpu_per_conformer", "the campaign parent's CPU over the conformers its workers embedded, "
                 "the worse of the library and busy paces (2 workers, " + campaigns + ")", worst_parent,
                 Comparison.AT_MOST, PARENT_CPU_GOAL_US, "us"),
            Goal("parent_cpu_per_conformer_beyond_one_query", "the same, less a one-query campaign's CPU "
                 f"({parent['one_query']['ms']} ms: what any campaign costs the parent) over the conformers "
                 "less its own: the rate a long campaign approaches", worst_beyond, unit="us"),
        )],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
