"""Hosts of their own on this machine (`up --ray-hosts N`): a cluster that shares nothing with the
sweep but the network.

The stack makes a bridge with a private /24 of its own (10.X.Y.0/24, from the stack's port; the
bridge is .1) and, per host, a network namespace joined to it by a veth pair (host k is .1k). No
route leads anywhere else: a host reaches the bridge's address and the other hosts, nothing more.
The stack's services answer on the bridge's address as well as on 127.0.0.1, through a forwarder
(`python -m pipeline.stack.forward`), and the Ray head listens on it.

A host's processes also run in a mount namespace of their own, in which the project's folder and
the stack's are empty (tmpfs): neither the project's code, its data, its sweeps, nor the stack's
secrets exist there. Two things are put back: the project's locked environment (`.venv`),
read-only, as a cluster's machine image would hold it, and the host's own folder
(DIR/hosts/hK: its home, so its caches are its own). /tmp is private too. Everything a job needs
comes over the network: its code through Ray's runtime environment, its data from the DVC remote,
its results go to the MLflow server.

Namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2's `ip`; a machine without them
gets one line naming what is missing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.stack.cluster import RAY_FIRST, RAY_PORTS, RayNode, listening
from pipeline.stack.processes import StackError, read_pid, spawn, stop_group
from pipeline.stack.services import Service

if TYPE_CHECKING:
    from pipeline.stack.team import Stack

PREFIX = "mnp"  # every link and namespace the stack makes is named mnp<port>...
STAGING = Path("/run/mnist-pipeline")  # where a host's mounts wait while its world is emptied


def ip_program() -> str:
    found = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
    if found is None:
        raise StackError("--ray-hosts needs iproute2's `ip` (apt-get install iproute2).")
    return found


CAPABILITIES = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21}  # name -> bit in /proc's CapEff


def check_can_make_hosts() -> None:
    """Before anything starts: the `ip` program, and the capabilities its namespaces, links
    and mounts need, which this process has (as root) or not."""
    ip_program()
    status = Path("/proc/self/status").read_text().splitlines()
    effective = int(next(ln for ln in status if ln.startswith("CapEff:")).split()[1], 16)
    missing = [name for name, bit in CAPABILITIES.items() if not effective >> bit & 1]
    if missing:
        raise StackError(
            f"--ray-hosts makes network namespaces, links and mounts, which needs root with "
            f"{' and '.join(CAPABILITIES)}, and this process lacks {' and '.join(missing)}: run "
            "`up` as root, or use --ray-nodes N (Ray nodes on this machine's own network)."
        )


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([ip_program(), *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        if "Operation not permitted" in said or os.geteuid() != 0:
            raise StackError(
                f"--ray-hosts makes network namespaces and links, which needs root "
                f"(CAP_NET_ADMIN and CAP_SYS_ADMIN): `ip {' '.join(args)}` said: {said}"
            )
        raise StackError(f"`ip {' '.join(args)}` failed: {said}")
    return done


class Network:
    """The stack's bridge and its addresses: names and the /24 follow from the stack's port."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.tag = f"{PREFIX}{stack.port}"
        self.bridge = f"{self.tag}b"
        self.subnet = ipaddress.ip_network(
            f"10.{100 + stack.port // 256 % 100}.{stack.port % 256}.0/24"
        )
        self.address = str(self.subnet.network_address + 1)

    def host_address(self, index: int) -> str:
        return str(self.subnet.network_address + 10 + index)

    def namespace(self, index: int) -> str:
        return f"{self.tag}-h{index}"

    def veth(self, index: int) -> str:
        return f"{self.tag}v{index}"

    def exists(self) -> bool:
        return ip("link", "show", self.bridge, check=False).returncode == 0

    def check_free(self) -> None:
        """The /24 must be no network this machine already reaches."""
        routes = json.loads(ip("-j", "route", "show", "table", "all").stdout or "[]")
        for route in routes:
            destination = route.get("dst", "")
            if destination in ("", "default", "local", "broadcast") or ":" in destination:
                continue
            try:
                net = ipaddress.ip_network(destination, strict=False)
            except ValueError:
                continue
            if net.overlaps(self.subnet) and route.get("dev") != self.bridge:
                raise StackError(
                    f"the hosts' network {self.subnet} overlaps {destination} on "
                    f"{route.get('dev')}; choose another --port (or --port auto)."
                )

    def make(self) -> None:
        if self.exists():
            return
        self.check_free()
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def remove(self) -> None:
        ip("link", "del", self.bridge, check=False)


class Forwarder(Service):
    """The bridge, and the forwarder that makes the stack's services answer on its address."""

    name, label = "bridge", "the hosts' bridge and forwarder"

    @property
    def port(self) -> int:
        return self.stack.ports["mlflow"]

    @property
    def address(self) -> str:
        return self.stack.network.address

    def ports(self) -> list[int]:
        return []  # it listens on the bridge's address, not 127.0.0.1

    def forwarded(self) -> list[int]:
        return [self.stack.ports[name] for name in ("mlflow", "s3", "postgres")]

    def answers(self) -> bool:
        network = self.stack.network
        return network.exists() and listening(self.port, network.address)

    def start(self) -> None:
        self.stack.network.make()
        address = self.stack.network.address
        pairs = [f"{address}:{port}=127.0.0.1:{port}" for port in self.forwarded()]
        cmd = [sys.executable, "-m", "pipeline.stack.forward", *pairs]
        spawn(cmd, self.log, dict(os.environ), self.pid_file)

    def stop(self) -> None:
        super().stop()
        self.stack.network.remove()
        with contextlib.suppress(OSError):
            STAGING.rmdir()  # once no host is left


