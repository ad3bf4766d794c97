"""Grafana dashboards as code (grafana-foundation-sdk), Prometheus alert rules and a local stack.

``python -m dashboards.generate`` writes the dashboard JSON under ``dashboards/grafana/dashboards``;
every metric a query names comes from :mod:`telemetry.catalog` (the tests check it).
"""
