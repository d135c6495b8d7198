"""The `slurm` launcher preset's launcher: Hydra's submitit SLURM launcher, except that a job
SLURM ends before it can report (scancel, the time limit, a node lost) is that job's failure.

Hydra's launcher collects the jobs' results in order and stops at the first that has none, so
one cancelled job ended the whole sweep with submitit's traceback and left the others unread.
Here that job's job.json says which SLURM job ended and how (`squeue`'s state), the sweep's
summary names it, and the other jobs count as they finished.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)

from pipeline.core import names
from pipeline.core.data import write_json

# SLURM's job states in which a job may still write its result.
ACTIVE = {
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING",
    "SIGNALING", "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED",
}  # fmt: skip


class SlurmJob:
    """A submitted job whose `results()` stand in for the job when SLURM ended it."""

    def __init__(self, job: Any, folder: Path, number: int, overrides: list[str]) -> None:
        self.job, self.folder, self.number, self.overrides = job, folder, number, overrides

    def results(self) -> list[JobReturn]:
        state = self.wait()
        if self.job.paths.result_pickle.exists():
            return self.job.results()
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

    def wait(self, every: float = 2.0) -> str:
        """Until SLURM is done with the job; returns its final state as `scontrol` gives it.

        submitit reads a job's state from `sacct`, which a cluster without accounting (like the
        stack's) does not answer: it would wait forever for a job that ended without a result.
        `scontrol` answers from the controller, which keeps a job for MinJobAge (300 s) after
        it ends.
        """
        while True:
            shown = subprocess.run(
                ["scontrol", "show", "job", "--oneliner", self.job.job_id],
                capture_output=True,
                text=True,
            )
            fields = dict(re.findall(r"(\w+)=(\S*)", shown.stdout))
            state = fields.get("JobState", "")
            if shown.returncode != 0 or state not in ACTIVE:
                reason = fields.get("Reason", "None")
                return f"{state or 'gone'}" + ("" if reason == "None" else f", {reason}")
            time.sleep(every)


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
