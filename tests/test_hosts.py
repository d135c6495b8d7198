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
import time
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
    unavailable,
)

pytestmark = pytest.mark.slow  # the team's stack, namespaces, a Ray cluster of two hosts

RAY = ["hydra/launcher=ray_cluster", "train.intra_op_threads=1", "train.inter_op_threads=1"]
QUICK = ["train.epochs=2", "train.max_examples=2000"]


def needs_namespaces() -> None:
    """Namespaces need root; missing, the test fails under CI and skips elsewhere."""
    if os.geteuid() != 0:
        unavailable("the hosts' tests make network namespaces, which needs root")


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


def training_on(node_id: str, experiment: str) -> str | None:
    """A run of `experiment` on the node `node_id` that has been RUNNING for two seconds."""
    now_ms = time.time() * 1000
    for r in child_runs(experiment):
        mine = r.data.tags.get("ray.node_id") == node_id and r.info.status == "RUNNING"
        if mine and now_ms - r.info.start_time > 2000:
            return r.info.run_id
    return None


def accounted_for(experiment: str, attempt: str, other_node: str, may_survive: bool) -> None:
    """Every job of the 4-job sweep has exactly one FINISHED run, and any other run of it ended
    KILLED (a lost attempt, with the reason); nothing is left RUNNING. The `attempt` run was
    lost (KILLED, its job FINISHED again on `other_node`, from its checkpoint if it had kept
    one), or with `may_survive` it finished."""
    runs = {r.info.run_id: r for r in child_runs(experiment)}
    shown = [(r.info.run_name, r.info.status, r.data.tags.get("ray.node_id", "")[:8])
             for r in runs.values()]  # fmt: skip
    jobs: dict[str, list] = {}
    for r in runs.values():
        jobs.setdefault(r.data.tags["sweep_overrides"], []).append(r)
    assert len(jobs) == 4, shown
    for tried in jobs.values():
        statuses = sorted(r.info.status for r in tried)
        assert statuses == ["FINISHED"] + ["KILLED"] * (len(tried) - 1), shown
    lost = runs[attempt]
    if lost.info.status == "FINISHED" and may_survive:
        return
    assert lost.info.status == "KILLED", shown
    (again,) = [r for r in jobs[lost.data.tags["sweep_overrides"]] if r.info.status == "FINISHED"]
    assert again.data.tags["ray.node_id"] == other_node, shown
    reason = lost.data.tags["failure_reason"]
    if again.data.tags.get("resumed_from"):  # the lost attempt had kept a checkpoint in its run
        assert again.data.tags["resumed_from"] == attempt, shown
        assert reason.endswith(f"its training resumed in run {again.info.run_id}"), reason
    else:
        assert "a cluster node lost" in reason, reason


def all_hosts_back(project: Path, folder: Path) -> None:
    """`up` again, then both hosts' nodes in Ray's list (a new node registers within seconds)."""
    run([sys.executable, "-m", "pipeline.stack", "up", "--dir", str(folder)], project,
        PYTHONPATH=str(ROOT))  # fmt: skip
    deadline = time.monotonic() + 120  # ends only a hung test
    while len(host_node_ids(project, folder)) < 2:
        assert time.monotonic() < deadline, status(project, folder)
        time.sleep(1)


LONG = ["train.epochs=20", "train.max_examples=20000"]  # about 5 s a job: time to lose it


