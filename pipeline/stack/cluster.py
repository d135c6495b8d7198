"""The stack's compute: Ray nodes on 127.0.0.1 (`up --ray-nodes N`).

Each node is a `ray start --block` of its own, with one CPU and its own ports, in a process group
of its own: `down` stops it, and killing the group (SIGKILL) is a node lost. The first node is
the head (`--head`, the cluster's address is its GCS port); the others join it.
"""

from __future__ import annotations

import os
import pwd
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.stack.processes import StackError, read_pid, spawn, stop_group
from pipeline.stack.services import Service

if TYPE_CHECKING:
    from pipeline.stack.team import Stack

RAY_FIRST = 20  # Ray's ports start this far above the stack's port
RAY_PORTS = (
    "node-manager", "object-manager", "dashboard-agent-grpc", "dashboard-agent-listen",
    "metrics-export", "runtime-env-agent",
)  # fmt: skip
OBJECT_STORE_BYTES = 200 * 2**20  # per node: the jobs pass Ray nothing larger than a config


def listening(port: int, address: str = "127.0.0.1") -> bool:
    """Whether something accepts a connection on `address`:`port`."""
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


def ray_environment() -> dict[str, str]:
    """What a node and a sweep that uses it share: token auth off on loopback (a token an
    earlier Ray left in ~/.ray would otherwise be asked for) and no `uv run` hook."""
    return {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


class RayNode(Service):
    """Ray node `index` of the stack (0: the head)."""

    def __init__(self, stack: Stack, index: int) -> None:
        super().__init__(stack)
        self.index = index
        self.name = f"ray-{index}"
        self.label = "the Ray head" if index == 0 else f"Ray node {index}"

    @property
    def gcs_port(self) -> int:
        return self.stack.port + RAY_FIRST

    @property
    def own_ports(self) -> dict[str, int]:
        first = self.stack.port + RAY_FIRST + 2 + len(RAY_PORTS) * self.index
        return {name: first + i for i, name in enumerate(RAY_PORTS)}

    @property
    def port(self) -> int:
        return self.own_ports["node-manager"]

    def worker_ports(self) -> tuple[int, int]:
        first = self.stack.port + 200 + 100 * self.index
        return first, first + 99

    def ports(self) -> list[int]:
        head = [self.gcs_port, self.gcs_port + 1] if self.index == 0 else []
        return head + list(self.own_ports.values())

    @property
    def address(self) -> str:
        """Where the node listens: 127.0.0.1, or with hosts the bridge's address (the head)."""
        return self.stack.network.address if self.stack.network else "127.0.0.1"

    def answers(self) -> bool:
        return listening(self.port, self.address)

    def command(self) -> list[str]:
        ray = str(Path(sys.executable).parent / "ray")
        low, high = self.worker_ports()
        # With hosts, the head runs no job: every job runs on a host.
        cpus = 0 if self.index == 0 and self.stack.network else 1
        cmd = [
            ray, "start", "--block", f"--node-ip-address={self.address}", f"--num-cpus={cpus}",
            "--disable-usage-stats", f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--min-worker-port={low}", f"--max-worker-port={high}",
            *(f"--{name}-port={port}" for name, port in self.own_ports.items()),
        ]  # fmt: skip
        if self.index == 0:
            cmd += [
                "--head", f"--port={self.gcs_port}", "--include-dashboard=false",
                f"--ray-client-server-port={self.gcs_port + 1}",
                f"--temp-dir={self.stack.ray_dir}",
            ]  # fmt: skip
        else:
            cmd.append(f"--address={self.stack.ray_address}")
        return cmd

    def environment(self) -> dict[str, str]:
        """A node's tasks log to the stack's server as its user, as a team's nodes would with
        their service account, and reach its DVC remote with its keys: the sweep's own
        environment does not reach Ray's workers."""
        env = {**os.environ, **self.stack.exports(), **ray_environment()}
        env.update(self.stack.storage_keys())
        env.pop("RAY_ADDRESS")
        return env

    def start(self) -> None:
        spawn(self.command(), self.log, self.environment(), self.pid_file)

    def stop(self) -> None:
        pid = read_pid(self.pid_file)
        if pid is not None:
            stop_group(pid, seconds=10)  # `ray start --block` outlives a SIGTERM at times
        self.pid_file.unlink(missing_ok=True)


def ray_node_ids(address: str) -> dict[str, str]:
    """The live nodes of the Ray cluster at `address`: "address:node manager port" -> id, and
    ":port" -> id where one node alone has that port (a node started on 127.0.0.1 reports the
    machine's address)."""
    os.environ.update(ray_environment())  # before Ray reads its settings, at import
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        alive = [n for n in ray.nodes() if n["Alive"]]
        ids = {f"{n['NodeManagerAddress']}:{n['NodeManagerPort']}": n["NodeID"] for n in alive}
        ports = [n["NodeManagerPort"] for n in alive]
        ids |= {
            f":{n['NodeManagerPort']}": n["NodeID"]
            for n in alive
            if ports.count(n["NodeManagerPort"]) == 1
        }
        return ids
    finally:
        ray.shutdown()


# ---- SLURM: a one-host cluster (`up --slurm`) ------------------------------------------------

SLURM_FIRST = 40  # slurmctld's port is this far above the stack's port, slurmd's the next


def slurm_program(name: str) -> str:
    import shutil

    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        package = "munge" if name.startswith("munge") else "slurm-wlm"
        raise StackError(
            f"SLURM's {name} was not found: install Debian's {package} package "
            "(`apt-get install slurmctld slurmd slurm-client munge`)."
        )
    return found


def slurm_conf(stack: Stack) -> str:
    """slurm.conf of the one-host cluster: the machine's CPUs and memory in one node and one
    partition, state and logs in the stack's folder, processes tracked without cgroups."""
    folder = stack.slurm_dir
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    cpus = os.cpu_count() or 1
    return f"""\
ClusterName=stack
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={stack.port + SLURM_FIRST}
SlurmdPort={stack.port + SLURM_FIRST + 1}
SlurmUser={pwd.getpwuid(os.getuid()).pw_name}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder / "munge.socket"}
StateSaveLocation={folder / "state"}
SlurmdSpoolDir={folder / "spool"}
SlurmctldPidFile={folder / "slurmctld.pid"}
SlurmdPidFile={folder / "slurmd.pid"}
SlurmctldLogFile={stack.folder / "logs" / "slurmctld.log"}
SlurmdLogFile={stack.folder / "logs" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=10
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=stack Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class Munge(Service):
    """munged with a key of the stack's own, on a socket in the stack's folder: SLURM's
    authentication."""

    name, label = "munge", "munge (SLURM's authentication)"

    @property
    def port(self) -> int:
        return 0  # a Unix socket

    def ports(self) -> list[int]:
        return []

    @property
    def socket(self) -> Path:
        return self.stack.slurm_dir / "munge.socket"

    def answers(self) -> bool:
        return self.socket.exists() and self.pid() is not None

    def start(self) -> None:
        import subprocess

        folder = self.stack.slurm_dir
        key = folder / "munge.key"
        if not key.is_file():
            made = subprocess.run(
                [slurm_program("mungekey"), "--create", f"--keyfile={key}"],
                capture_output=True,
                text=True,
            )
            if made.returncode != 0:
                raise StackError(f"mungekey could not make {key}: {made.stderr.strip()}")
        key.chmod(0o600)
        cmd = [
            slurm_program("munged"), "--foreground", "--force", f"--socket={self.socket}",
            f"--key-file={key}", f"--log-file={self.log}", f"--pid-file={folder / 'munged.pid'}",
            f"--seed-file={folder / 'munged.seed'}",
        ]  # fmt: skip
        spawn(cmd, self.log.with_suffix(".out"), dict(os.environ), self.pid_file)


class SlurmDaemon(Service):
    """slurmctld (the controller) or slurmd (the node), in the foreground, on the stack's
    slurm.conf."""

    def __init__(self, stack: Stack, program: str) -> None:
        super().__init__(stack)
        self.program = program
        self.name = program
        self.label = "SLURM's controller" if program == "slurmctld" else "SLURM's node"

    @property
    def port(self) -> int:
        return self.stack.port + SLURM_FIRST + (1 if self.program == "slurmd" else 0)

    def answers(self) -> bool:
        return listening(self.port)

    def start(self) -> None:
        folder = self.stack.slurm_dir
        for sub in ("state", "spool"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf = folder / "slurm.conf"
        conf.write_text(slurm_conf(self.stack))
        cmd = [slurm_program(self.program), "-D", "-f", str(conf)]
        cmd += ["-N", "localhost"] if self.program == "slurmd" else ["-i"]
        env = {**os.environ, "SLURM_CONF": str(conf)}
        spawn(cmd, self.log.with_suffix(".out"), env, self.pid_file)
