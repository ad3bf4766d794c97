"""``templ select-best`` as a batch scheduler starts it: the job's environment and its command line."""

from __future__ import annotations

from pathlib import Path

from templ_runs import TEMPL_SCRIPT, templ_env

QUERY = "O=C(Nc1cccnc1)c1ccc(F)cc1OC"
#: The variables ``telemetry.export.scheduler_job_id`` reads a job id from.
SCHEDULER_VARIABLES = ("TEMPL_JOB_ID", "SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID")


def job_env(**extra: str) -> dict[str, str]:
    """The environment of a job: no scheduler variables but the ones given."""
    return templ_env(SCHEDULER_VARIABLES, **extra)


def select_best_argv(template_sdf: Path, out: Path, *extra: object, query: str = QUERY, num_conformers: int = 4,
                     conformers: Path | None = None, metrics_server: bool = True) -> list[str]:
    """A select-best run of ``query``; of ``conformers`` instead (``unscorable_conformers``: exit 1) when given."""
    source = ["-c", str(conformers)] if conformers is not None else ["-q", query, "-n", str(num_conformers)]
    server = [] if metrics_server else ["--no-metrics-server"]
    return [str(TEMPL_SCRIPT), "select-best", "-t", str(template_sdf), *source, "-w", "1", "-o", str(out), *server,
            "--log-format", "json", *map(str, extra)]
