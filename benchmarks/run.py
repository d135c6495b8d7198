"""Benchmark: the tracked pipeline against the plain Keras script of the seed model.

Everything runs here, in one go, on a fresh copy of the project (no data, no DVC cache, no
MLflow store), with the MNIST files from a local mirror, so that every figure is a ratio taken
side by side on the same machine:

  (a) seconds per epoch of the train stage against `benchmarks/plain.py` (batch size 32, 5
      epochs), with both test accuracies;
  (b) the wall time of `dvc repro` from that clean state against the plain script's;
  (c) the wall time of a `dvc repro` with nothing to do;
  (d) per job of a 4-job sweep: the time from its first run's start to its last run's end,
      less the runs' fit time, over 4 (what a job adds to the sweep beyond training);
  (e) the peak resident memory of the train stage;
  (f) seconds per epoch of Keras `fit` tuned the documented way (`benchmarks/fit.py`: float32,
      XLA, `steps_per_execution` = one epoch) on the same data, against the train stage's loop;
  (g) `sweep_efficiency` of the standard grid with `sweep.seeds=3` (60 models) and the default
      launcher: the epochs actually trained x their steady seconds per epoch, over the sweep's
      wall time; and the same grid's wall time with `hydra/launcher=joblib`, 2 workers, at 1 and
      at 2 TensorFlow threads each;
  (j) the same grid trained with `sweep.share_epochs=false` (every epoch count alone) against
      the default (each configuration once, its smaller counts taken as checkpoints): the
      wall-time ratio, and how many of the 60 (hidden, epochs, seed) models have the same
      `weights_sha256` and validation accuracy in both;
  (h) the web app under load against `mlflow models serve` on the same champion model
      (benchmarks/serve.py): requests per second at 8 clients and their ratio, p50 and p95
      latency, a single client's p50, zero errors, answers as `pipeline.predict --json`'s;
  (i) the wall time of `python -m pipeline.predict digit.png`, after a first command, and of
      the same through `uv run`; with `uv run python -c pass` against the environment's python
      (`uv_run_overhead_s`: what `uv run` adds to any command).

Prints a table, writes `benchmarks/results.json` and the table into `docs/benchmarks.md`.
Command: `uv run python benchmarks/run.py` (`MNIST_MIRROR` or `--mirror` names the local copy of
the four MNIST files; the default is `../shared/data/mnist` beside the project); with `--only
sweeps`, only (d), (g) and (j), about 18 minutes; with `--only serve`, only (h) and (i), about two
minutes; with `--only waits`, what users wait for: (c), (d), (g) on the basic launcher, (i) and
`uv run`'s overhead, about 7 minutes; each keeps the other results.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from serve import check, digits, measure_serving, timed_predict  # noqa: E402

from helpers import copy_project, run_env  # noqa: E402  (the tests' copy of the project)

RESULTS = ROOT / "benchmarks" / "results.json"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- results: written by benchmarks/run.py -->", "<!-- /results -->"
SWEEP = "model.hidden_units=32,64,128,256"

# key: (what it measures, target, True when a higher value is better)
TARGETS: dict[str, tuple[str, float, bool]] = {
    "epoch_speedup": ("(a) plain s/epoch / pipeline s/epoch", 3.0, True),
    "accuracy_gap_points": ("(a) test accuracy gap to the plain script, points", 0.3, False),
    "pipeline_vs_plain": ("(b) dvc repro from clean / plain script wall", 1.0, False),
    "noop_repro_s": ("(c) dvc repro with nothing to do, s", 1.5, False),
    "sweep_overhead_per_job_s": ("(d) 4-job sweep: (jobs' span - fit) / 4, s", 0.5, False),
    "train_peak_rss_mb": ("(e) train stage peak RSS, MB", 1500.0, False),
    "loop_vs_tuned_fit": ("(f) tuned `fit` s/epoch / pipeline s/epoch", 1.0, True),
    "sweep_efficiency": ("(g) 60-model grid: steady training s / wall s", 0.85, True),
    "sharing_speedup": ("(j) 60-model grid: wall unshared / wall shared", 1.5, True),
    "sharing_same_models": ("(j) models alike in both (weights, val accuracy), of 60", 60, True),
    "app_vs_mlflow_serve": ("(h) app req/s / `mlflow models serve` req/s, 8 clients", 2.0, True),
    "app_p95_ms": ("(h) app p95 latency at 8 clients, ms", 150.0, False),
    "app_single_client_p50_ms": ("(h) app p50 latency, 1 client, ms", 15.0, False),
    "predict_cli_s": ("(i) `pipeline.predict digit.png`, s", 3.5, False),
    "predict_uv_run_s": ("(i) `uv run python -m pipeline.predict digit.png`, s", 3.5, False),
    "uv_run_pass_s": ("`uv run python -c pass`, s", 0.5, False),
}
GRID = ["+grid=hidden_epochs", "sweep.seeds=3"]
JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
LAUNCHER_ARGS = {  # how (g)'s grid is run
    "basic": [],
    "basic_unshared": ["sweep.share_epochs=false"],
    "joblib_1_thread": [*JOBLIB, "train.intra_op_threads=1", "train.inter_op_threads=1"],
    "joblib_2_threads": JOBLIB,
}
LAUNCHERS = tuple(LAUNCHER_ARGS)


class BenchmarkError(Exception):
    pass


def fail(message: str) -> None:
    raise BenchmarkError(message)


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int, str]:
    """Run `cmd`; return its wall seconds, its own peak RSS in MB and its stdout."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise BenchmarkError(
            f"{' '.join(cmd)} exited {proc.returncode} in {cwd}:\n{stdout[-2000:]}\n"
            f"{stderr[-4000:]}"
        )
    return seconds, usage.ru_maxrss // 1024, stdout


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    meminfo = Path("/proc/meminfo")
    memory_gb = None
    if meminfo.exists():
        kb = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        memory_gb = round(kb / 1024**2, 1)
    from importlib.metadata import version

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": version("tensorflow"),
        "keras": version("keras"),
        "mlflow": version("mlflow"),
        "dvc": version("dvc"),
    }


