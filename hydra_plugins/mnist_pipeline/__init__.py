"""Hydra takes launchers only from classes defined in the `hydra_plugins` namespace: the
`ray_cluster` and `slurm` presets' launchers (conf/hydra/launcher/) are defined here; their code
is pipeline/sweeps/shipping.py and pipeline/sweeps/slurm.py."""

from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher as HydraRayLauncher

from pipeline.sweeps import shipping, slurm


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
