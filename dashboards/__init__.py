"""Grafana dashboards and Prometheus alert rules as code (grafana-foundation-sdk), and a local stack.

``python -m templ_pipeline.dashboards.generate`` writes the dashboard JSON under ``dashboards/grafana/dashboards``
and the rules in ``dashboards/prometheus/alerts.yml``; every metric a query names comes from
:mod:`telemetry.catalog`, every threshold from :mod:`dashboards.thresholds`.
"""