def sweep_jobs(project: Path, experiment: str) -> tuple[float, list[float]]:
    """The sweep's job phase: seconds from its first child run's start to its last one's end
    (models are evaluated while the next trains, so runs overlap), and each run's fit time."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = [
        r
        for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        if "mlflow.parentRunId" in r.data.tags
    ]
    if not runs:
        raise BenchmarkError(f"the sweep logged no child runs to {experiment}")
    span = max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)
    return span / 1000, [r.data.metrics["train_seconds"] for r in runs]


def grid_runs(project: Path, experiment: str) -> list[Any]:
    """The 60 FINISHED model runs of the standard grid logged to `experiment`."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = [
        r
        for r in client.search_runs([experiment_id], max_results=1000)
        if "mlflow.parentRunId" in r.data.tags
    ]
    if len(runs) != 60 or any(r.info.status != "FINISHED" for r in runs):
        raise BenchmarkError(f"the grid in {experiment} made {len(runs)} runs, expected 60")
    return runs


def efficiency(project: Path, experiment: str, wall: float, workers: int) -> dict[str, Any]:
    """(g) for the sweep logged to `experiment`: the epochs its trainings ran x steady seconds
    per epoch, over `wall` x `workers` (the jobs run side by side). A model taken as a
    checkpoint of a longer training (tagged `trained_in`) ran no epoch of its own, so it counts
    for nothing: where epoch counts share trainings, (g) is still the share of the wall time
    spent training, not the models held. A training's steady seconds per epoch are the median
    epoch time of all trainings of its hidden size: compilation, paid once per hidden size by
    the first of them, drops out of the median."""
    import statistics

    import mlflow

    from pipeline.core.names import TRAINED_IN_TAG

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = [r for r in grid_runs(project, experiment) if TRAINED_IN_TAG not in r.data.tags]
    epochs_of: dict[str, list[float]] = {}
    for r in runs:
        history = client.get_metric_history(r.info.run_id, "epoch_seconds")
        epochs_of.setdefault(r.data.params["model.hidden_units"], []).extend(
            m.value for m in history
        )
    per_epoch = {h: statistics.median(v) for h, v in epochs_of.items()}
    training = sum(
        int(r.data.params["train.epochs"]) * per_epoch[r.data.params["model.hidden_units"]]
        for r in runs
    )
    fitting = sum(r.data.metrics["train_seconds"] for r in runs)
    return {
        "trainings": len(runs),
        "epochs_trained": sum(int(r.data.params["train.epochs"]) for r in runs),
        "training_s": round(training, 1),
        "wall_s": round(wall, 1),
        "workers": workers,
        "efficiency": round(training / (wall * workers), 3),
        # Every second the models spent in `fit`, slow epochs and compiling included: what is
        # left of the wall time is the pipeline's own.
        "fit_s": round(fitting, 1),
        "fit_share": round(fitting / (wall * workers), 3),
        "steady_epoch_s": {
            h: round(v, 3) for h, v in sorted(per_epoch.items(), key=lambda i: int(i[0]))
        },
    }


