"""A Prometheus annotation query: the SDK's model plus the fields its pinned build lacks.

Grafana's Prometheus annotations read ``step``, ``titleFormat``, ``textFormat`` and
``tagKeys`` next to ``expr``; the SDK's ``AnnotationQuery`` (Grafana 11.6 build) models
only ``expr``. :data:`EXTRA_KEYS` lists what this subclass adds to the JSON, so a test
can check that everything else reads back through the SDK's own model unchanged.
"""

from __future__ import annotations

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import dashboard

from templ_pipeline.dashboards.panels import PROMETHEUS

EXTRA_KEYS: tuple[str, ...] = ("step", "titleFormat", "textFormat", "tagKeys")


class PrometheusAnnotationQuery(dashboard.AnnotationQuery):
    """``AnnotationQuery`` with the Prometheus-specific formatting fields."""

    def __init__(self, *, step: str, title_format: str, text_format: str, tag_keys: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.step = step
        self.title_format = title_format
        self.text_format = text_format
        self.tag_keys = tag_keys

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload.update(step=self.step, titleFormat=self.title_format, textFormat=self.text_format,
                       tagKeys=self.tag_keys)
        return payload


class PrometheusAnnotation(cogbuilder.Builder[dashboard.AnnotationQuery]):
    """Builder: an event marker on every graph wherever ``expr`` returns a sample > 0."""

    def __init__(self, name: str, expr: str, *, title: str, text: str, tags: str, color: str,
                 step: str = "15s") -> None:
        self._internal = PrometheusAnnotationQuery(
            name=name, datasource=PROMETHEUS, enable=True, hide=False, icon_color=color, expr=expr,
            step=step, title_format=title, text_format=text, tag_keys=tags,
        )

    def build(self) -> dashboard.AnnotationQuery:
        return self._internal
