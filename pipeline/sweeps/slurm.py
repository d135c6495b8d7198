"""The `slurm` launcher preset's launcher: Hydra's submitit SLURM launcher, except that a job
SLURM ends before it can report (scancel, the time limit, a node lost) is that job's failure.

Hydra's launcher collects the jobs' results in order and stops at the first that has none, so
one cancelled job ended the whole sweep with submitit's traceback and left the others unread.
Here that job's job.json says which SLURM job ended and how (`squeue`'s state), the sweep's
summary names it, and the other jobs count as they finished.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)

from pipeline.core.data import write_json
from pipeline.tracking import names


class SlurmJob:
    """A submitted job whose `results()` stand in for the job when SLURM ended it."""

    def __init__(self, job: Any, folder: Path, number: int, overrides: list[str]) -> None:
        self.job, self.folder, self.number, self.overrides = job, folder, number, overrides

    def results(self) -> list[JobReturn]:
        from submitit.core.utils import UncompletedJobError

        try:
            return self.job.results()
        except UncompletedJobError:
            self.job.wait()  # its state settles once SLURM is done with it
            state = self.job.state
        outcome_file = self.folder / names.JOB_FILE
        outcome = (
            json.loads(outcome_file.read_text())
            if outcome_file.is_file()
            else {"job": self.number, "overrides": " ".join(self.overrides)}
        )
        said = outcome.get("error", "it reported nothing")
        outcome |= {
            "status": "FAILED",
            "error": f"SLURM job {self.job.job_id} ended {state} ({said})",
        }
        write_json(outcome_file, outcome)
        ended = JobReturn(overrides=self.overrides, working_dir=str(self.folder))
        ended.status, ended.return_value = JobStatus.COMPLETED, None
        return [ended]


class SlurmLauncher(SubmititSlurmLauncher):
    """Hydra's SlurmLauncher whose jobs' results are read by `SlurmJob`."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        submit = submitit.AutoExecutor.map_array

        def map_array(executor: Any, fn: Any, *iterables: Any) -> list[SlurmJob]:
            return [
                SlurmJob(job, sweep_dir / str(initial_job_idx + i), initial_job_idx + i,
                         list(job_overrides[i]))
                for i, job in enumerate(submit(executor, fn, *iterables))
            ]  # fmt: skip

        # Hydra's launch builds its executor inside: its map_array is the one seam there is.
        submitit.AutoExecutor.map_array = map_array
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            submitit.AutoExecutor.map_array = submit