def models_alike(project: Path, shared: str, alone: str) -> int:
    """(j): how many (hidden, epochs, seed) models of the grid in `shared` have the weights
    digest and validation accuracy of the same model in `alone`."""
    from pipeline.core.names import WEIGHTS_SHA256_TAG

    def models(experiment: str) -> dict[tuple[str, ...], tuple[str, float]]:
        return {
            tuple(r.data.params[k] for k in ("model.hidden_units", "train.epochs", "seed")): (
                r.data.tags[WEIGHTS_SHA256_TAG],
                r.data.metrics["val_accuracy"],
            )
            for r in grid_runs(project, experiment)
        }

    one, other = models(shared), models(alone)
    return sum(1 for key, model in one.items() if other.get(key) == model)


def measure_sweeps(
    project: Path, env: dict[str, str], launchers: tuple[str, ...] = LAUNCHERS
) -> dict[str, Any]:
    """(d), then (g) and (j): the standard grid with 3 seeds, basic launcher shared and
    unshared, then joblib."""
    py = sys.executable
    print(f"sweep {SWEEP} ...", flush=True)
    sweep_wall, _, _ = timed([py, "-m", "pipeline.sweep", "-m", SWEEP], project, env)
    span, fits = sweep_jobs(project, "mnist")
    if len(fits) != 4:
        raise BenchmarkError(f"the sweep logged {len(fits)} runs, expected 4")
    grids = {}
    for name in launchers:
        extra = LAUNCHER_ARGS[name]
        print(f"standard grid, 3 seeds, {name} ...", flush=True)
        cmd = [py, "-m", "pipeline.sweep", *GRID, *extra, f"tracking.experiment_name={name}"]
        wall, _, _ = timed(cmd, project, env)
        grids[name] = efficiency(project, name, wall, 2 if JOBLIB[0] in extra else 1)
    return {
        "sweep_overhead_per_job_s": round((span - sum(fits)) / len(fits), 2),
        "sweep_wall_s": round(sweep_wall, 2),
        "sweep_startup_s": round(sweep_wall - span, 2),
        "sweep_efficiency": grids["basic"]["efficiency"],
        "sharing_speedup": round(grids["basic_unshared"]["wall_s"] / grids["basic"]["wall_s"], 2),
        "sharing_same_models": models_alike(project, "basic", "basic_unshared"),
        "grid_3_seeds": grids,
    }


def noop_repro(project: Path, env: dict[str, str]) -> float:
    """(c): the wall seconds of a `dvc repro` with nothing to do."""
    print("dvc repro with nothing to do ...", flush=True)
    wall, _, out = timed([sys.executable, "-m", "dvc", "repro"], project, env)
    if "didn't change" not in out and "up to date" not in out:
        raise BenchmarkError(f"the second dvc repro ran something:\n{out}")
    return wall


def median_seconds(cmd: list[str], cwd: Path, env: dict[str, str], runs: int = 5) -> float:
    """The median wall seconds of `cmd` over `runs` runs, after a first one."""
    times = [timed(cmd, cwd, env)[0] for _ in range(runs + 1)][1:]
    return statistics.median(times)


