"""Panel builders: every panel gets a unit, a description saying how to read it, and a legend per query."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import common as common_builders, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.dashboard import DashboardLink, ThresholdsConfig
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common, prometheus as prometheus_models
from grafana_foundation_sdk.models.dashboard import DataSourceRef, DataTransformerConfig, Threshold, ThresholdsMode

PROMETHEUS = DataSourceRef(type_val="prometheus", uid="${datasource}")

#: Legend columns: gauges show where they are now and their extreme, rates their mean and peak.
GAUGE_CALCS = ["lastNotNull", "min", "max"]
RATE_CALCS = ["mean", "max"]
#: Event bars: the events of the range (bars of consecutive intervals add up exactly) and the largest bar.
EVENT_CALCS = ["sum", "max"]


@dataclass(frozen=True)
class Query:
    """One PromQL query and the legend of the series it returns."""

    expr: str
    legend: str
    exemplar: bool = False


def thresholds(*steps: tuple[str, float | None]) -> ThresholdsConfig:
    """Absolute thresholds from ``(color, lower bound)`` steps; the first bound is None (-Inf)."""
    return ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
        [Threshold(value=value, color=color) for color, value in steps])


def _targets(queries: Sequence[Query], instant: bool, as_table: bool = False) -> list[Builder[Dataquery]]:
    targets: list[Builder[Dataquery]] = []
    for ref_id, query in zip("ABCDEFGH", queries, strict=False):
        target = (prometheus.Dataquery().expr(query.expr).legend_format(query.legend)
                  .ref_id(ref_id).datasource(PROMETHEUS))
        if query.exemplar:
            target = target.exemplar(True)
        if as_table:
            target = target.format(prometheus_models.PromQueryFormat.TABLE)
        targets.append(target.instant() if instant else target.range())
    return targets


def _legend(calcs: list[str]) -> common_builders.VizLegendOptions:
    return (common_builders.VizLegendOptions().show_legend(True).display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM).calcs(calcs))


def time_series(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    width: int = 12,
    height: int = 8,
    calcs: list[str] = RATE_CALCS,
    threshold_steps: Sequence[tuple[str, float | None]] = (),
    symlog: bool = False,
    min_value: float | None = None,
    max_value: float | None = None,
    step_lines: bool = False,
    data_links: Sequence[DashboardLink] = (),
    no_value: str = "",
) -> timeseries.Panel:
    """A time series panel over Prometheus queries; ``no_value`` is the text shown when no series returns."""
    panel = (
        timeseries.Panel().title(title).description(description).unit(unit).datasource(PROMETHEUS)
        .targets(_targets(queries, instant=False)).span(width).height(height).legend(_legend(calcs))
        .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                 .sort(common.SortOrder.DESCENDING))
        .fill_opacity(10).line_width(1)
    )
    if threshold_steps:
        panel = panel.thresholds(thresholds(*threshold_steps)).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED))
    if symlog:
        panel = panel.scale_distribution(common_builders.ScaleDistributionConfig()
                                         .type(common.ScaleDistribution.SYMLOG).log(10).linear_threshold(10))
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    if step_lines:
        panel = panel.line_interpolation(common.LineInterpolation.STEP_AFTER)
    if data_links:
        panel = panel.data_links(list(data_links))
    if no_value:
        panel = panel.no_value(no_value)
    return panel


def event_bars(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    no_value: str,
    width: int = 12,
    height: int = 8,
    data_links: Sequence[DashboardLink] = (),
) -> timeseries.Panel:
    """Bars of events per interval (see ``promql.events``), stacked per series, legend with the range's sum."""
    return (
        time_series(title, description, "short", queries, width=width, height=height, calcs=EVENT_CALCS,
                    data_links=data_links, no_value=no_value, min_value=0)
        .draw_style(common.GraphDrawStyle.BARS).bar_alignment(common.BarAlignment.CENTER).fill_opacity(80)
        .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL)).decimals(0)
    )


def stat_panel(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    threshold_steps: Sequence[tuple[str, float | None]],
    width: int = 6,
    height: int = 8,
    no_value: str = "",
) -> stat.Panel:
    """A stat panel over instant queries: one value per series, named by its legend (``no_value`` when none)."""
    panel = (
        stat.Panel().title(title).description(description).unit(unit).datasource(PROMETHEUS)
        .targets(_targets(queries, instant=True)).span(width).height(height)
        .thresholds(thresholds(*threshold_steps)).color_mode(common.BigValueColorMode.BACKGROUND)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME).graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    return panel.no_value(no_value) if no_value else panel


def table_panel(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    no_value: str,
    hidden_columns: Sequence[str] = ("Time", "__name__"),
    width: int = 12,
    height: int = 8,
) -> table.Panel:
    """A table of instant queries, one row per series and one column per query, merged on their labels.

    ``merge`` joins the queries' rows on equal label values; ``organize`` hides the columns
    that say nothing to an operator (the evaluation time, the metric name).
    """
    return (
        table.Panel().title(title).description(description).unit(unit).datasource(PROMETHEUS)
        .targets(_targets(queries, instant=True, as_table=True)).span(width).height(height).no_value(no_value)
        .align(common.FieldTextAlignment.AUTO).inspect(False)  # what Grafana assumes: the JSON reads back the same
        .with_transformation(DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(DataTransformerConfig(
            id_val="organize", options={"excludeByName": dict.fromkeys(hidden_columns, True)}))
    )
