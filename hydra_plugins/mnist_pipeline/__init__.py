"""Hydra takes launchers only from classes defined in the `hydra_plugins` namespace: the `slurm`
preset's launcher (conf/hydra/launcher/slurm.yaml) is defined here; its code is
pipeline/sweeps/slurm.py."""

from pipeline.sweeps import slurm


class SlurmLauncher(slurm.SlurmLauncher):
    """Hydra's submitit SlurmLauncher; a job SLURM ends fails alone (pipeline/sweeps/slurm.py)."""