def uv_run_costs(project: Path, env: dict[str, str], image: Path) -> dict[str, Any]:
    """What `uv run` adds to a command, in this checkout's environment: `uv run python -c
    pass` against the environment's python, and (i) through `uv run`."""
    uv = shutil.which("uv")
    if uv is None:
        raise BenchmarkError("uv is not on PATH: install it with `pip install uv`")
    compiled = subprocess.run([uv, "run", "python", "-c", "pass"], cwd=ROOT, env=env,
                              capture_output=True, text=True)  # fmt: skip
    print("uv run's overhead ...", flush=True)
    with_uv = median_seconds([uv, "run", "python", "-c", "pass"], ROOT, env)
    plain = median_seconds([sys.executable, "-c", "pass"], ROOT, env)
    predict = [uv, "run", "--project", str(ROOT), "python", "-m", "pipeline.predict", str(image)]
    return {
        "uv_run_compiles_bytecode": "Bytecode compiled" in compiled.stderr,
        "uv_run_pass_s": round(with_uv, 2),
        "python_pass_s": round(plain, 2),
        "uv_run_overhead_s": round(with_uv - plain, 2),
        "predict_uv_run_s": round(median_seconds(predict, project, env, runs=3), 2),
    }


def measure_waits(project: Path, env: dict[str, str], work: Path) -> dict[str, Any]:
    """What users wait for, in one run: (c), (d), (g) on the basic launcher, (i), with and
    without `uv run`, and what `uv run` adds."""
    print("dvc repro ...", flush=True)
    timed([sys.executable, "-m", "dvc", "repro"], project, env)
    noop = noop_repro(project, env)
    (image,), _ = digits(project, 1, work / "digits")
    print("pipeline.predict ...", flush=True)
    results = {"noop_repro_s": round(noop, 2), "predict_cli_s": timed_predict(project, env, image)}
    results |= uv_run_costs(project, env, image)
    return results | measure_sweeps(project, env, launchers=("basic", "basic_unshared"))


def steady(epoch_seconds: list[float]) -> float:
    """Mean seconds of the epochs after the first (which pays for compilation)."""
    later = epoch_seconds[1:] or epoch_seconds
    return sum(later) / len(later)


def bench_env(mirror: Path, work: Path) -> dict[str, str]:
    """The commands' environment: the local MNIST mirror, and a compile cache of their own that
    starts empty (not the user's, which earlier runs filled)."""
    cache = work / "xla-cache"
    cache.mkdir(mode=0o700)
    return run_env(MNIST_MIRROR=str(mirror), PIPELINE_COMPILE_CACHE=str(cache))


def measure(mirror: Path, work: Path) -> dict[str, Any]:
    env = bench_env(mirror, work)
    py = sys.executable
    project = copy_project(work / "project")

    print("plain script ...", flush=True)
    plain_wall, _, out = timed([py, str(ROOT / "benchmarks/plain.py"), str(mirror)], work, env)
    plain = json.loads(out.strip().splitlines()[-1])

    print("dvc repro from a clean state ...", flush=True)
    repro_wall, _, repro_out = timed([py, "-m", "dvc", "repro"], project, env)
    loop_epochs = [float(m) for m in re.findall(r"^Epoch \d+/\d+ - ([\d.]+)s", repro_out, re.M)]
    train = json.loads((project / "reports/train.json").read_text())
    metrics = json.loads((project / "reports/metrics.json").read_text())
    epochs = len((project / "reports/history.csv").read_text().splitlines()) - 1

    noop_wall = noop_repro(project, env)

    print("train stage alone, for its memory ...", flush=True)
    _, train_rss, _ = timed([py, "-m", "pipeline.train"], project, env)

    print("Keras fit, tuned, on the same data ...", flush=True)
    _, _, out = timed([py, str(ROOT / "benchmarks/fit.py"), str(project)], work, env)
    tuned = json.loads(out.strip().splitlines()[-1])
    sweeps = measure_sweeps(project, env)
    print("the web app and mlflow models serve under load ...", flush=True)
    serving = measure_serving(project, env, work)
    (image,), _ = digits(project, 1, work / "one")
    serving |= uv_run_costs(project, env, image)

    plain_epoch = sum(plain["epoch_seconds"]) / len(plain["epoch_seconds"])
    pipeline_epoch = train["train_seconds"] / epochs
    return {
        "epoch_speedup": round(plain_epoch / pipeline_epoch, 2),
        "plain_epoch_s": round(plain_epoch, 3),
        "pipeline_epoch_s": round(pipeline_epoch, 3),
        "plain_test_accuracy": round(plain["test_accuracy"], 4),
        "pipeline_test_accuracy": round(metrics["test_accuracy"], 4),
        "accuracy_gap_points": round(
            abs(plain["test_accuracy"] - metrics["test_accuracy"]) * 100, 2
        ),
        "plain_wall_s": round(plain_wall, 2),
        "repro_wall_s": round(repro_wall, 2),
        "pipeline_vs_plain": round(repro_wall / plain_wall, 3),
        "noop_repro_s": round(noop_wall, 2),
        **sweeps,
        **serving,
        "train_peak_rss_mb": train_rss,
        "tuned_fit_epoch_s": round(tuned["fit_seconds"] / len(tuned["epoch_seconds"]), 3),
        "tuned_fit_steady_epoch_s": round(steady(tuned["epoch_seconds"]), 3),
        "pipeline_steady_epoch_s": round(steady(loop_epochs), 3),
        "tuned_fit_test_accuracy": round(tuned["test_accuracy"], 4),
        "loop_vs_tuned_fit": round(
            tuned["fit_seconds"] / len(tuned["epoch_seconds"]) / pipeline_epoch, 2
        ),
    }


