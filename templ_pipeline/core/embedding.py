"""ETKDG embedding with the project's fixed parameters: one definition for every caller.

``templ select-best --query`` (:mod:`templ_pipeline.core.conformers`, on granted RDKit
threads) and each query of ``templ screen`` (a campaign worker, on one thread) embed
through :func:`embed`, so the same query, seed and conformer count give the same
conformers in both. ETKDG with a fixed seed gives bit-identical coordinates whatever
``numThreads`` is (checked: 50 conformers at 1 and 2 threads).

Campaign workers import this module: RDKit only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from rdkit import Chem
from rdkit.Chem import rdDistGeom  # not AllChem: its other modules cost every process 15 ms to import
from rdkit.Geometry import Point3D

from templ_pipeline.core.native_call import native_call_starting

Pins = Mapping[int, tuple[float, float, float]]
"""Atom index -> the coordinates ETKDG must reproduce for it (a template's core, :mod:`core.pinning`)."""

PINNED_ATTEMPTS = 3
"""Embedding attempts per conformer with pins (RDKit's ``maxIterations``; its default, 0, means about ten per
atom). Pins that ETKDG can meet are met at the first attempt (measured: 50 of 50 conformers at 1, 5 and 20
attempts, the same 0.4-0.5 s); pins it cannot meet cost 0.5 s per attempt for 50 conformers, and at the
default one query ran for minutes. A count, not RDKit's clock-based ``timeout``, so the conformers never depend
on the machine's load."""


DEFAULT_PRUNE_RMS = 0.0
"""A: no pruning by default. With ``prune_rms`` > 0 RDKit keeps a conformer only when its heavy-atom RMSD
(best alignment, symmetry-aware) to every conformer kept before it is at least that much; the rest are
dropped, not replaced, so fewer conformers than asked come back (measured: ``CCO`` 1 of 5 at 0.5; a
benzamide 6 of 50 free, 1 of 30 with 7 of its 19 heavy atoms pinned). RDKit prunes after embedding, in
conformer order: the same conformers are kept at 1 and 2 threads, pinned or free (checked)."""


def etkdg_parameters(seed: int, threads: int, *, random_coords: bool, pins: Pins | None = None,
                     prune_rms: float = DEFAULT_PRUNE_RMS) -> rdDistGeom.EmbedParameters:
    """ETKDGv3 with ``seed``, on ``threads`` RDKit threads (1 starts none); with ``pins``, the distances
    between the pinned atoms are the given coordinates' (RDKit's ``SetCoordMap``); with ``prune_rms``,
    conformers closer than that to an earlier one dropped (RDKit's ``pruneRmsThresh``). Chirality is always
    enforced: a pinned core never turns a stereocentre of the query."""
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = seed
    params.numThreads = threads
    params.useRandomCoords = random_coords
    params.enforceChirality = True
    params.pruneRmsThresh = prune_rms
    if pins:
        params.SetCoordMap({atom: Point3D(*xyz) for atom, xyz in pins.items()})
        params.maxIterations = PINNED_ATTEMPTS
    return params


def embed(with_hs: Chem.Mol, num_conformers: int, seed: int, threads: int, *, random_coords: bool,
          pins: Pins | None = None, prune_rms: float = DEFAULT_PRUNE_RMS) -> Chem.Mol:
    """A copy of ``with_hs`` holding the conformers ETKDG embeds (possibly fewer than asked, or none)."""
    attempt = Chem.Mol(with_hs)
    params = etkdg_parameters(seed, threads, random_coords=random_coords, pins=pins, prune_rms=prune_rms)
    native_call_starting()
    rdDistGeom.EmbedMultipleConfs(attempt, numConfs=num_conformers, params=params)
    return attempt


class Embed(Protocol):
    """How a caller runs :func:`embed`: on this thread, or on the threads it was granted, with the run's
    pruning (``prune_rms``, bound when the caller makes it). ``probe``: a call whose conformers are thrown
    away (:mod:`~templ_pipeline.core.pinning` tries pins on one conformer first); it embeds as any call, and
    progress does not count it."""

    def __call__(self, with_hs: Chem.Mol, num_conformers: int, seed: int, random_coords: bool,
                 pins: Pins | None = None, *, probe: bool = False) -> Chem.Mol: ...


def embed_on_this_thread(with_hs: Chem.Mol, num_conformers: int, seed: int, random_coords: bool,
                         pins: Pins | None = None, *, probe: bool = False,
                         prune_rms: float = DEFAULT_PRUNE_RMS) -> Chem.Mol:
    """:func:`embed` on this thread only (starts no RDKit thread); ``probe`` changes nothing here."""
    return embed(with_hs, num_conformers, seed, 1, random_coords=random_coords, pins=pins, prune_rms=prune_rms)


def embed_prepared(mol: Chem.Mol, num_conformers: int, seed: int, run: Embed = embed_on_this_thread) -> Chem.Mol:
    """The conformers of ``mol`` as ``generate_conformers`` makes them, embedded by ``run``; hydrogens removed.

    ETKDG first; where it embeds nothing (large or strained rings), random starts.
    The result may hold no conformer: the caller names that failure.
    """
    with_hs = Chem.AddHs(mol)
    embedded = run(with_hs, num_conformers, seed, False)
    if embedded.GetNumConformers() == 0:
        embedded = run(with_hs, num_conformers, seed, True)
    return Chem.RemoveHs(embedded) if embedded.GetNumConformers() else embedded
