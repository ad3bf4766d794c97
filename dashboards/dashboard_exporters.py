"""Metrics of the exporters that run beside TEMPL (not TEMPL's catalog), and the scrape jobs they live under.

node_exporter serves the host-wide thread and process counts with ``--collector.processes``
(off by default); cAdvisor (or the kubelet's ``/metrics/cadvisor``) serves a container's
threads and its pids limit. The Pushgateway adds the time of each group's last push. The alert
rules and the dashboard take these names from here, and nowhere else. The
dashboard selects node_exporter and cAdvisor by a job variable, since every site names its
scrape jobs its own way.
"""

from __future__ import annotations

NODE_JOB = "node"
"""The scrape job of node_exporter (prometheus.yml; the job name in the node_exporter docs): the node-level
exhaustion alerts select it and the dashboard's node job variable defaults to it."""
CADVISOR_JOB = "cadvisor"
"""The scrape job of cAdvisor (prometheus.yml, or the kubelet's /metrics/cadvisor): the container alert selects it
and the dashboard's cAdvisor job variable defaults to it."""
UP = "up"
"""Prometheus's own series per target (1 when its last scrape succeeded); the stall alert reads it."""

NODE_FLAG = "--collector.processes"
"""The node_exporter flag without which the node_processes_* metrics are not served."""

#: name -> labels, as exposed (the scrape adds job and instance)
NODE_METRICS: dict[str, tuple[str, ...]] = {
    "node_processes_threads": (),  # threads of every process on the host
    "node_processes_max_threads": (),  # kernel.threads-max
    "node_processes_pids": (),  # processes on the host
    "node_processes_max_processes": (),  # kernel.pid_max
}
CADVISOR_METRICS: dict[str, tuple[str, ...]] = {
    "container_threads": ("id", "name"),  # threads in the container's cgroup
    "container_threads_max": ("id", "name"),  # its pids.max; 0 when unlimited
}
PUSHGATEWAY_METRICS: dict[str, tuple[str, ...]] = {
    "push_time_seconds": ("job_id",),  # per group: Unix time of its last successful push
    "push_failure_time_seconds": ("job_id",),  # ... and of its last failed one
}
METRICS: dict[str, tuple[str, ...]] = {**NODE_METRICS, **CADVISOR_METRICS, **PUSHGATEWAY_METRICS}
#: Every series the alert rules read that TEMPL does not export: the exporters' and Prometheus's ``up``.
RULE_METRICS: dict[str, tuple[str, ...]] = {**METRICS, UP: ()}
