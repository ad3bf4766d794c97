"""Readers for the kernel limits that can refuse a new thread or process.

``procfs`` and ``cgroup`` parse files (contents or a root path, so samples can be
tested without mocks), ``stack`` finds the thread stack size, ``collect`` turns them
into a :class:`~templ_pipeline.core.limits.model.Snapshot`, ``grant`` sizes worker
pools from a snapshot, ``probe`` starts one native thread and ``worker_cost`` models
what a worker costs in tasks. ``cpu`` reads the CPUs this process may use (its
affinity mask and its cgroup's CPU quota), which bound CPU-bound work rather than
what can start.
"""
