"""Conformers with the core a query shares with its template pinned on the template's coordinates.

TEMPL's pose comes from its template: the atoms of the maximum common substructure
(:mod:`templ_pipeline.core.template_choice`) are embedded at the distances the
template's crystal pose has (ETKDG with RDKit's ``EmbedParameters.SetCoordMap``, the
current API), and each conformer is then superposed on the template by those atoms
(``rdMolAlign.AlignMol`` with the atom map). The rest of the query is free.

What is pinned is decided here, and every step down is recorded (``PinFallback``):

- **Stereo**: a core match can map a stereocentre of the query onto the template's
  opposite configuration (RascalMCES ignores chirality). Pinning it would ask ETKDG
  for an inverted centre, which it refuses (chirality is enforced) after many failed
  attempts, or would distort the core. So each stereocentre whose configuration the
  pinned neighbours fix is checked first (below), and a centre the template would
  invert is left free, with the core atoms up to ``STEREO_FREE_BONDS`` bonds from it:
  ``stereo_mismatch``.
- **Too small a core** (fewer than ``MIN_PINNED_ATOMS``): nothing to pin, free
  embedding: ``small_core`` (or ``mcs_timeout`` when the search had no time).
- **Constraints that cannot be met**: a core atom whose template distances to the other
  pinned atoms lie more than ``BOUNDS_TOLERANCE`` outside the query's own distance
  bounds (a ring mapped with another pucker or flipped) is left free first, the atom
  with the most such pairs at a time: ETKDG given such pins does not fail, it retries
  for minutes (measured: over 40 s for 50 conformers of a 27-atom ligand, where the
  same query against another template took 0.3 s). RDKit's own ``timeout`` would
  bound that, but by the clock, so the conformers would depend on the machine's load.
  When ETKDG still embeds nothing, or RDKit fails inside it (an invariant violation
  in its optimiser, measured on 1 of 567 Polaris ligands): fewer constraints, the
  core's ring atoms only (rings are rigid, chains are where the query may need to
  differ), then free embedding: ``constraints_unmet``.
- **A probe first**: each set of pins is tried on one conformer before the query's
  share is asked for. Pins ETKDG cannot meet fail every conformer, each after
  ``PINNED_ATTEMPTS`` attempts: measured on 33-36-atom Polaris ligands, 1.8-5.9 s
  for a template's 40 conformers where the probe fails in 0.06-0.13 s. The probe is
  seeded as the run is and embeds the run's first conformer, so where it succeeds
  the conformers are those of the run alone; only pins whose first conformer fails
  are stepped down from. Measured on the leave-one-out over all 567 distinct Polaris
  molecules at the defaults: the workers' time fell by 21 % (the slowest query from
  86 to 41 s) and the probe changed one pose of 567 (over 2 A either way).

Free embedding is what :func:`templ_pipeline.core.embedding.embed_prepared` does
for a query without a template, so a fallback gives exactly today's conformers.

Worker processes import this module: RDKit and numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import rdDistGeom, rdMolAlign

from templ_pipeline.core.embedding import Embed, Pins, embed_on_this_thread, embed_prepared
from templ_pipeline.core.labels import PinFallback, PoseMethod
from templ_pipeline.core.template_choice import TemplateMatch

MIN_PINNED_ATOMS = 3
"""Fewer atoms than this fix no orientation: the core is not pinned."""

STEREO_FREE_BONDS = 3
"""Core atoms this many bonds or fewer from an inverted centre are left free. Its neighbours alone are not
enough: they stay bonded to pinned atoms, which hold them where the template's configuration puts them, and
ETKDG (chirality enforced) then embeds nothing (measured on an enantiomer of a ring-fused amide: no conformer
with the neighbours freed; 6 of 8 with atoms up to 2 bonds away freed, 7 of 8 up to 3)."""

BOUNDS_TOLERANCE = 0.5
"""A: crystal poses deviate from ideal geometry by a few tenths of an angstrom, which ETKDG absorbs
(measured: 13 pairs 0.05-0.3 A outside the bounds, 50 conformers in 0.3 s); a pair further out is a
core mapped onto another geometry."""

_BOND_LENGTH = 1.5  # A: where a stand-in neighbour is placed for the stereo check


@dataclass(frozen=True, slots=True)
class PinnedConformers:
    """Conformers of a query for one template (heavy atoms, superposed on the template's core when pinned),
    how they were made, and the (query atom, template atom) pairs that were pinned."""

    confs: Chem.Mol
    method: PoseMethod
    fallback: PinFallback
    pinned: tuple[tuple[int, int], ...] = ()
    detail: str = ""

    @property
    def pinned_atoms(self) -> int:
        return len(self.pinned)


def inverted_centres(query: Chem.Mol, template: Chem.Mol, atom_map: tuple[tuple[int, int], ...]) -> list[int]:
    """The query's stereocentres that the template's coordinates for the mapped atoms would invert.

    A centre counts when it and at least three of its heavy neighbours are mapped: then
    the pinned positions fix its configuration. The query's heavy atoms get the template's
    coordinates where mapped (an unmapped neighbour of a checked centre is put opposite
    its mapped ones, where a tetrahedral centre has its fourth neighbour), RDKit assigns
    each centre's configuration from those coordinates, and a centre whose tag differs
    from the query's own is inverted. Comparing tags is valid because both are read
    against the same atom and bond order: the query's.
    """
    mapped = dict(atom_map)
    centres = [atom.GetIdx() for atom in query.GetAtoms()
               if atom.GetChiralTag() in (Chem.ChiralType.CHI_TETRAHEDRAL_CW, Chem.ChiralType.CHI_TETRAHEDRAL_CCW)
               and atom.GetIdx() in mapped
               and sum(n.GetIdx() in mapped for n in atom.GetNeighbors() if n.GetAtomicNum() > 1) >= 3]
    if not centres:
        return []
    template_positions = template.GetConformer().GetPositions()
    # unmapped atoms far away, each at its own place: RDKit assigns every centre it sees and refuses
    # neighbours at one point ("Cannot normalize a zero length vector"); only the checked centres are read
    steps = np.arange(query.GetNumAtoms(), dtype=float)
    positions = np.column_stack((1000.0 + 3.0 * steps, 50.0 * np.sin(steps), 50.0 * np.cos(steps)))
    for query_atom, template_atom in atom_map:
        positions[query_atom] = template_positions[template_atom]
    for centre in centres:
        neighbours = [n.GetIdx() for n in query.GetAtomWithIdx(centre).GetNeighbors()]
        known = [n for n in neighbours if n in mapped]
        direction = positions[centre] - positions[known].mean(axis=0)
        norm = np.linalg.norm(direction)
        for missing in (n for n in neighbours if n not in mapped):
            positions[missing] = positions[centre] + (direction / norm if norm > 0 else direction) * _BOND_LENGTH
    probe = Chem.Mol(query)
    probe.RemoveAllConformers()
    conformer = Chem.Conformer(probe.GetNumAtoms())
    conformer.SetPositions(positions)
    conformer.Set3D(True)
    probe.AddConformer(conformer, assignId=True)
    try:
        with rdBase.BlockLogs():
            Chem.AssignAtomChiralTagsFromStructure(probe, replaceExistingTags=True)
    except RuntimeError:  # degenerate template geometry: no centre can be checked, so none is trusted
        return centres
    return [centre for centre in centres
            if probe.GetAtomWithIdx(centre).GetChiralTag() != query.GetAtomWithIdx(centre).GetChiralTag()]


def stereo_safe_pairs(query: Chem.Mol, template: Chem.Mol, atom_map: tuple[tuple[int, int], ...]
                      ) -> tuple[tuple[tuple[int, int], ...], list[int]]:
    """The pairs that can be pinned without inverting a stereocentre, and the centres left free (each with the
    core atoms up to ``STEREO_FREE_BONDS`` bonds away)."""
    inverted = inverted_centres(query, template, atom_map)
    if not inverted:
        return atom_map, []
    bonds_apart = Chem.GetDistanceMatrix(query)
    freed = {atom for centre in inverted for atom in range(query.GetNumAtoms())
             if bonds_apart[centre][atom] <= STEREO_FREE_BONDS}
    return tuple(pair for pair in atom_map if pair[0] not in freed), inverted


def feasible_pairs(mol: Chem.Mol, template: Chem.Mol, pairs: tuple[tuple[int, int], ...],
                   tolerance: float = BOUNDS_TOLERANCE) -> tuple[tuple[int, int], ...]:
    """``pairs`` less the query atoms whose template distances to other pinned atoms fall outside the query's
    distance bounds (RDKit's bounds matrix, the one ETKDG embeds in) by more than ``tolerance``: the atom in
    the most such pairs first (the higher index on a tie), until none is left."""
    if len(pairs) < 2:
        return pairs
    bounds = rdDistGeom.GetMoleculeBoundsMatrix(Chem.AddHs(mol))
    upper = np.triu(bounds) + np.triu(bounds).T  # RDKit keeps upper bounds above the diagonal, lower below
    lower = np.tril(bounds) + np.tril(bounds).T
    template_positions = template.GetConformer().GetPositions()
    kept = list(pairs)
    while len(kept) >= 2:
        atoms = np.array([query_atom for query_atom, _ in kept])
        points = template_positions[[template_atom for _, template_atom in kept]]
        distances = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
        outside = ((distances > upper[np.ix_(atoms, atoms)] + tolerance)
                   | (distances < lower[np.ix_(atoms, atoms)] - tolerance))
        np.fill_diagonal(outside, False)
        counts = outside.sum(axis=1)
        if not counts.any():
            break
        worst = max(range(len(kept)), key=lambda position: (counts[position], kept[position][0]))
        del kept[worst]
    return tuple(kept)


def pinned_conformers(mol: Chem.Mol, template: Chem.Mol, match: TemplateMatch | None, num_conformers: int,
                      seed: int, run: Embed = embed_on_this_thread, *,
                      reason: PinFallback = PinFallback.NOT_SELECTED) -> PinnedConformers:
    """Conformers of ``mol`` (heavy atoms) with its core pinned on ``template`` as ``match`` maps it, stepping
    down to fewer pins, then to free embedding, when that cannot be done. ``match=None``: free embedding,
    as asked (``reason``: no template selection, or pinning off)."""
    if match is None:
        return _free(mol, num_conformers, seed, run, reason, "")
    if match.core_atoms < MIN_PINNED_ATOMS:
        reason = PinFallback.MCS_TIMEOUT if match.mcs_timed_out and not match.atom_map else PinFallback.SMALL_CORE
        return _free(mol, num_conformers, seed, run, reason,
                     f"core of {match.core_atoms} atoms (pinning needs {MIN_PINNED_ATOMS})")
    pairs, inverted = stereo_safe_pairs(mol, template, match.atom_map)
    # the first cause is the reason recorded (a stereo mismatch stays it when fewer pins follow); every
    # step is in the detail
    fallback, notes = PinFallback.NONE, []
    if inverted:
        fallback = PinFallback.STEREO_MISMATCH
        notes.append(f"stereocentre(s) {', '.join(map(str, inverted))} would be inverted by the template: "
                     f"{len(match.atom_map) - len(pairs)} core atoms left free")
    feasible = feasible_pairs(mol, template, pairs) if len(pairs) >= MIN_PINNED_ATOMS else pairs
    if len(feasible) < len(pairs):
        fallback = fallback if inverted else PinFallback.CONSTRAINTS_UNMET
        notes.append(f"{len(pairs) - len(feasible)} core atoms left free: the template's geometry is outside the "
                     f"query's distance bounds")
        pairs = feasible
    if len(pairs) >= MIN_PINNED_ATOMS:
        for attempt in _pin_sets(mol, pairs):
            try:
                confs = _embed_pinned(mol, template, attempt, num_conformers, seed, run)
            except RuntimeError as error:
                if not is_rdkit_invariant(error):
                    raise
                notes.append(f"ETKDG failed with {len(attempt)} core atoms pinned ({_first_lines(error)})")
            else:
                if confs.GetNumConformers():
                    method = PoseMethod.PINNED if fallback == PinFallback.NONE else PoseMethod.PINNED_PARTIAL
                    return PinnedConformers(confs, method, fallback, attempt, "; ".join(notes))
                notes.append(f"ETKDG embedded no conformer with {len(attempt)} core atoms pinned")
            fallback = fallback if inverted else PinFallback.CONSTRAINTS_UNMET
    else:
        notes.append(f"{len(pairs)} core atoms left to pin (pinning needs {MIN_PINNED_ATOMS})")
    return _free(mol, num_conformers, seed, run, fallback, "; ".join(notes))


def _pin_sets(mol: Chem.Mol, pairs: tuple[tuple[int, int], ...]) -> list[tuple[tuple[int, int], ...]]:
    """The pins to try in turn: the whole core, then its ring atoms only (when that is fewer and enough)."""
    ring = tuple(pair for pair in pairs if mol.GetAtomWithIdx(pair[0]).IsInRing())
    return [pairs, ring] if MIN_PINNED_ATOMS <= len(ring) < len(pairs) else [pairs]


def _embed_pinned(mol: Chem.Mol, template: Chem.Mol, pairs: tuple[tuple[int, int], ...], num_conformers: int,
                  seed: int, run: Embed) -> Chem.Mol:
    """ETKDG with ``pairs`` pinned (random starts, as constrained embedding needs), each conformer then
    superposed on the template's core; heavy atoms only."""
    template_positions = template.GetConformer().GetPositions()
    pins: Pins = {query_atom: tuple(template_positions[template_atom]) for query_atom, template_atom in pairs}
    with_hs = Chem.AddHs(mol)
    # RDKit's own lines ("Could not triangle bounds smooth molecule", an invariant's stack) say what the
    # fallback's detail says; they would reach the terminal from every worker
    with rdBase.BlockLogs():
        if num_conformers > 1:  # the probe (module docstring): the run's first conformer alone
            probe = run(with_hs, 1, seed, True, pins, probe=True)
            if probe.GetNumConformers() == 0:
                return probe
        embedded = run(with_hs, num_conformers, seed, True, pins)
    if embedded.GetNumConformers() == 0:
        return embedded
    confs = Chem.RemoveHs(embedded)
    atom_map = [tuple(pair) for pair in pairs]
    for conformer in confs.GetConformers():
        rdMolAlign.AlignMol(confs, template, prbCid=conformer.GetId(), atomMap=atom_map)
    return confs


def is_rdkit_invariant(error: RuntimeError) -> bool:
    """Whether ``error`` is an RDKit invariant violation (a failed check inside its C++ code), which a
    different set of constraints can avoid, rather than a failure of the process (threads, memory)."""
    return str(error).lstrip().startswith("Invariant Violation")


def _first_lines(error: RuntimeError) -> str:
    """The first two lines of RDKit's message ("Invariant Violation", then what failed)."""
    return ": ".join(line.strip() for line in str(error).strip().splitlines()[:2])


def _free(mol: Chem.Mol, num_conformers: int, seed: int, run: Embed, fallback: PinFallback,
          detail: str) -> PinnedConformers:
    return PinnedConformers(embed_prepared(mol, num_conformers, seed, run), PoseMethod.FREE, fallback, (), detail)
