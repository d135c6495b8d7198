"""Hydra takes launchers and sweepers only from classes defined in the `hydra_plugins`
namespace: the `ray_cluster` and `slurm` presets' launchers (conf/hydra/launcher/) and the
`sharing` sweeper (conf/hydra/sweeper/) are defined here; their code is
pipeline/sweeps/shipping.py, pipeline/sweeps/slurm.py and pipeline/sweeps/plan.py."""

import sys

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher as HydraRayLauncher

from pipeline.sweeps import plan, shipping, slurm


class EpochSharingSweeper(BasicSweeper):
    """Hydra's basic sweeper; a sweep over train.epochs trains each configuration once
    (pipeline/sweeps/plan.py), whatever the launcher."""

    def split_arguments(self, overrides, max_batch_size):  # noqa: ANN001, ANN201
        (jobs,) = BasicSweeper.split_arguments(overrides, None)
        share = bool(self.config.sweep.share_epochs) if self.config is not None else True
        jobs, said = plan.share_epochs(jobs, share)
        if said:
            print(said, file=sys.stderr, flush=True)
        return list(BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size))


class SlurmLauncher(slurm.SlurmLauncher):
    """Hydra's submitit SlurmLauncher; a job SLURM ends fails alone (pipeline/sweeps/slurm.py)."""


class RayLauncher(HydraRayLauncher):
    """Hydra's Ray launcher, whose jobs may run where the sweep's folder is not: each task
    carries the sweep's parent run and data, and brings the job's outcome back
    (pipeline/sweeps/shipping.py)."""

    def launch(self, job_overrides, initial_job_idx):  # noqa: ANN001, ANN201
        task = self.task_function
        self.task_function = shipping.carrying(task, self.config.hydra.sweep.dir)
        try:
            returns = super().launch(job_overrides, initial_job_idx)
        finally:
            self.task_function = task
        return [shipping.received(ret) for ret in returns]
