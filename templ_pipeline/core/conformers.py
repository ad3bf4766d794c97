"""Conformer generation for a query ligand given as SMILES (ETKDGv3), on the threads the limits allow.

RDKit embeds on ``numThreads`` native threads. They count against the same kernel
limits as any pool, so the thread manager grants them (task type ``conformers``),
and when RDKit still cannot start its threads (it raises ``RuntimeError('Resource
temporarily unavailable')``) the embedding is retried with fewer, down to one,
which starts none. Each step is a reduction or fallback event like the pool's.
Retrying changes nothing in the result: ETKDG with a fixed seed gives the same
conformers whatever ``numThreads`` is (checked: 50 conformers at 1 and 2 threads,
bit-identical coordinates), and every attempt starts from a fresh copy of the molecule.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rdkit import Chem, rdBase

from templ_pipeline.core.canonical import canonical_molecule
from templ_pipeline.core.embedding import DEFAULT_PRUNE_RMS, Embed, Pins, embed
from templ_pipeline.core.events import (
    ConformersEmbedded,
    ConformersFinished,
    ConformersStarted,
    EmbeddingInline,
    Emitter,
    ExecutorEvent,
    ExecutorKind,
    Fallback,
    FallbackReason,
    Observer,
    TaskType,
    cause_of,
    no_room_reason,
    process_observers,
    reported,
)
from templ_pipeline.core.grants import classify_failure, grant_for_work, pids_refusals, release_grant
from templ_pipeline.core.limits.classify import is_start_refusal
from templ_pipeline.core.native_call import call_interruptibly

DEFAULT_SEED = 42
TASK_TYPE = TaskType.CONFORMERS


def molecule_from_smiles(smiles: str) -> Chem.Mol:
    """Parse SMILES; a ``ValueError`` names the input when RDKit cannot read it."""
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles) if smiles and smiles.strip() else None
    if mol is None:
        raise ValueError(f"cannot parse SMILES {smiles!r}")
    return mol


def generate_conformers(
    query: str | Chem.Mol,
    num_conformers: int = 200,
    *,
    seed: int = DEFAULT_SEED,
    n_workers: int = 1,
    observers: tuple[Observer, ...] = (),
    exact_workers: bool = False,
    prune_rms: float = DEFAULT_PRUNE_RMS,
) -> Chem.Mol:
    """Embed ``num_conformers`` conformers with ETKDGv3 and a fixed seed (fewer with ``prune_rms``, which drops
    each conformer within that heavy-atom RMSD of an earlier one).

    The query is put in canonical atom order first (:func:`~templ_pipeline.core.canonical.canonical_molecule`),
    so every spelling of a molecule gives the same conformers, in that order.
    Hydrogens are added for embedding and removed afterwards. ``n_workers`` is the
    number of RDKit threads asked for; the thread manager may grant fewer, and a
    refused thread start is retried with fewer, and no more threads start than the
    CPUs this process may use unless ``exact_workers``. The conformers are the same either way.
    Its start and end, reductions and fallbacks go to the process's observers and to ``observers``.
    """
    if num_conformers < 1:
        raise ValueError(f"num_conformers must be at least 1, got {num_conformers}")
    mol = canonical_molecule(molecule_from_smiles(query) if isinstance(query, str) else query)
    with_hs = Chem.AddHs(mol)
    emit = Emitter((*process_observers(), *observers))
    started, generated, threads_used = time.perf_counter(), 0, n_workers
    with reported(emit, ConformersStarted(num_conformers, n_workers),
                  lambda error: ConformersFinished(num_conformers, n_workers, generated, threads_used,
                                                   time.perf_counter() - started, error)):
        threads = EmbeddingThreads(n_workers, emit, exact_workers=exact_workers)
        try:
            embedded = embed_conformers(with_hs, num_conformers, seed, threads, random_coords=False,
                                        prune_rms=prune_rms)
            if embedded.GetNumConformers() == 0:
                # large or strained rings: random starts embed where ETKDG alone fails
                embedded = embed_conformers(with_hs, num_conformers, seed, threads, random_coords=True,
                                            prune_rms=prune_rms)
        finally:
            threads.release()
        generated, threads_used = embedded.GetNumConformers(), threads.count
        if generated == 0:
            raise ValueError(f"could not embed any conformer for {Chem.MolToSmiles(mol)!r}")
    return Chem.RemoveHs(embedded)


@contextmanager
def granted_embedding(n_workers: int = 1, *, observers: tuple[Observer, ...] = (), exact_workers: bool = False,
                      prune_rms: float = DEFAULT_PRUNE_RMS) -> Iterator[tuple[Embed, EmbeddingThreads]]:
    """An :class:`~templ_pipeline.core.embedding.Embed` on the RDKit threads granted for ``n_workers`` (fewer
    after a refused start, as :func:`generate_conformers`), pruning at ``prune_rms``, and the threads; the grant
    is released on exit."""
    threads = EmbeddingThreads(n_workers, Emitter((*process_observers(), *observers)), exact_workers=exact_workers)

    def run(with_hs: Chem.Mol, num_conformers: int, seed: int, random_coords: bool,
            pins: Pins | None = None, *, probe: bool = False) -> Chem.Mol:
        return embed_conformers(with_hs, num_conformers, seed, threads, random_coords=random_coords, pins=pins,
                                prune_rms=prune_rms)

    try:
        yield _reporting(run, Emitter(observers)), threads
    finally:
        threads.release()


def _reporting(run: Embed, emit: Observer) -> Embed:
    """``run``, each call but a probe reported to ``emit`` as a :class:`ConformersEmbedded` (RDKit reports
    nothing while it embeds: a display learns of progress only when a call returns)."""

    def reported(with_hs: Chem.Mol, num_conformers: int, seed: int, random_coords: bool,
                 pins: Pins | None = None, *, probe: bool = False) -> Chem.Mol:
        started = time.perf_counter()
        embedded = run(with_hs, num_conformers, seed, random_coords, pins, probe=probe)
        if not probe:  # its conformer is thrown away: the call after it embeds it again
            emit(ConformersEmbedded(num_conformers, embedded.GetNumConformers(), time.perf_counter() - started))
        return embedded

    return reported


class EmbeddingThreads:
    """How many RDKit threads the next embedding uses: the grant, then fewer after each refusal.

    The grant and every step down are events for ``emit`` (reductions and fallbacks, as the pool's).
    """

    def __init__(self, requested: int, emit: Observer, *, exact_workers: bool = False) -> None:
        self.requested = max(1, requested)
        self._emit = emit
        work = grant_for_work(self.requested, TASK_TYPE, "thread", exact_workers=exact_workers)
        for event in work.events:
            emit(event)
        grant = self._grant = work.grant
        self.count = max(1, grant.granted)
        if grant.requested > 1 and self.count == 1:
            emit(Fallback(ExecutorKind.THREAD, ExecutorKind.SEQUENTIAL, no_room_reason(grant.reason),
                          cause_of(grant.reason), grant.detail))

    def emit(self, event: ExecutorEvent) -> None:
        """Report ``event`` where this embedding's reductions and fallbacks go."""
        self._emit(event)

    def release(self) -> None:
        """Give back the grant's shared-ledger reservation: RDKit's threads are gone again."""
        release_grant(self._grant)

    def step_down(self, error: BaseException, refusals_before: int | None) -> None:
        """RDKit could not start ``count`` threads: halve them (one starts none), with a fallback event."""
        fewer = self.count // 2 if self.count >= 4 else 1
        cause = classify_failure(error, refusals_before)
        detail = f"RDKit could not start {self.count} embedding threads ({error}); retrying with {fewer}"
        to_kind = ExecutorKind.THREAD if fewer > 1 else ExecutorKind.SEQUENTIAL
        self._emit(Fallback(ExecutorKind.THREAD, to_kind, FallbackReason.THREAD_START_FAILED, cause, detail, error))
        self.count = fewer


def embed_conformers(with_hs: Chem.Mol, num_conformers: int, seed: int, threads: EmbeddingThreads,
                     *, random_coords: bool, pins: Pins | None = None,
                     prune_rms: float = DEFAULT_PRUNE_RMS) -> Chem.Mol:
    """A copy of ``with_hs`` holding the conformers ETKDG embeds, on as many threads as can start."""
    while True:
        count = threads.count
        before = pids_refusals() if count > 1 else None
        try:
            return call_interruptibly(lambda count=count: embed(with_hs, num_conformers, seed, count,  # type: ignore[misc]
                                                                random_coords=random_coords, pins=pins,
                                                                prune_rms=prune_rms),
                                      name="templ-embed",
                                      on_inline=lambda error: threads.emit(EmbeddingInline(str(error))))
        except (RuntimeError, OSError) as error:
            if threads.count == 1 or not is_start_refusal(error):
                raise
            threads.step_down(error, before)

