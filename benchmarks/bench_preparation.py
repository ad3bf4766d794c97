"""Query preparation against the query it prepares (goal: under 5 % of a 50-conformer query).

For each bundled ligand (the examples' queries and the screening library), the time of
``prepare`` (fragments, element and size checks, isotopes, stereo enumeration) is set
against the time of the query it precedes in a campaign worker: ETKDG on one thread for
50 conformers and scoring them against the Mpro template. Stereoisomers are timed as
the worker runs them: each one is embedded and scored, so an enumerated query costs
that many queries while its preparation is paid once.

``python -m benchmarks.bench_preparation`` prints JSON; :func:`run` returns the same dict.
"""

from __future__ import annotations

import json
import statistics
import time
from importlib import resources

from rdkit import Chem

from benchmarks.common import sized
from benchmarks.goals import Comparison, Goal
from templ_pipeline.campaign.task import CampaignSettings, QueryRunner, QueryTask
from templ_pipeline.core.batch import mol_to_bytes
from templ_pipeline.core.preparation import prepare
from templ_pipeline.io import examples

GOAL_PERCENT = 5.0
CONFORMERS = 50


def _library() -> list[str]:
    text = (resources.files("templ_pipeline") / "data" / "screen_library.smi").read_text()
    smiles = [line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return smiles + [example.query_smiles for example in examples()]


def _prepare_seconds(smiles: str, repeat: int = 20) -> float:
    mol = Chem.MolFromSmiles(smiles)
    rounds = []
    for _ in range(repeat):
        started = time.perf_counter()
        prepare(mol, input_smiles=smiles)
        rounds.append(time.perf_counter() - started)
    return statistics.median(rounds)


def run(n_queries: int | None = None, conformers: int | None = None) -> dict:
    conformers = conformers or sized(CONFORMERS, 5)
    template = next(example.template for example in examples() if example.name == "mpro")
    settings = CampaignSettings((mol_to_bytes(template),), ("mpro",), conformers, 42, "combo")
    runner = QueryRunner(settings)
    library = _library()[:n_queries or sized(None, 3)]
    prepare(Chem.MolFromSmiles(library[0]))  # the salt list and the element table, once per process
    shares, prepared_ms, query_ms = [], [], []
    for number, smiles in enumerate(library):
        preparation = _prepare_seconds(smiles)
        outcome = runner.run(QueryTask(number, f"q{number}", smiles))
        whole = outcome.seconds  # preparation included, as the worker runs it
        shares.append(100.0 * preparation / whole)
        prepared_ms.append(preparation * 1000)
        query_ms.append(whole * 1000)
    worst = max(shares)
    return {
        "queries": len(library),
        "conformers": conformers,
        "prepare_ms_median": round(statistics.median(prepared_ms), 3),
        "prepare_ms_max": round(max(prepared_ms), 3),
        "query_ms_median": round(statistics.median(query_ms), 1),
        "share_percent_median": round(statistics.median(shares), 3),
        "share_percent_max": round(worst, 3),
        "goal_percent": GOAL_PERCENT,
        "goal_met": worst < GOAL_PERCENT,
        "goals": [Goal("preparation_share_max", f"prepare() vs the whole campaign query it precedes ({conformers} "
                       f"conformers, every isomer), the worst of {len(library)} queries", round(worst, 3),
                       Comparison.BELOW, GOAL_PERCENT, "%").as_dict()],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