def table(results: dict[str, Any]) -> str:
    rows = ["| measure | value | target | met |", "|---|---:|---:|:---:|"]
    for key, (label, target, higher) in TARGETS.items():
        value = results[key]
        met = value >= target if higher else value <= target
        rows.append(
            f"| {label} | {value} | {'>=' if higher else '<='} {target} | "
            f"{'yes' if met else 'NO'} |"
        )
    rows.append("")
    rows.append(
        f"Plain script: {results['plain_epoch_s']} s/epoch, test accuracy "
        f"{results['plain_test_accuracy']}, {results['plain_wall_s']} s in all. Pipeline: "
        f"{results['pipeline_epoch_s']} s/epoch (XLA compilation included), test accuracy "
        f"{results['pipeline_test_accuracy']}, `dvc repro` {results['repro_wall_s']} s. Sweep "
        f"of 4 jobs: {results['sweep_wall_s']} s, of which {results['sweep_startup_s']} s "
        "before the first run and after the last (Python, TensorFlow and MLflow start-up, `dvc "
        "repro preprocess`, the parent run and its summary). Keras `fit` tuned (float32, XLA, "
        f"`steps_per_execution` = one epoch): {results['tuned_fit_epoch_s']} s/epoch "
        f"({results['tuned_fit_steady_epoch_s']} s after the first, against the loop's "
        f"{results['pipeline_steady_epoch_s']} s), test accuracy "
        f"{results['tuned_fit_test_accuracy']}. Serving (8 clients x 50 requests, then 1): the "
        f"app {results['app_rps']} req/s, p50 {results['app_p50_ms']} ms, p95 "
        f"{results['app_p95_ms']} ms, one client's p50 {results['app_single_client_p50_ms']} "
        f"ms, answers as `pipeline.predict --json`: {results['app_answers_as_predict']}; "
        f"`mlflow models serve` {results['mlflow_serve_rps']} req/s, p50 "
        f"{results['mlflow_serve_p50_ms']} ms, p95 {results['mlflow_serve_p95_ms']} ms; errors "
        f"{results['app_errors']} and {results['mlflow_serve_errors']}. `uv run python -c "
        f"pass`: {results['uv_run_pass_s']} s, against {results['python_pass_s']} s for the "
        f"environment's python: `uv run` adds {results['uv_run_overhead_s']} s to a command"
        + (
            ", compiling the environment's bytecode again"
            if results["uv_run_compiles_bytecode"]
            else ""
        )
        + "."
    )
    grids = results["grid_3_seeds"]
    rows.append("")
    rows.append(
        "Standard grid with `sweep.seeds=3` (60 models; 285 epochs trained alone, 150 "
        "shared): "
        + "; ".join(
            f"{name.replace('_', ' ')}: {g['wall_s']} s wall, "
            + (
                f"{g['trainings']} trainings of {g['epochs_trained']} epochs, "
                if "trainings" in g
                else ""
            )
            + f"{g['training_s']} s of steady "
            f"training in {g['workers']} worker(s), efficiency {g['efficiency']}"
            + (f" ({g['fit_s']} s in `fit`, {g['fit_share']} of it)" if "fit_s" in g else "")
            for name, g in grids.items()
        )
        + ". Steady seconds per epoch by hidden size (basic launcher, 2 threads): "
        + ", ".join(f"{h}: {v}" for h, v in grids["basic"]["steady_epoch_s"].items())
        + "."
    )
    return "\n".join(rows)


