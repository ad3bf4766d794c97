"""The conformers of one prepared query for each template chosen for it: one definition for every command.

``templ select-best`` and each query of ``templ screen`` (in its worker) make their
conformers here, so the same query, library, options and seed give the same
conformers in both, whatever ran them.

With templates chosen (``ChoiceOptions.top``) and pinning on (``ChoiceOptions.pin``), the
query's ``num_conformers`` are spread over them, the better-ranked first getting the
remainder (200 over 5 templates: 40 each), and each template's share is embedded with
its core pinned (:func:`~templ_pipeline.core.pinning.pinned_conformers`). Without a
choice (``top=None``) or without pinning, the query is embedded once, freely, and those
conformers serve every template.

Worker processes import this module: RDKit and numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice

from rdkit import Chem

from templ_pipeline.core.embedding import Embed, embed_on_this_thread
from templ_pipeline.core.labels import PinFallback, PoseMethod
from templ_pipeline.core.pickled_by_fields import pickled_by_fields
from templ_pipeline.core.pinning import PinnedConformers, pinned_conformers
from templ_pipeline.core.template_choice import ChoiceOptions, TemplateChoice, TemplateMatch
from templ_pipeline.core.template_library import TemplateLibrary

RUNNERS_UP = 10
"""Runner-up templates a row, pose or summary line names at most, best first: every other chosen template up to
``--top-templates 11`` (the default, 5, names 4), and a bounded line with ``--top-templates all``, where naming
the other 759 templates of a 760-template library took 16 kB in every row and pose."""


def score_text(score: float | None) -> str:
    """A template's best score as rows, poses and summaries write it (None: none of its conformers scored)."""
    return "none scored" if score is None else f"{score:.4f}"


def runner_up_text(others: Iterable[tuple[str, float | None]], count: int, separator: str = "; ") -> str:
    """``name score; ...`` of the first :data:`RUNNERS_UP` of ``others`` (best first, ``count`` of them in all),
    then ``and N more`` when there are more."""
    shown = [f"{name} {score_text(score)}" for name, score in islice(others, RUNNERS_UP)]
    if count > len(shown):
        shown.append(f"and {count - len(shown)} more")
    return separator.join(shown)


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class TemplateChoiceRecord:
    """Why a template was scored for a query and how the query's conformers were made for it: the template's
    2D similarity (None without a choice), the shared core, the pose method and why the core was not pinned
    whole, and the runner-up templates' best scores ("name score; ..." by the campaign's metric)."""

    similarity: float | None
    core_atoms: int
    core_smarts: str
    method: PoseMethod
    fallback: PinFallback
    pinned_atoms: int
    conformers: int
    detail: str = ""
    runner_up: str = ""

    def properties(self, record: int) -> dict[str, str | int | float]:
        """As a pose's SD properties and a row's fields (the same names)."""
        return {"template_record": record,
                "template_similarity": "" if self.similarity is None else round(self.similarity, 4),
                "core_atoms": self.core_atoms, "core_smarts": self.core_smarts, "pose_method": str(self.method),
                "pin_fallback": str(self.fallback), "pinned_atoms": self.pinned_atoms, "runner_up": self.runner_up}


@dataclass(frozen=True, slots=True)
class TemplatePoses:
    """The conformers made for one template of the library (``index``, 0-based) and the match that made them
    (None without a choice)."""

    index: int
    match: TemplateMatch | None
    conformers: PinnedConformers

    def record(self, conformers: int, runner_up: str = "") -> TemplateChoiceRecord:
        """What is recorded of this template's choice and poses (``conformers`` scored or failed)."""
        made, match = self.conformers, self.match
        selected = match is not None and made.fallback != PinFallback.NOT_SELECTED
        return TemplateChoiceRecord(
            similarity=match.similarity if selected and match is not None else None,
            core_atoms=match.core_atoms if match is not None else 0,
            core_smarts=match.smarts if match is not None else "",
            method=made.method, fallback=made.fallback, pinned_atoms=made.pinned_atoms, conformers=conformers,
            detail=made.detail, runner_up=runner_up)


def conformer_shares(num_conformers: int, templates: int) -> list[int]:
    """``num_conformers`` spread over ``templates``: equal shares, the first ones one more for the remainder,
    at least one each."""
    if templates < 1:
        return []
    base, extra = divmod(num_conformers, templates)
    return [max(1, base + (1 if position < extra else 0)) for position in range(templates)]


def template_conformers(mol: Chem.Mol, library: TemplateLibrary, choice: TemplateChoice, num_conformers: int,
                        seed: int, run: Embed = embed_on_this_thread, options: ChoiceOptions = ChoiceOptions()
                        ) -> list[TemplatePoses]:
    """The conformers of ``mol`` for each template of ``choice``, in its order. Without a choice
    (``options.top=None``) or without pinning (``options.pin=False``): one free embedding of ``num_conformers``
    shared by every template."""
    if not (options.selects and options.pin):
        reason = PinFallback.NOT_SELECTED if not options.selects else PinFallback.PIN_OFF
        shared = pinned_conformers(mol, library.mols[0], None, num_conformers, seed, run, reason=reason)
        return [TemplatePoses(match.index, match, shared) for match in choice.chosen]
    shares = conformer_shares(num_conformers, len(choice.chosen))
    return [TemplatePoses(match.index, match,
                          pinned_conformers(mol, library.mols[match.index], match, share, seed, run))
            for match, share in zip(choice.chosen, shares, strict=True)]


def given_conformers(confs: Chem.Mol, choice: TemplateChoice) -> list[TemplatePoses]:
    """The conformers given (``--conformers``, ``--use-input-conformers``) for each template of ``choice``."""
    as_given = PinnedConformers(confs, PoseMethod.INPUT, PinFallback.NONE)
    return [TemplatePoses(match.index, match, as_given) for match in choice.chosen]


def distinct_conformers(posed: Sequence[TemplatePoses]) -> int:
    """Conformers made for the query (a free embedding shared by every template counts once)."""
    return sum({id(poses.conformers): poses.conformers.confs.GetNumConformers() for poses in posed}.values())
