"""Before a sweep's first job: a job that no node of the cluster can hold fails the sweep at once.

A Ray task asking for more CPUs than any node has waits for ever (Ray's autoscaler repeats "No
available node types can fulfill resource request" every few seconds), and a SLURM job asking
for more than any node offers is refused by `sbatch` only job by job, or waits. Here the launcher's
request (its CPUs, memory and GPUs per job) is compared with the largest node's before anything
runs, and a request no node can meet is one line naming the resource, what the largest node has,
and the setting to change.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.core.config import ConfigError


def check_capacity(launcher: DictConfig) -> None:
    """Fail with a `ConfigError` when no node of the launcher's cluster can hold one job (Ray's
    `ray_cluster` and the `slurm` preset; other launchers run jobs on this machine). Ray is
    connected here, as the launcher would connect, and stays so for it."""
    target = str(launcher.get("_target_", ""))
    if target.endswith("RayLauncher"):
        init = OmegaConf.to_container(launcher.ray.init, resolve=True)
        remote = OmegaConf.to_container(launcher.ray.remote, resolve=True)
        asked = {"CPU": remote.get("num_cpus") or 1, "GPU": remote.get("num_gpus") or 0}
        fits(asked, ray_nodes(init), "Ray", RAY_SETTINGS)
    elif target.endswith("SlurmLauncher"):
        asked = {
            "CPU": launcher.cpus_per_task or 1,
            "memory_mb": (launcher.mem_gb or 0) * 1024,
            "GPU": launcher.gpus_per_node or 0,
        }
        nodes = slurm_nodes(launcher.partition)
        if nodes:
            fits(asked, nodes, "SLURM", SLURM_SETTINGS)


RAY_SETTINGS = {
    "CPU": "train.intra_op_threads (hydra.launcher.ray.remote.num_cpus follows it)",
    "GPU": "hydra.launcher.ray.remote.num_gpus",
}
SLURM_SETTINGS = {
    "CPU": "train.intra_op_threads (hydra.launcher.cpus_per_task follows it)",
    "memory_mb": "hydra.launcher.mem_gb",
    "GPU": "hydra.launcher.gpus_per_node",
}
UNITS = {"CPU": "CPU(s)", "GPU": "GPU(s)", "memory_mb": "MB of memory"}


def fits(
    asked: dict[str, float], nodes: list[dict[str, float]], engine: str, settings: dict[str, str]
) -> None:
    """Raise unless one of `nodes` (each its resources) has all that one job `asked` for."""
    if not nodes:
        raise ConfigError(f"the {engine} cluster has no node alive: start one and run again.")
    if any(all(node.get(k, 0) >= v for k, v in asked.items()) for node in nodes):
        return
    for key, need in asked.items():
        largest = max(node.get(key, 0) for node in nodes)
        if need > largest:
            have = _number(largest)
            hint = f" (e.g. {settings[key].split(' ')[0]}={have})" if key == "CPU" else ""
            raise ConfigError(
                f"a job asks {engine} for {_number(need)} {UNITS[key]}, but the largest of its "
                f"{len(nodes)} node(s) has {have}: no node can run it. Change {settings[key]}"
                f"{hint}, or add a larger node."
            )
    raise ConfigError(
        f"a job asks {engine} for {asked}, which no single node of the {len(nodes)} has at "
        f"once; lower {', '.join(settings[k] for k in asked)}."
    )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def ships_jobs(launcher: DictConfig) -> bool:
    """Whether `launcher` runs jobs on nodes that may not share the sweep's disk (Ray's)."""
    return str(launcher.get("_target_", "")).endswith("RayLauncher")


def ray_nodes(init: dict[str, Any]) -> list[dict[str, float]]:
    """The alive nodes' resources of the Ray cluster the launcher uses (`init`: its ray.init
    arguments). Ray stays connected: the launcher goes on with this connection."""
    import ray

    if not ray.is_initialized():
        ray.init(**{"logging_level": "ERROR", **init})
    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def slurm_nodes(partition: str | None) -> list[dict[str, float]]:
    """Each node's CPUs and memory as `sinfo` reports them (of `partition`, or all); [] when
    SLURM's tools are not here (the launcher then says what is missing)."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return []
    cmd = [sinfo, "--noheader", "--Node", "--format=%c %m %G"]
    if partition:
        cmd.append(f"--partition={partition}")
    listed = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if listed.returncode != 0:
        return []
    nodes = []
    for line in listed.stdout.splitlines():
        cpus, memory, gres = [*line.split(), "(null)"][:3]
        gpus = sum(int(n) for n in re.findall(r"gpu(?::[\w-]+)?:(\d+)", gres))
        nodes.append({"CPU": float(cpus), "memory_mb": float(memory.rstrip("+")), "GPU": gpus})
    return nodes
