"""Telemetry as an observer of the executor's and the campaign runner's events: each event becomes its
metrics, span event and log line.

The executor and the runner emit typed events (``templ_pipeline.core.events``) and know
nothing about reporting; ``observe`` is the one place that maps them onto telemetry. The
events that come once per batch or per query are tested for first. Limits are not taken from
the events (``LimitsObserved``): the metrics read them at each scrape.
"""

from __future__ import annotations

from templ_pipeline.core import events as ev
from templ_pipeline.telemetry import campaign
from templ_pipeline.telemetry import events as record
from templ_pipeline.telemetry import preparation


def observe(event: ev.ExecutorEvent) -> None:
    """Record ``event`` (pass this function as an executor or campaign observer)."""
    if isinstance(event, ev.BatchDone):
        result = event.result
        record.record_batch(result.index, event.size, event.kind, len(result.scored), len(result.failed),
                            result.duration_seconds, pid=result.pid, span=result.span)
    elif isinstance(event, ev.QueryFinished):
        campaign.record_query_finished(event.query_id, event.kind, event.status, event.reason, event.seconds,
                                       event.conformers_requested, event.conformers, event.scored, event.failed,
                                       event.in_flight, event.detail)
    elif isinstance(event, ev.QueryPrepared):
        preparation.record_query_prepared(event.query_id, event.input_smiles, event.smiles,
                                          event.stereoisomers_possible, event.removed, event.actions,
                                          event.conformers_requested, event.conformers, event.warning)
    elif isinstance(event, ev.TemplatesChosen):
        preparation.record_templates_chosen(event)
    elif isinstance(event, ev.QueryStarted):
        campaign.record_query_started(event.index, event.in_flight)
    elif isinstance(event, ev.WorkersGranted):
        record.record_workers(event.task_type, event.requested, event.granted)
    elif isinstance(event, ev.WorkersReduced):
        record.record_worker_reduction(event.task_type, event.requested, event.granted, event.reason,
                                       event.detail, headroom=event.headroom)
    elif isinstance(event, ev.ExecutorCreated):
        record.record_executor_created(event.kind, event.workers, event.task_type, reused=event.reused)
    elif isinstance(event, ev.Fallback):
        record.record_fallback(event.from_kind, event.to_kind, event.reason, event.cause, event.detail,
                               error=event.error)
    elif isinstance(event, ev.PoolRestarted):
        record.record_pool_restart(event.kind, event.reason, event.detail, error=event.error)
    elif isinstance(event, ev.BatchResubmitted):
        record.record_batch_resubmission(event.kind, event.index, event.reason, event.worker)
    elif isinstance(event, ev.WorkerReplaced):
        campaign.record_worker_replaced(event.kind, event.reason, event.detail)
    elif isinstance(event, ev.QueryResubmitted):
        campaign.record_query_resubmitted(event.kind, event.index, event.reason, event.worker)
    elif isinstance(event, ev.CampaignStarted):
        campaign.record_campaign_started(event.total, event.skipped, event.templates)
    elif isinstance(event, ev.CampaignDone):
        campaign.record_campaign_done(event.done, event.ok, event.failed, event.seconds, event.interrupted)
