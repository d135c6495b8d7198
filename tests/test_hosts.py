"""A cluster that shares nothing but the network: `pipeline.stack up --ray-hosts 2` starts a Ray
head here and two Ray nodes each on a host of its own (a network namespace on the stack's bridge,
a mount namespace in which the project's code, data and sweeps do not exist). Sweeps run on them
with their code shipped by Ray, their data pulled from the stack's DVC remote and their results
only in the MLflow server; a host is lost; a host's link is cut for a minute."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import (
    ROOT,
    as_stack_user,
    assert_complete_child,
    child_runs,
    copy_project,
    run,
    sweep_in_background,
    team_stack,
)

pytestmark = pytest.mark.slow  # the team's stack, namespaces, a Ray cluster of two hosts

RAY = ["hydra/launcher=ray_cluster", "train.intra_op_threads=1", "train.inter_op_threads=1"]
QUICK = ["train.epochs=2", "train.max_examples=2000"]


def needs_namespaces() -> None:
    """Namespaces need root; missing, the test fails under CI and skips elsewhere."""
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        pytest.fail("the hosts' tests make network namespaces, which needs root")
    pytest.skip("the hosts' tests make network namespaces, which needs root")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, dict]]:
    """A project copy with its data prepared and a stack with two hosts; yields (project, stack
    folder, exports)."""
    needs_namespaces()
    project = copy_project(tmp_path_factory.mktemp("hosts-project"))
    run(["dvc", "repro", "preprocess"], project)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_worker_niceness", "0")
        with team_stack(project, "--ray-hosts", "2") as (folder, env):
            port = stack_port(folder)
            yield project, folder, env
    made = f"mnp{port}"
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert made not in namespaces and made not in links, (namespaces, links)  # `down` did


def stack_port(folder: Path) -> int:
    return json.loads((folder / "stack.json").read_text())["port"]


def status(project: Path, folder: Path) -> str:
    return run(
        [sys.executable, "-m", "pipeline.stack", "status", "--dir", str(folder)],
        project,
        PYTHONPATH=str(ROOT),
    ).stdout


def host_node_ids(project: Path, folder: Path) -> dict[str, str]:
    """status's host lines: host address -> Ray node id."""
    return dict(
        re.findall(r"^Ray host \d+ .* address (\S+) node id (\w+)$", status(project, folder), re.M)
    )


def in_host(folder: Path, index: int, code: str) -> subprocess.CompletedProcess:
    """`python -c CODE` inside host `index`'s namespaces (its network and its mounts), with the
    environment the host holds."""
    pid = int((folder / "run" / f"host-{index}.pid").read_text())
    return subprocess.run(
        ["nsenter", f"--target={pid}", "--mount", "--net", "--", sys.executable, "-c", code],
        capture_output=True, text=True, cwd="/",
        env={"PATH": os.environ["PATH"], "HOME": str(folder / "hosts" / f"h{index}" / "home")},
    )  # fmt: skip


def test_hosts_have_their_own_network_and_neither_code_nor_data(
    hosts: tuple[Path, Path, dict],
) -> None:
    project, folder, env = hosts
    lines = status(project, folder)
    port = stack_port(folder)
    addresses = re.findall(r"^Ray host (\d) .* answers address (10\.\d+\.\d+\.\d+)", lines, re.M)
    assert [a for _, a in addresses] == [
        f"10.{100 + port // 256 % 100}.{port % 256}.{11 + i}" for i in range(2)
    ], lines
    assert len(host_node_ids(project, folder)) == 2, lines
    bridge = env["MLFLOW_TRACKING_URI"].split("//")[1].split(":")[0]
    assert bridge.startswith("10.") and env["RAY_ADDRESS"].startswith(bridge)
    code = f"""
import json, os, socket, urllib.request
project = {str(project)!r}
seen = {{
    "project": sorted(os.listdir(project)),
    "data": os.path.exists(os.path.join(project, "data")),
    "stack secrets": os.path.exists({str(folder / "secrets.json")!r}),
    "health": urllib.request.urlopen({env["MLFLOW_TRACKING_URI"]!r} + "/health").status,
}}
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2)
    seen["loopback"] = "reached"
except OSError:
    seen["loopback"] = "refused"
try:
    import pipeline
    seen["pipeline"] = pipeline.__file__
except ImportError:
    seen["pipeline"] = None
print(json.dumps(seen))
"""
    for index in (1, 2):
        proc = in_host(folder, index, code)
        assert proc.returncode == 0, proc.stderr
        seen = json.loads(proc.stdout)
        assert seen["project"] in ([], [".venv"]), seen  # at most the locked environment
        assert not seen["data"] and not seen["stack secrets"] and seen["pipeline"] is None, seen
        assert seen["health"] == 200 and seen["loopback"] == "refused", seen
    # The environment is there read-only, as a machine image would hold it.
    wrote = in_host(folder, 1, "import sys; open(sys.prefix + '/x', 'w')")
    assert "Read-only file system" in wrote.stderr, wrote.stderr


def test_a_sweep_runs_on_both_hosts_with_nothing_shared_but_the_network(
    hosts: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    """4 jobs on the 2 hosts: each job's code came with its task, its data from the DVC remote
    (checked against the sweep's digests), and its model, metrics and figures went to the MLflow
    server; the sweep's folder here holds each job's outcome, which the sweep wrote from what
    the task returned, and nothing a job made."""
    project, folder, env = hosts
    sweep = [sys.executable, "-m", "pipeline.sweep", "-m", "model.hidden_units=8,16,24,32",
             *RAY, *QUICK, "tracking.experiment_name=on-hosts"]  # fmt: skip
    process, out, errors = sweep_in_background(sweep, project, env, tmp_path)
    assert process.wait(timeout=900) == 0, errors.read_text()[-4000:]
    ids = host_node_ids(project, folder)
    with as_stack_user(env):
        children = child_runs("on-hosts")
        assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
        parent_id = children[0].data.tags["mlflow.parentRunId"]
        for child in children:
            assert_complete_child(child, parent_id, epochs=2, examples=2000)
        used = {c.data.tags["ray.node_id"] for c in children}
    assert used == set(ids.values()), (used, ids)  # both hosts ran jobs, the head none
    sweep_dir = next(project.glob("multirun/*/*"))
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        made = sorted(p.relative_to(job).as_posix() for p in job.rglob("*") if p.is_file())
        assert made == ["job.json"], (job, made)
        assert json.loads((job / "job.json").read_text())["status"] == "FINISHED"
