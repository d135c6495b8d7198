"""Hydra takes launchers only from classes defined in the `hydra_plugins` namespace: the
`ray_cluster` and `slurm` presets' launchers (conf/hydra/launcher/) are defined here; their code
is pipeline/sweeps/shipping.py and pipeline/sweeps/slurm.py."""

from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher as HydraRayLauncher

from pipeline.sweeps import shipping, slurm


class SlurmLauncher(slurm.SlurmLauncher):
    """Hydra's submitit SlurmLauncher; a job SLURM ends fails alone (pipeline/sweeps/slurm.py)."""


class RayLauncher(HydraRayLauncher):
    """Hydra's Ray launcher, whose jobs may run where the sweep's folder is not: each job's
    outcome comes back with its task (pipeline/sweeps/shipping.py)."""

    def setup(self, *, hydra_context, task_function, config) -> None:  # noqa: ANN001
        super().setup(
            hydra_context=hydra_context,
            task_function=shipping.returning_outcome(task_function),
            config=config,
        )

    def launch(self, job_overrides, initial_job_idx):  # noqa: ANN001, ANN201
        return [shipping.received(ret) for ret in super().launch(job_overrides, initial_job_idx)]