def taken(about: dict[str, Any]) -> str:
    """When and where a measurement was taken."""
    return (
        f"{time.strftime('%Y-%m-%d')} on {about['cpu']}, {about['cores']} cores, "
        f"{about['memory_gb']} GB, {about['os']}; Python {about['python']}, TensorFlow "
        f"{about['tensorflow']}, Keras {about['keras']}, MLflow {about['mlflow']}, "
        f"DVC {about['dvc']}"
    )


def write_doc(results: dict[str, Any]) -> None:
    text = DOC.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise BenchmarkError(f"{DOC} lacks the markers {BEGIN} and {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    when = results["taken"]  # in the order the parts were taken, the newest last
    lines = f"Taken {when['all']}."
    parts = {
        "sweeps": ["(d)", "(g)", "(j)"],
        "serve": ["(h)", "(i)"],
        "waits": ["(c)", "(d)", "(g)", "(j)", "(i)", "uv run"],
    }
    later = [k for k, v in when.items() if k in parts and v != when["all"]]
    if later:
        lines = f"(a)-(c), (e), (f) and the rest taken {when['all']}."
        for i, key in enumerate(later):  # each measure under the part that took it last
            newer = {m for k in later[i + 1 :] for m in parts[k]}
            if own := [m for m in parts[key] if m not in newer]:
                lines += f"\n\n{', '.join(own)} taken {when[key]}."
    DOC.write_text(f"{head}{BEGIN}\n{lines}\n\n{table(results)}\n{END}{tail}", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = os.environ.get("MNIST_MIRROR") or str(ROOT.parent / "shared/data/mnist")
    parser.add_argument("--mirror", default=default, help="folder with the 4 MNIST .gz files")
    parser.add_argument(
        "--only",
        choices=["sweeps", "serve", "waits"],
        help="measure only (d) and (g), only (h) and (i), or only what users wait for: (c), "
        "(d), (g) on the basic launcher, (i) and uv run's overhead; keep the other results",
    )
    args = parser.parse_args()
    mirror = Path(args.mirror).resolve()
    if not mirror.is_dir():
        print(
            f"error: MNIST mirror {mirror} is not a folder; set MNIST_MIRROR or pass --mirror "
            "to a folder holding the four MNIST files.",
            file=sys.stderr,
        )
        return 2
    # Both sides start from compiled bytecode, as they do on a second run anywhere.
    compileall.compile_dir(sysconfig.get_paths()["purelib"], quiet=2, workers=0)
    with tempfile.TemporaryDirectory(prefix="mnist-bench-") as work:
        try:
            now = taken(machine())
            if args.only:
                env = bench_env(mirror, Path(work))
                project = copy_project(Path(work) / "project")
                stage = {"sweeps": "preprocess", "serve": "evaluate"}.get(args.only)
                if stage:
                    repro = [sys.executable, "-m", "dvc", "repro", stage]
                    subprocess.run(repro, cwd=project, env=env, check=True, capture_output=True)
                earlier = json.loads(RESULTS.read_text())
                if args.only == "sweeps":
                    part = measure_sweeps(project, env)
                elif args.only == "waits":
                    part = measure_waits(project, env, Path(work))
                else:
                    part = measure_serving(project, env, Path(work))
                results = earlier | part
                if "grid_3_seeds" in part:
                    results["grid_3_seeds"] = earlier["grid_3_seeds"] | part["grid_3_seeds"]
                before = {k: v for k, v in earlier["taken"].items() if k != args.only}
                results["taken"] = {**before, args.only: now}  # the newest last
            else:
                results = measure(mirror, Path(work))
                results["taken"] = {"all": now, "sweeps": now, "serve": now}
            check(results, fail)
        except BenchmarkError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    write_doc(results)
    print(table(results))
    print(f"\nwrote {RESULTS.relative_to(ROOT)} and {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
