"""A library of templates: each query's templates chosen by the core it shares with them, that core pinned.

Real SARS-CoV-2 Mpro crystal ligands (``tests/data/mpro_library.sdf``: three analogue series and two
unrelated ligands, see ``tests/data/README.md``) and held-out analogues from the same Polaris file as
queries, with their crystal poses as the reference. Real RDKit, real ``templ`` runs, no mocks.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolAlign
from templ_runs import run_templ, templ_env
from test_screen import poses, screen_args, write_smi

from templ_pipeline.campaign.outputs import read_scores
from templ_pipeline.core.embedding import Pins, embed_on_this_thread
from templ_pipeline.core.events import PinFallback, PoseMethod
from templ_pipeline.core.pinning import (
    inverted_centres,
    pinned_conformers,
    stereo_safe_pairs,
)
from templ_pipeline.core.template_choice import ChoiceOptions, TemplateMatch, choose_templates
from templ_pipeline.core.template_library import TemplateLibrary
from templ_pipeline.errors import InputError
from templ_pipeline.io import read_template_library

LIBRARY = Path(__file__).parent / "data" / "mpro_library.sdf"
POLARIS = Path(__file__).parents[1] / "benchmarks" / "data" / "polaris" / "train_sarsmols.sdf.gz"
#: Held-out analogues (Polaris record -> the library template wholly inside them, the largest such):
#: 211 is 400 with a second chlorine; 364 is 637 with a methoxy; 379 is 76 with a second methyl, and 37,
#: one atom smaller, is the more similar in 2D (Morgan), so the core, not the fingerprint, decides.
EXPECTED = {"mpro_211": "mpro_400", "mpro_364": "mpro_637", "mpro_379": "mpro_76"}
#: The queries whose crystal pose is in the --reference file; the third has none.
REFERENCED = ("mpro_211", "mpro_379")
CONFORMERS = 8  # for the conformers made in this process
STEREO_TEMPLATE = "mpro_46"  # O=C(Nc1cncc2ccccc12)[C@@H]1CCOc2ccc(Cl)cc21: its chromane C4 is in every core


def rows_by_template(directory: Path) -> dict[tuple[str, str], dict[str, str]]:
    """scores.csv by (query id, template), without the ``seconds`` column."""
    rows = read_scores(directory / "scores.csv")
    found = {(row["query_id"], row["template_name"]): {k: v for k, v in row.items() if k != "seconds"} for row in rows}
    assert len(found) == len(rows), "a (query, template) pair appears twice"
    return found


def metric_samples(path: Path) -> dict[tuple[str, frozenset], float]:
    """A --metrics-textfile's samples by name and labels (the job id left out)."""
    return {(s.name, frozenset((k, v) for k, v in s.labels.items() if k != "job_id")): s.value
            for family in text_string_to_metric_families(path.read_text()) for s in family.samples}


def chiral_centre(mol: Chem.Mol) -> int:
    (centre,) = [atom.GetIdx() for atom in mol.GetAtoms() if atom.GetChiralTag() != Chem.ChiralType.CHI_UNSPECIFIED]
    return centre


def inverted(smiles: str) -> str:
    """The SMILES with every tetrahedral centre's @/@@ swapped: the enantiomer."""
    return smiles.replace("@@", "\0").replace("@", "@@").replace("\0", "@")


@pytest.fixture(scope="module")
def library():
    return read_template_library(LIBRARY)


@pytest.fixture(scope="module")
def crystal() -> dict[str, Chem.Mol]:
    """The queries' crystal poses: their records of the Polaris file, named by query id."""
    wanted = {int(name.removeprefix("mpro_")): name for name in EXPECTED}
    with gzip.open(POLARIS) as handle:
        found = {wanted[number]: mol for number, mol in enumerate(Chem.ForwardSDMolSupplier(handle), start=1)
                 if number in wanted}
    for name, mol in found.items():
        mol.SetProp("_Name", name)
    assert sorted(found) == sorted(EXPECTED)
    return found