def host_world(stack: Stack, index: int, command: list[str]) -> list[str]:
    """`command` run inside host `index`: its network namespace, and a mount namespace in which
    the project's and the stack's folders are empty but for the locked environment (read-only)
    and the host's own folder, with a private /tmp."""
    from pipeline.core.paths import project_root

    project = project_root()
    venv = Path(sys.prefix)
    own = stack.host_dir(index)
    staged = STAGING / stack.network.namespace(index)
    # The project, the stack's folder, and the checkout the environment belongs to (a project
    # whose stack started from another's environment): none of them is a host's.
    hidden: list[Path] = []
    for folder in (project, stack.folder, venv.parent):
        inside = any(folder.is_relative_to(h) for h in hidden)
        if not inside and (folder != venv.parent or (folder / "pyproject.toml").is_file()):
            hidden = [h for h in hidden if not h.is_relative_to(folder)] + [folder]
    quoted = [shlex.quote(str(p)) for p in hidden]
    lines = [
        "set -ex",  # each step in the host's log
        "mount --make-rprivate /",
        f"mkdir -p {staged}/env {staged}/home",
        f"mount --bind {shlex.quote(str(venv))} {staged}/env",
        f"mount -o remount,bind,ro {staged}/env",
        f"mount --bind {shlex.quote(str(own))} {staged}/home",
        "mount -t tmpfs -o mode=1777 tmpfs /tmp",
        *(f"mkdir -p {p} && mount -t tmpfs -o mode=755 tmpfs {p}" for p in quoted),
        f"mkdir -p {shlex.quote(str(venv))} {shlex.quote(str(own))}",
        f"mount --move {staged}/env {shlex.quote(str(venv))}",
        f"mount --move {staged}/home {shlex.quote(str(own))}",
        f"cd {shlex.quote(str(own))}",
        'exec "$@"',
    ]
    namespace = stack.network.namespace(index)
    return [
        ip_program(), "netns", "exec", namespace, "unshare", "--mount", "--propagation",
        "private", "--", "sh", "-c", "\n".join(lines), "host", *command,
    ]  # fmt: skip


def make_host(stack: Stack, index: int) -> None:
    """Host `index`'s namespace, its link to the bridge, its address, its folder."""
    network = stack.network
    namespace, veth = network.namespace(index), network.veth(index)
    if ip("netns", "pids", namespace, check=False).returncode != 0:
        ip("netns", "add", namespace)
    if ip("link", "show", veth, check=False).returncode != 0:
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        ip("link", "set", veth, "master", network.bridge, "up")
        ip("-n", namespace, "addr", "add", f"{network.host_address(index)}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "link", "set", "lo", "up")
    folder = stack.host_dir(index)
    (folder / "home").mkdir(parents=True, exist_ok=True)
    (STAGING / namespace).mkdir(parents=True, exist_ok=True)


def lose_host(stack: Stack, index: int) -> None:
    """Every process in host `index` SIGKILLed and its namespace removed (its link goes with
    it): a machine lost."""
    namespace = stack.network.namespace(index)
    listed = ip("netns", "pids", namespace, check=False)
    for pid in listed.stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    ip("netns", "del", namespace, check=False)
    shutil.rmtree(STAGING / namespace, ignore_errors=True)


def host_pids(stack: Stack, index: int) -> list[int]:
    listed = ip("netns", "pids", stack.network.namespace(index), check=False)
    return [int(pid) for pid in listed.stdout.split()]


def stop_host(stack: Stack, index: int, pid_file: Path) -> None:
    """Stop host `index`'s node, then whatever else runs there, then remove the host."""
    pid = read_pid(pid_file)
    if pid is not None:
        stop_group(pid, seconds=10)
    pid_file.unlink(missing_ok=True)
    lose_host(stack, index)


class RayHost(RayNode):
    """Ray node `index` (1, 2, ...) on a host of its own (pipeline/stack/hosts.py)."""

    def __init__(self, stack: Stack, index: int) -> None:
        super().__init__(stack, index)
        self.name = f"host-{index}"
        self.label = f"Ray host {index}"

    @property
    def address(self) -> str:
        return self.stack.network.host_address(self.index)

    def worker_ports(self) -> tuple[int, int]:
        first = self.stack.port + 200  # a host of its own: the same ports as the others
        return first, first + 99

    @property
    def own_ports(self) -> dict[str, int]:
        first = self.stack.port + RAY_FIRST + 2 + len(RAY_PORTS)
        return {name: first + i for i, name in enumerate(RAY_PORTS)}

    def ports(self) -> list[int]:
        return []  # in its own network: nothing on this machine's 127.0.0.1

    def pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if pid is not None and pid in host_pids(self.stack, self.index) else None

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["HOME"] = str(self.stack.host_dir(self.index) / "home")  # its own caches
        return env

    def start(self) -> None:
        make_host(self.stack, self.index)
        spawn(host_world(self.stack, self.index, self.command()), self.log, self.environment(),
              self.pid_file)  # fmt: skip

    def stop(self) -> None:
        stop_host(self.stack, self.index, self.pid_file)