def test_a_lost_host_s_job_runs_again_on_the_other_host(
    hosts: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    """Host 1 is lost while its job trains: every process in its namespace SIGKILLed and the
    namespace removed. Its job runs again on host 2 (Ray's task retries) and finishes; the lost
    attempt's run ends KILLED; nothing is left RUNNING; `up` brings the host back."""
    from pipeline.stack.hosts import lose_host
    from pipeline.stack.team import Stack

    project, folder, env = hosts
    stack = Stack(folder)
    ids = host_node_ids(project, folder)
    first, second = (ids[stack.network.host_address(i)] for i in (1, 2))
    sweep = [sys.executable, "-m", "pipeline.sweep", "-m", "model.hidden_units=8,12,16,20",
             *RAY, *LONG, "tracking.experiment_name=host-lost"]  # fmt: skip
    process, _, errors = sweep_in_background(sweep, project, env, tmp_path)
    with as_stack_user(env):
        deadline = time.monotonic() + 600  # ends only a hung test
        while (lost_run := training_on(first, "host-lost")) is None:
            assert process.poll() is None and time.monotonic() < deadline, errors.read_text()
            time.sleep(0.3)
        lose_host(stack, 1)
        assert process.wait(timeout=900) == 0, errors.read_text()[-4000:]
        accounted_for("host-lost", lost_run, second, may_survive=False)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert stack.network.namespace(1) not in left
    all_hosts_back(project, folder)


def test_a_host_cut_off_for_a_minute_loses_nothing(
    hosts: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    """Host 2's link is cut for 60 s while its job trains, then restored: the sweep ends 0 with
    every job accounted for, its job finished on host 2 once the link was back, or run again on
    host 1 with the cut attempt KILLED; no job counted twice, nothing RUNNING."""
    from pipeline.stack.team import Stack

    project, folder, env = hosts
    stack = Stack(folder)
    ids = host_node_ids(project, folder)
    first, second = (ids[stack.network.host_address(i)] for i in (1, 2))
    link = stack.network.veth(2)
    sweep = [sys.executable, "-m", "pipeline.sweep", "-m", "model.hidden_units=8,12,16,20",
             *RAY, *LONG, "tracking.experiment_name=host-cut"]  # fmt: skip
    process, _, errors = sweep_in_background(sweep, project, env, tmp_path)
    with as_stack_user(env):
        deadline = time.monotonic() + 600  # ends only a hung test
        while (cut_run := training_on(second, "host-cut")) is None:
            assert process.poll() is None and time.monotonic() < deadline, errors.read_text()
            time.sleep(0.3)
        subprocess.run(["ip", "link", "set", link, "down"], check=True)
        time.sleep(60)  # the outage: its length is the test's subject
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
        assert process.wait(timeout=900) == 0, errors.read_text()[-4000:]
        accounted_for("host-cut", cut_run, first, may_survive=True)
    all_hosts_back(project, folder)


def test_a_sweep_on_hosts_waits_for_a_server_that_comes_back(
    hosts: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    """The MLflow server is killed once the first run of a sweep on the hosts has finished and
    started again 30 s later: the jobs on the hosts wait for it, and every run ends FINISHED
    with its epochs' metrics, the parent with its summary."""
    import signal

    import mlflow

    from pipeline.stack.team import Stack

    project, folder, env = hosts
    sweep = [sys.executable, "-m", "pipeline.sweep", "-m", "model.hidden_units=8,12,16,20",
             *RAY, *QUICK, "tracking.experiment_name=server-away"]  # fmt: skip
    process, _, errors = sweep_in_background(sweep, project, env, tmp_path)
    with as_stack_user(env):
        deadline = time.monotonic() + 600  # ends only a hung test
        while not [r for r in child_runs("server-away") if r.info.status == "FINISHED"]:
            assert process.poll() is None and time.monotonic() < deadline, errors.read_text()
            time.sleep(0.3)
        os.killpg(Stack(folder).server.pid(), signal.SIGKILL)
    time.sleep(30)  # the outage: its length is the test's subject
    run([sys.executable, "-m", "pipeline.stack", "up", "--dir", str(folder)], project,
        PYTHONPATH=str(ROOT))  # fmt: skip
    assert process.wait(timeout=900) == 0, errors.read_text()[-4000:]
    with as_stack_user(env):
        children = child_runs("server-away")
        assert sorted(r.info.status for r in children) == ["FINISHED"] * 4, children
        parent_id = children[0].data.tags["mlflow.parentRunId"]
        for child in children:
            assert_complete_child(child, parent_id, epochs=2, examples=2000)
        summary = {a.path for a in mlflow.MlflowClient().list_artifacts(parent_id)}
    assert "summary.csv" in summary