@pytest.fixture(scope="module")
def queries(crystal) -> dict[str, str]:
    """Query id -> SMILES (isomeric, from the crystal pose)."""
    return {name: Chem.MolToSmiles(mol) for name, mol in crystal.items()}


@pytest.fixture(scope="module")
def campaign_inputs(tmp_path_factory, queries, crystal) -> tuple[Path, Path]:
    """The queries as a .smi file, and the reference poses of REFERENCED as an SDF."""
    directory = tmp_path_factory.mktemp("inputs")
    smi = write_smi(directory / "queries.smi", sorted(queries.items()))
    reference = directory / "reference.sdf"
    with Chem.SDWriter(str(reference)) as writer:
        for name in REFERENCED:
            writer.write(crystal[name])
    return smi, reference


@pytest.fixture(scope="module")
def screens(tmp_path_factory, campaign_inputs) -> dict[int, Path]:
    """The queries screened on 1 and on 2 workers (12 conformers each), with --reference and a metrics textfile
    (DIR.prom next to each output directory)."""
    smi, reference = campaign_inputs
    directory = tmp_path_factory.mktemp("screens")
    found = {}
    for workers in (1, 2):
        out = directory / f"w{workers}"
        done = run_templ(*screen_args(LIBRARY, smi, out, "-w", workers, "--reference", reference,
                                      "--metrics-textfile", directory / f"w{workers}.prom"))
        assert done.returncode == 0, done.stderr
        assert "ok 3, failed 0" in done.stdout, done.stdout
        found[workers] = out
    return found


@pytest.fixture(scope="module")
def per_template(tmp_path_factory, campaign_inputs) -> dict[str, Path]:
    """--per-template screens: with the default choice (top 5), and with --top-templates all."""
    smi, _ = campaign_inputs
    directory = tmp_path_factory.mktemp("per_template")
    found = {}
    for top in ("5", "all"):
        out = directory / f"top_{top}"
        extra = ["--top-templates", top] if top == "all" else []
        done = run_templ(*screen_args(LIBRARY, smi, out, "-w", "2", "--per-template", *extra))
        assert done.returncode == 0, done.stderr
        found[top] = out
    return found


# ---------------------------------------------------------------------------
# Choosing templates
# ---------------------------------------------------------------------------
def test_a_held_out_analogue_picks_the_template_sharing_its_largest_core(library, queries):
    for name, smiles in queries.items():
        choice = choose_templates(Chem.MolFromSmiles(smiles), library, ChoiceOptions())
        assert len(choice.chosen) == 5 and choice.library_size == len(library) and choice.mcs_timeouts == 0
        best = choice.chosen[0]
        assert library.names[best.index] == EXPECTED[name], [library.names[m.index] for m in choice.chosen]
        # the template lies wholly inside the query: the core is all of it
        assert best.core_atoms == library.mols[best.index].GetNumAtoms() and best.smarts
        cores = [match.core_atoms for match in choice.chosen]
        assert cores == sorted(cores, reverse=True) and cores[0] > cores[1]
    choice = choose_templates(Chem.MolFromSmiles(queries["mpro_379"]), library, ChoiceOptions())
    first, second = choice.chosen[:2]
    assert library.names[second.index] == "mpro_37" and second.similarity > first.similarity


def test_exclude_identical_drops_the_template_that_is_the_query_itself(library, tmp_path):
    itself = library.names.index("mpro_400")
    smiles = Chem.MolToSmiles(library.mols[itself])
    query = Chem.MolFromSmiles(smiles)
    plain = choose_templates(query, library, ChoiceOptions())
    assert (plain.chosen[0].index, plain.chosen[0].similarity, plain.excluded) == (itself, 1.0, 0)
    left_out = choose_templates(query, library, ChoiceOptions(exclude_identical=True))
    assert left_out.excluded == 1 and len(left_out.chosen) == 5
    assert itself not in [match.index for match in left_out.chosen]

    done = run_templ("select-best", "-t", LIBRARY, "-q", smiles, "-n", 4, "-o", tmp_path / "out.sdf",
                     "--exclude-identical", "--json", "--no-metrics-server", "--log-format", "json",
                     "--log-file", tmp_path / "log.jsonl")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    names = [summary["template"]["name"], *(other["name"] for other in summary["template"]["runner_up"])]
    assert len(names) == 5 and "mpro_400" not in names
    assert summary["template_selection"]["0"]["excluded_identical"] == 1


