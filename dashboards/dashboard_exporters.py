"""Metrics of the exporters that run beside TEMPL (not TEMPL's catalog), and the scrape jobs they live under.

node_exporter serves the host-wide thread and process counts with ``--collector.processes``
(off by default); cAdvisor (or the kubelet's ``/metrics/cadvisor``) serves a container's
threads and its pids limit. The Pushgateway adds the time of each group's last push. The
dashboard selects node_exporter and cAdvisor by a job variable, since every site names its
scrape jobs its own way.
"""

from __future__ import annotations

NODE_JOB = "node"
"""Default of the dashboard's node job variable (the job name in the node_exporter docs)."""
CADVISOR_JOB = "cadvisor"
"""Default of the dashboard's cAdvisor job variable."""

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
