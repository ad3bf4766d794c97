"""Query preparation's telemetry: one ``query.prepared`` log line and a count per thing done.

``templ select-best --query`` and the campaign runner emit ``QueryPrepared``
(``templ_pipeline.core.events``) once per query; :func:`telemetry.observer.observe`
hands it here. It is declared once in the catalog (``EVENT_QUERY_PREPARED``): the
counter ``templ_query_preparations_total{action}`` counts each action once, and the
log line (debug, warning when preparation warns) carries the SMILES and the query id,
which no label ever does. It is not a span event: a campaign's queries overlap, and a
million span events on the campaign span would be its whole trace.
"""

from __future__ import annotations

from collections.abc import Sequence

from templ_pipeline.core.events import TemplatesChosen
from templ_pipeline.telemetry import catalog as c
from templ_pipeline.telemetry.events import _announce

__all__ = ["record_query_prepared", "record_templates_chosen"]

_SPEC = c.EVENT_SPECS_BY_NAME[c.EVENT_QUERY_PREPARED]
_CHOSEN = c.EVENT_SPECS_BY_NAME[c.EVENT_TEMPLATES_CHOSEN]


def record_query_prepared(
    query_id: str, input_smiles: str, smiles: Sequence[str], stereoisomers_possible: int, removed: str,
    actions: Sequence[str], conformers_requested: int, conformers: int, warning: str = "",
) -> None:
    """``templ_query_preparations_total{action}`` once per action (``unchanged`` when none) and the log line."""
    _announce(_SPEC, {
        "query_id": query_id, "input_smiles": input_smiles, "smiles": " ".join(smiles), "isomers": len(smiles),
        "stereoisomers_possible": stereoisomers_possible, "removed": removed,
        "actions": tuple(actions) or (c.PreparationAction.UNCHANGED.value,),
        "conformers_requested": conformers_requested, "conformers": conformers, "warning": warning,
        "warned": "true" if warning else "false"})


def record_templates_chosen(event: TemplatesChosen) -> None:
    """``templ_poses_total{method, fallback}`` once, the selection time in its histogram, and the log line."""
    _announce(_CHOSEN, {
        "query_id": event.query_id, "library": event.library, "chosen": event.chosen, "template": event.template,
        "similarity": None if event.similarity is None else round(event.similarity, 4),
        "core_atoms": event.core_atoms, "core_smarts": event.core_smarts, "method": str(event.method),
        "fallback": str(event.fallback), "pinned_atoms": event.pinned_atoms, "mcs_timeouts": event.mcs_timeouts,
        "seconds": event.seconds})