def test_the_summary_counts_the_conformers_of_every_template_and_scoring_them_is_one_call(library, tmp_path):
    """The query's conformers are spread over its 5 templates: the summary gives all of them, not the chosen
    template's share, and scoring them against their templates is one call, sized for all of them: one
    decision in the summary and one ``select_best.done`` in the log, not one per template."""
    smiles = Chem.MolToSmiles(library.mols[library.names.index("mpro_400")])
    done = run_templ("select-best", "-t", LIBRARY, "-q", smiles, "-n", 10, "-w", 2, "-o", tmp_path / "out.sdf",
                     "--exclude-identical", "--no-metrics-server", "--log-file", tmp_path / "log.jsonl",
                     env=templ_env(without=("TEMPL_EXACT_WORKERS",)))  # the suite's exact sizing decides nothing
    assert done.returncode == 0, done.stderr
    assert "conformers 10: scored 10 against 5 templates, failed 0 (none)" in done.stdout, done.stdout
    reduced = [line for line in done.stdout.splitlines() if line.startswith("scoring workers 2 -> 1: small_work")]
    assert len(reduced) == 1 and "(10 conformers, and no other call" in reduced[0], done.stdout
    assert "(x" not in reduced[0], done.stdout
    events = [json.loads(line)["event"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert events.count("select_best.done") == 1 and events.count("executor.workers_reduced") == 1, events
    others = " ".join(done.stdout.split()).split("; others: ")[1].split(" template choice:")[0]
    scores = [float(score) for score in re.findall(r"record \d+ \S+ (\d\.\d+)", others)]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True), others  # best first, as in --json

    done = run_templ("select-best", "-t", LIBRARY, "-q", smiles, "-n", 10, "-o", tmp_path / "again.sdf",
                     "--exclude-identical", "--no-pin", "--json", "--no-metrics-server",
                     "--log-file", tmp_path / "log.jsonl")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # free conformers: the same 10 scored against each template
    assert summary["conformers"] == {"total": 10, "scored": 50, "failed": 0, "failed_by_reason": {}, "templates": 5}
    assert [template["conformers"]["scored"] for template in summary["templates"]] == [10] * 5


# ---------------------------------------------------------------------------
# Pinning the core
# ---------------------------------------------------------------------------
def test_a_pinned_pose_keeps_the_template_s_core_within_half_an_angstrom(library, queries):
    for name, smiles in queries.items():
        mol = Chem.MolFromSmiles(smiles)
        match = choose_templates(mol, library, ChoiceOptions()).chosen[0]
        template = library.mols[match.index]
        made = pinned_conformers(mol, template, match, CONFORMERS, seed=42)
        assert (made.method, made.fallback) == (PoseMethod.PINNED, PinFallback.NONE), (name, made.detail)
        assert made.pinned == match.atom_map and made.confs.GetNumConformers() == CONFORMERS
        query_atoms = [query_atom for query_atom, _ in made.pinned]
        core = template.GetConformer().GetPositions()[[template_atom for _, template_atom in made.pinned]]
        for conformer in made.confs.GetConformers():
            placed = conformer.GetPositions()[query_atoms]
            rmsd = float(np.sqrt(((placed - core) ** 2).sum(axis=1).mean()))  # in place: no superposition
            assert rmsd < 0.5, (name, conformer.GetId(), rmsd)


def test_the_template_s_own_configuration_is_pinned_whole(library):
    template = library.mols[library.names.index(STEREO_TEMPLATE)]
    query = Chem.MolFromSmiles(Chem.MolToSmiles(template))
    centre = chiral_centre(query)
    match = choose_templates(query, library, ChoiceOptions()).chosen[0]
    assert library.names[match.index] == STEREO_TEMPLATE and centre in dict(match.atom_map)
    assert inverted_centres(query, template, match.atom_map) == []
    made = pinned_conformers(query, template, match, CONFORMERS, seed=42)
    assert (made.method, made.fallback) == (PoseMethod.PINNED, PinFallback.NONE), made.detail
    assert centre in [query_atom for query_atom, _ in made.pinned]


def test_a_stereocentre_the_template_would_invert_is_not_pinned(library):
    template = library.mols[library.names.index(STEREO_TEMPLATE)]
    enantiomer = Chem.MolFromSmiles(inverted(Chem.MolToSmiles(template)))
    centre = chiral_centre(enantiomer)
    match = choose_templates(enantiomer, library, ChoiceOptions()).chosen[0]
    # the core ignores chirality: the template is still the whole of the query
    assert library.names[match.index] == STEREO_TEMPLATE and match.core_atoms == template.GetNumAtoms()
    assert inverted_centres(enantiomer, template, match.atom_map) == [centre]
    pairs, left_free = stereo_safe_pairs(enantiomer, template, match.atom_map)
    assert left_free == [centre] and centre not in dict(pairs)

    made = pinned_conformers(enantiomer, template, match, CONFORMERS, seed=42)
    assert made.fallback == PinFallback.STEREO_MISMATCH, (made.method, made.fallback, made.detail)
    assert made.method == PoseMethod.PINNED_PARTIAL and centre not in [query_atom for query_atom, _ in made.pinned]
    assert made.confs.GetNumConformers() >= CONFORMERS // 2  # partly pinned: a few attempts may fail
    expected = Chem.FindMolChiralCenters(enantiomer, useLegacyImplementation=False)
    for conformer in made.confs.GetConformers():  # each pose is the query's enantiomer, not the template's
        pose = Chem.Mol(made.confs, confId=conformer.GetId())
        Chem.AssignStereochemistryFrom3D(pose)
        assert Chem.FindMolChiralCenters(pose, useLegacyImplementation=False) == expected


def polaris_pair(query_record: int, template_record: int) -> tuple[Chem.Mol, Chem.Mol, TemplateMatch]:
    """A Polaris ligand as a user gives it (its SMILES), another one's crystal pose as its template, their core."""
    with gzip.open(POLARIS) as handle:
        records = dict(enumerate(Chem.ForwardSDMolSupplier(handle), start=1))
    query = Chem.MolFromSmiles(Chem.MolToSmiles(records[query_record]))
    template = Chem.RemoveHs(records[template_record])
    (match,) = choose_templates(query, TemplateLibrary([template], [f"polaris_{template_record}"]),
                                ChoiceOptions(top=1)).chosen
    return query, template, match


class RecordedEmbed:
    """The real embedding on this thread, each call's conformer count, number of pinned atoms and whether it is
    a probe kept."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, bool]] = []

    def __call__(self, with_hs: Chem.Mol, num_conformers: int, seed: int, random_coords: bool,
                 pins: Pins | None = None, *, probe: bool = False) -> Chem.Mol:
        self.calls.append((num_conformers, len(pins or {}), probe))
        return embed_on_this_thread(with_hs, num_conformers, seed, random_coords, pins)


def test_pins_etkdg_cannot_meet_are_stepped_down_from_after_one_probe_conformer_each():
    # Polaris 270 on 109: the core is the whole template (35 atoms), its geometry inside the query's bounds,
    # yet ETKDG meets neither the core nor its 26 ring atoms (each took 3-12 s for 40 conformers)
    query, template, match = polaris_pair(270, 109)
    assert match.core_atoms == 35
    embed = RecordedEmbed()
    made = pinned_conformers(query, template, match, CONFORMERS, seed=42, run=embed)
    assert (made.method, made.fallback, made.pinned) == (PoseMethod.FREE, PinFallback.CONSTRAINTS_UNMET, ())
    assert made.detail == ("ETKDG embedded no conformer with 35 core atoms pinned; "
                           "ETKDG embedded no conformer with 26 core atoms pinned")
    # a probe per pin set, then the free embedding
    assert embed.calls == [(1, 35, True), (1, 26, True), (CONFORMERS, 0, False)]
    assert made.confs.GetNumConformers() == CONFORMERS


def test_the_probe_embeds_the_run_s_first_conformer():
    # so where the probe succeeds, the conformers are the run's alone (the probe changes no pose)
    query, template, match = polaris_pair(364, 637)
    embed = RecordedEmbed()
    made = pinned_conformers(query, template, match, CONFORMERS, seed=42, run=embed)
    assert (made.method, made.fallback) == (PoseMethod.PINNED, PinFallback.NONE), made.detail
    assert embed.calls == [(1, match.core_atoms, True), (CONFORMERS, match.core_atoms, False)]
    positions = template.GetConformer().GetPositions()
    pins = {query_atom: tuple(positions[template_atom]) for query_atom, template_atom in match.atom_map}
    with_hs = Chem.AddHs(query)
    alone = embed_on_this_thread(with_hs, 1, 42, True, pins)
    run = embed_on_this_thread(with_hs, CONFORMERS, 42, True, pins)
    assert np.array_equal(alone.GetConformer().GetPositions(), run.GetConformer(0).GetPositions())


def test_an_rdkit_failure_inside_pinned_embedding_steps_down_with_its_message():
    # Polaris 159 (1,4-diacetylpiperazine) on 345: ETKDG's optimiser raises an invariant violation with the
    # 12-atom core pinned; the query was a failed row. Its 6 ring atoms embed.
    query, template, match = polaris_pair(159, 345)
    made = pinned_conformers(query, template, match, CONFORMERS, seed=42)
    assert (made.method, made.fallback) == (PoseMethod.PINNED_PARTIAL, PinFallback.CONSTRAINTS_UNMET), made.detail
    assert made.detail == ("ETKDG failed with 12 core atoms pinned "
                           "(Invariant Violation: bad direction in linearSearch)")
    assert made.pinned_atoms == 6 and made.confs.GetNumConformers() == CONFORMERS


def test_an_mcs_search_past_its_bound_leaves_the_query_free_with_the_reason(library, queries):
    mol = Chem.MolFromSmiles(queries["mpro_211"])
    choice = choose_templates(mol, library, ChoiceOptions(top=len(library), mcs_timeout=1e-6))
    assert choice.mcs_timeouts >= 1 and len(choice.chosen) == len(library)
    coreless = [match for match in choice.chosen if not match.atom_map]
    assert coreless and all(match.mcs_timed_out for match in coreless)
    made = pinned_conformers(mol, library.mols[coreless[0].index], coreless[0], CONFORMERS, seed=42)
    assert (made.method, made.fallback, made.pinned) == (PoseMethod.FREE, PinFallback.MCS_TIMEOUT, ())
    assert made.confs.GetNumConformers() == CONFORMERS


# ---------------------------------------------------------------------------
# Reading the library
# ---------------------------------------------------------------------------
def test_bad_template_records_are_reported_and_skipped(library, tmp_path):
    good = [Chem.MolToMolBlock(library.mols[library.names.index(name)]) for name in ("mpro_46", "mpro_400", "mpro_76")]
    garbage = "garbage\nthis is not\na molecule block\nM  END\n"
    flat = Chem.Mol(library.mols[library.names.index("mpro_637")])
    AllChem.Compute2DCoords(flat)
    # records 2 (unreadable), 4 (2D) and 6 (record 1 again) are the bad ones
    records = [good[0], garbage, good[1], Chem.MolToMolBlock(flat), good[2], good[0]]
    path = tmp_path / "mixed.sdf"
    path.write_text("".join(f"{block}$$$$\n" for block in records))

    mixed = read_template_library(path)
    assert (mixed.names, mixed.records) == (["mpro_46", "mpro_400", "mpro_76"], [1, 3, 5])
    assert [(p.record, p.reason) for p in mixed.problems] == [(2, "unreadable"), (4, "no_3d"), (6, "duplicate")]
    assert "record 1" in mixed.problems[2].detail

    done = run_templ("select-best", "-t", path, "-q", Chem.MolToSmiles(library.mols[0]), "-n", 4,
                     "-o", tmp_path / "out.sdf", "--no-metrics-server", "--log-format", "json",
                     "--log-file", tmp_path / "log.jsonl")
    assert done.returncode == 0, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("warning:") and str(path) in line, line
    assert all(f"record {number} {reason}" in line for number, reason in
               ((2, "unreadable"), (4, "no_3d"), (6, "duplicate"))), line

    queries = write_smi(tmp_path / "one.smi", [("q", Chem.MolToSmiles(library.mols[0]))])
    done = run_templ("screen", "-t", path, "-q", queries, "-o", tmp_path / "campaign", "-n", 4, "-w", 1,
                     "--no-metrics-server", "--log-format", "json", "--log-file", tmp_path / "screen.jsonl")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and all(f"record {number} {reason}" in warnings[0] for number, reason in
                                      ((2, "unreadable"), (4, "no_3d"), (6, "duplicate"))), done.stderr


def test_a_file_of_bad_records_or_a_structure_file_is_refused_in_one_line(library, tmp_path):
    flat = Chem.Mol(library.mols[0])
    AllChem.Compute2DCoords(flat)
    only_bad = tmp_path / "only_bad.sdf"
    only_bad.write_text(f"garbage\nthis is not\na molecule block\nM  END\n$$$$\n{Chem.MolToMolBlock(flat)}$$$$\n")
    with pytest.raises(InputError, match="no usable template"):
        read_template_library(only_bad)
    structure = tmp_path / "mpro.pdb"
    shutil.copy(LIBRARY, structure)  # an SDF in content: the name is what is refused
    with pytest.raises(InputError, match="SDF"):
        read_template_library(structure)
    for path, expected in ((only_bad, "no usable template"), (structure, "SDF")):
        done = run_templ("select-best", "-t", path, "-q", "CC(=O)Nc1ccc(O)cc1", "-n", 4,
                         "-o", tmp_path / "out.sdf", "--no-metrics-server", "--log-format", "json",
                         "--log-file", tmp_path / "log.jsonl")
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.splitlines()
        assert expected in line and path.name in line, line
        assert not (tmp_path / "out.sdf").exists()


# ---------------------------------------------------------------------------
# Campaigns
# ---------------------------------------------------------------------------
def test_one_worker_and_two_give_the_same_rows(screens, queries):
    rows = rows_by_template(screens[1])
    assert rows == rows_by_template(screens[2])
    assert dict(rows.keys()) == EXPECTED
    for (query, _template), row in rows.items():
        assert (row["status"], row["input_smiles"]) == ("ok", queries[query])
        assert (row["pose_method"], row["pin_fallback"]) == ("pinned", "none")
        assert int(row["pinned_atoms"]) == int(row["core_atoms"]) > 0 and row["core_smarts"]
        assert 0 < float(row["template_similarity"]) < 1
        assert len(row["runner_up"].split("; ")) == 4  # the other four chosen templates


def test_against_every_template_the_summary_and_pose_name_the_best_ten_others_and_the_json_all(library, tmp_path):
    smiles = Chem.MolToSmiles(library.mols[library.names.index("mpro_400")])
    args = ("select-best", "-t", LIBRARY, "-q", smiles, "-n", 5, "--top-templates", "all", "--no-metrics-server")
    done = run_templ(*args, "-o", tmp_path / "out.sdf")
    assert done.returncode == 0, done.stderr
    others = " ".join(done.stdout.split()).split("; others: ")[1].split(" template choice:")[0]
    assert others.count("record ") == 10 and others.endswith(" and 2 more (--json lists them all)"), others
    named = Chem.SDMolSupplier(str(tmp_path / "out.sdf"))[0].GetProp("runner_up").split("; ")
    assert len(named) == 11 and named[-1] == "and 2 more", named
    done = run_templ(*args, "-o", tmp_path / "again.sdf", "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)["template"]["runner_up"]
    assert len(listed) == len(library) - 1 == 12
    assert [other["name"] for other in listed[:10]] == [part.split()[0] for part in named[:10]]


def test_select_best_gives_the_pose_and_template_screen_gave(screens, queries, tmp_path):
    (row,) = [row for (query, _), row in rows_by_template(screens[2]).items() if query == "mpro_379"]
    done = run_templ("select-best", "-t", LIBRARY, "-q", queries["mpro_379"], "-n", 12, "-o", tmp_path / "out.sdf",
                     "--json", "--no-metrics-server", "--log-format", "json", "--log-file", tmp_path / "log.jsonl")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    best, template = summary["best"]["combo"], summary["template"]
    assert best["combo"] == pytest.approx(float(row["combo"]), abs=1e-9)
    assert best["conformer_id"] == int(row["conformer_id"])
    assert template["name"] == row["template_name"] == "mpro_76"
    assert (template["record"], template["core_atoms"], template["pinned_atoms"]) == (
        int(row["template_record"]), int(row["core_atoms"]), int(row["pinned_atoms"]))
    assert (template["core_smarts"], template["pose_method"], template["pin_fallback"]) == (
        row["core_smarts"], row["pose_method"], row["pin_fallback"])
    assert template["similarity"] == pytest.approx(float(row["template_similarity"]), abs=1e-4)
    assert [other["name"] for other in template["runner_up"]] == [
        part.split()[0] for part in row["runner_up"].split("; ")]


def test_per_template_gives_one_row_per_chosen_template(per_template, library, queries):
    rows = rows_by_template(per_template["5"])
    for query, smiles in queries.items():
        chosen = choose_templates(Chem.MolFromSmiles(smiles), library, ChoiceOptions()).chosen
        assert sorted(template for name, template in rows if name == query) == sorted(
            library.names[match.index] for match in chosen)
    assert all(row["status"] == "ok" and row["pose_method"] == "pinned" for row in rows.values())
    assert len(Chem.SDMolSupplier(str(per_template["5"] / "poses.sdf"))) == len(rows) == 5 * len(queries)


def test_top_templates_all_scores_every_template_with_free_conformers(per_template, library, queries):
    rows = rows_by_template(per_template["all"])
    assert sorted(rows) == sorted((query, name) for query in queries for name in library.names)
    for row in rows.values():
        assert (row["status"], row["pose_method"], row["pin_fallback"]) == ("ok", "free", "not_selected")
        assert (row["pinned_atoms"], row["template_similarity"]) == ("0", "")
    for (query, template), row in rows.items():  # the best 10 of the 12 other templates, then how many more
        others = sorted(((float(other["combo"]), int(other["template_record"]), name)
                         for (same, name), other in rows.items() if same == query and name != template),
                        key=lambda item: (-item[0], item[1]))
        assert row["runner_up"].split("; ") == [f"{name} {combo:.4f}" for combo, _, name in others[:10]] + [
            "and 2 more"]


def test_a_reference_adds_the_rmsd_in_place(screens, crystal):
    rows = {query: row for (query, _), row in rows_by_template(screens[2]).items()}
    found = poses(screens[2])
    for query in EXPECTED:
        if query not in REFERENCED:
            assert rows[query]["rmsd"] == "" and not found[query].HasProp("rmsd")
            continue
        rmsd = float(rows[query]["rmsd"])
        assert float(found[query].GetProp("rmsd")) == rmsd
        # the pose where it was written, against the crystal pose: symmetry-aware, no superposition
        expected = rdMolAlign.CalcRMS(Chem.RemoveHs(found[query]), Chem.RemoveHs(crystal[query]))
        assert rmsd == pytest.approx(expected, abs=1e-3)


def test_a_real_screen_counts_its_poses_and_template_choices_in_its_metrics(screens):
    for workers, out in screens.items():
        samples = metric_samples(out.with_suffix(".prom"))
        poses_made = {labels: value for (name, labels), value in samples.items() if name == "templ_poses_total"}
        assert poses_made[frozenset({("method", "pinned"), ("fallback", "none")})] == len(EXPECTED), workers
        assert sum(poses_made.values()) == len(EXPECTED), poses_made
        assert samples[("templ_template_selection_duration_seconds_count", frozenset())] == len(EXPECTED)
