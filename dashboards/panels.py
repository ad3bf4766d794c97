"""Panel builders: every panel gets a unit, a description saying how to read it, and a legend per query."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.builders.dashboard import DashboardLink, ThresholdsConfig
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import DataSourceRef, Threshold, ThresholdsMode

PROMETHEUS = DataSourceRef(type_val="prometheus", uid="${datasource}")

#: Legend columns: gauges show where they are now and their extreme, rates their mean and peak.
GAUGE_CALCS = ["lastNotNull", "min", "max"]
RATE_CALCS = ["mean", "max"]


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


def _targets(queries: Sequence[Query], instant: bool) -> list[prometheus.Dataquery]:
    targets = []
    for ref_id, query in zip("ABCDEFGH", queries, strict=False):
        target = (prometheus.Dataquery().expr(query.expr).legend_format(query.legend)
                  .ref_id(ref_id).datasource(PROMETHEUS))
        if query.exemplar:
            target = target.exemplar(True)
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
) -> timeseries.Panel:
    """A time series panel over Prometheus queries."""
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
    return panel


def stat_panel(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    threshold_steps: Sequence[tuple[str, float | None]],
    width: int = 6,
    height: int = 8,
) -> stat.Panel:
    """A stat panel over instant queries: one value per series, named by its legend."""
    return (
        stat.Panel().title(title).description(description).unit(unit).datasource(PROMETHEUS)
        .targets(_targets(queries, instant=True)).span(width).height(height)
        .thresholds(thresholds(*threshold_steps)).color_mode(common.BigValueColorMode.BACKGROUND)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME).graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
