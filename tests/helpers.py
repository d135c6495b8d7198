"""Helpers the tests share: commands run as a user would, servers, browsers, stores, mirrors.

Plain functions and context managers (the fixtures are in conftest.py). Each exists once here.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest

from pipeline.core.config import FileSpec
from pipeline.core.data import sha256_file

ROOT = Path(__file__).resolve().parent.parent


VENV_BIN = Path(sys.executable).parent


GIT_ENV = {
    "GIT_AUTHOR_NAME": "tests",
    "GIT_AUTHOR_EMAIL": "tests@example.invalid",
    "GIT_COMMITTER_NAME": "tests",
    "GIT_COMMITTER_EMAIL": "tests@example.invalid",
}


NAMES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def spec_of(path: Path) -> FileSpec:
    """The FileSpec (name, size, SHA-256) that `path` satisfies."""
    return FileSpec(name=path.name, bytes=path.stat().st_size, sha256=sha256_file(path))


def write_processed(folder: Path, splits: dict, classes: list[str]) -> Path:
    """`folder`/data/processed as preprocess writes it, from `splits` (split -> uint8 images of
    (n, height, width, channels) and labels): for tests of what comes after preprocess."""
    from pipeline.core.shards import Writing

    with Writing(folder / "data/processed") as writing:
        entries = {}
        for split, (x, y) in splits.items():
            writer = writing.writer(split, x.shape[1:], len(classes), 128)
            writer.add(x, y)
            entries[split] = writer.close()
        shape = list(next(iter(splits.values()))[0].shape[1:])
        color = "rgb" if shape[-1] == 3 else "grayscale"
        writing.commit(
            {"dataset": "test", "shape": shape, "color": color, "classes": classes,
             "splits": entries, "skipped": []}
        )  # fmt: skip
    return folder / "data/processed"


def run_env(**extra: str) -> dict[str, str]:
    """The environment for commands under test: this venv first on PATH, no MLflow URIs."""
    drop = (
        "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DVC_ROOT",
        "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",  # a test passes its user's
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(GIT_ENV)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def use_store(uri: str) -> None:
    """Point this process's MLflow client and registry at the store a test reads."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def run(cmd: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=run_env(**env), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
            f"stderr:\n{proc.stderr}"
        )
    return proc


def run_stage(module: str, work: Path, *args: str, check: bool = True, **env: str):
    """`python -m pipeline.MODULE ARGS` in the project folder `work`, with this checkout's code."""
    cmd = ["python", "-m", f"pipeline.{module}", *args]
    return run(cmd, work, check=check, PYTHONPATH=str(ROOT), **env)


def copy_project(dest: Path) -> Path:
    """Copy the project's files as git sees them (tracked and untracked-not-ignored) and commit."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "copy of the project"], dest)
    return dest


def assert_complete_child(child, parent_id: str, epochs: int, examples: int = 1000) -> None:
    """A sweep job's run: FINISHED under its parent, with history, scores, model, and figures
    or, where they are on demand, what they are drawn from."""
    import mlflow

    client = mlflow.MlflowClient()
    assert child.info.status == "FINISHED", (
        child.info.status,
        child.data.tags.get("failure_reason"),
    )
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert len(client.get_metric_history(child.info.run_id, "val_accuracy")) == epochs
    for key in ("test_accuracy", "test_loss", "macro_f1", "train_seconds"):
        assert key in child.data.metrics
    assert child.data.params["train.max_examples"] == str(examples)
    figures = {a.path for a in client.list_artifacts(child.info.run_id, "figures")}
    assert "figures/figure_data.npz" in figures
    if child.data.tags["figures"] == "drawn":
        assert "figures/confusion_matrix.png" in figures
    else:
        assert child.data.tags["figures"] == "on demand" and len(figures) == 1, figures
    models = mlflow.search_logged_models(
        experiment_ids=[child.info.experiment_id],
        filter_string=f"source_run_id = '{child.info.run_id}'",
        output_format="list",
    )
    assert len(models) == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    """Until `url` answers; fails with the end of `log` if `process` exits or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{url} exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer in {seconds}s:\n{log.read_text()[-3000:]}")


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's packages


def chromium(width: int = 1400, height: int = 1000):
    """A headless Chromium driven through Debian's chromedriver (nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--window-size={width},{height}",
    ):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@contextmanager
def app_server(*args: str, cwd: Path, log: Path) -> Iterator[str]:
    """`python -m pipeline.app ARGS --port P` in `cwd` until the block ends; yields its URL once
    it answers. What it prints goes to `log`."""
    port = free_port()
    cmd = [sys.executable, "-m", "pipeline.app", *args, "--port", str(port)]
    with serving(cmd, port, "/api/model", log, cwd) as url:
        yield url


@contextmanager
def serving(
    cmd: list[str], port: int, ready: str, log: Path, cwd: Path | None, env: dict | None = None
) -> Iterator[str]:
    """Run the server `cmd` listening on 127.0.0.1:`port` until the block ends; yield its URL
    once `ready` (a path) answers. What it prints goes to `log`."""
    url = f"http://127.0.0.1:{port}"
    # An MLflow server on a database starts a job runner for MLflow's GenAI jobs, which the
    # pipeline has none of: 8 processes, 25 s of CPU time per start.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    with log.open("w") as out:
        process = subprocess.Popen(cmd, cwd=cwd, env=run_env(**env), stdout=out, stderr=out)
    try:
        wait_for(f"{url}{ready}", process, log)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def line(a: tuple[int, int], b: tuple[int, int], n: int = 12) -> list[tuple[int, int]]:
    """`n` + 1 points from `a` to `b`."""
    (ax, ay), (bx, by) = a, b
    return [(round(ax + (bx - ax) * t / n), round(ay + (by - ay) * t / n)) for t in range(n + 1)]


def draw(driver, strokes: list[list[tuple[int, int]]]) -> None:
    """Draw `strokes` (points in the app's 280 x 280 canvas) with the pointer, as a hand would."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "canvas")
    for stroke in strokes:
        actions = ActionChains(driver, duration=10)
        x, y = stroke[0]
        actions.move_to_element_with_offset(canvas, x - 140, y - 140).click_and_hold()
        for nx, ny in stroke[1:]:
            actions.move_by_offset(nx - x, ny - y)
            x, y = nx, ny
        actions.release().perform()


def read_answer(driver, seconds: float = 30) -> str:
    """The digit the app's draw page shows, once it shows one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d) -> str | bool:
        idle = d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle"
        answer = d.find_element(By.ID, "answer").is_displayed()
        return idle and answer and d.find_element(By.ID, "digit").text

    return WebDriverWait(driver, seconds).until(shown)


@contextmanager
def mlflow_server(
    *args: str, log: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[str]:
    """`mlflow ARGS --host 127.0.0.1 --port P` (`server` or `ui`) until the block ends, with
    `env` added to its environment; yields its URL once its health check answers. What it
    prints goes to `log`."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", *args, "--host", "127.0.0.1", "--port", str(port)]
    with serving(cmd, port, "/health", log, cwd, env) as url:
        yield url


def render(digit: np.ndarray, i: int):
    """A test digit as a large dark-on-light picture, off-centre, every other one in colour."""
    from PIL import Image

    ink = Image.fromarray(np.round(255 - digit * 255).astype(np.uint8))
    big = ink.resize((224, 224), Image.Resampling.BILINEAR)
    page = Image.new("L", (400, 300), 255)
    page.paste(big, (20 + (i * 37) % 150, 10 + (i * 53) % 70))
    if i % 2:
        return Image.merge(
            "RGB",
            [
                page.point(lambda v: 40 + v * 0.85),
                page.point(lambda v: 30 + v * 0.8),
                page.point(lambda v: 90 + v * 0.6),
            ],
        )
    return page


@contextmanager
def as_stack_user(env: dict[str, str]) -> Iterator[None]:
    """For the block, this process's MLflow client talks to the server of `env` (a stack's
    exports) as its user."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        use_store(env["MLFLOW_TRACKING_URI"])
        yield


def runs_in(store_uri: str, experiment: str) -> list:
    """Every run of `experiment` in the store at `store_uri`, newest first."""
    import mlflow

    use_store(store_uri)
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


QUICK_SWEEP = ["train.max_examples=1000"]  # what the sweep tests train each job on


def sweep_in(project: Path, experiment: str, *overrides: str, check: bool = True):
    """`python -m pipeline.sweep -m OVERRIDES` in `project`, into `experiment`, on 1,000 digits."""
    args = ["python", "-m", "pipeline.sweep", "-m", *overrides, *QUICK_SWEEP]
    return run([*args, f"tracking.experiment_name={experiment}"], project, check=check)


def sweep_runs_in(project: Path, experiment: str) -> tuple[list, list]:
    """(parent runs, child runs) of `experiment` in the project's own store."""
    return sweep_runs(f"sqlite:///{project}/mlflow.db", experiment)


def parent_artifacts(parent) -> set[str]:
    """The artifacts of a sweep's parent run, and those in its figures/ folder."""
    import mlflow

    client = mlflow.MlflowClient()
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    return top | {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}


def sweep_runs(store_uri: str, experiment: str) -> tuple[list, list]:
    """(parent runs, child runs) of the sweeps of `experiment` in the store at `store_uri`."""
    found = runs_in(store_uri, experiment)
    parents = [r for r in found if r.data.tags.get("sweep") == "parent"]
    return parents, [r for r in found if r not in parents]


def gzip_folder(src: Path, dest: Path, truncate: bool = False) -> Path:
    """`dest` holding each file of `src` gzipped as NAME.gz (cut to a third with `truncate`)."""
    dest.mkdir()
    for path in src.iterdir():
        data = gzip.compress(path.read_bytes())
        (dest / f"{path.name}.gz").write_bytes(data[: len(data) // 3] if truncate else data)
    return dest


class MirrorHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder as a mirror; `mode` decides what goes wrong: "ok", "html" (a page
    instead of the file), "slow" (half the file, then 20 s of silence)."""

    mode = "ok"
    prefix = ""  # a path prefix the mirror's URL has and the folder does not

    def translate_path(self, path: str) -> str:
        return super().translate_path(path.removeprefix(self.prefix))

    def do_GET(self) -> None:  # noqa: N802
        if self.mode == "html":
            body = b"<html><body>Service moved</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.mode == "slow":
            path = Path(self.translate_path(self.path))
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            time.sleep(20)
        else:
            super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def mirror(folder: Path, mode: str = "ok", prefix: str = "") -> Iterator[str]:
    """An HTTP mirror of `folder` on 127.0.0.1 until the block ends; yields its URL."""
    handler = type(f"{mode}Handler", (MirrorHandler,), {"mode": mode, "prefix": prefix})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{prefix}/"
    finally:
        server.shutdown()
        server.server_close()


BROKEN_MIRRORS = ("corrupt-gzip", "bad-status", "cut", "html", "500", "stall", "trickle")


@contextmanager
def broken_mirror(case: str, folder: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that answers every request for a file of `folder` in one
    broken way (one of BROKEN_MIRRORS): a gzip header then garbage, a garbage status line, the
    body cut off halfway, an HTML page, a 500, silence, or 20 bytes a second. Yields its URL."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            request = conn.recv(65536).decode("latin-1")
            name = request.split(" ")[1].lstrip("/") if " " in request else ""
            path = folder / name.removesuffix(".gz")
            body = gzip.compress(path.read_bytes()) if path.is_file() else b""
            head = "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: {}\r\n\r\n"
            try:
                if case == "corrupt-gzip":
                    junk = body[:10] + bytes(range(256)) * 64
                    conn.sendall(head.format(len(junk), "application/gzip").encode() + junk)
                elif case == "bad-status":
                    conn.sendall(b"HELLO THERE\r\n\r\n")
                elif case == "cut":
                    conn.sendall(head.format(len(body), "application/gzip").encode())
                    conn.sendall(body[: len(body) // 2])
                elif case == "html":
                    page = b"<html><body>Moved</body></html>"
                    conn.sendall(head.format(len(page), "text/html").encode() + page)
                elif case == "500":
                    conn.sendall(
                        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
                    )
                elif case == "stall":
                    stop.wait(60)
                elif case == "trickle":
                    conn.sendall(head.format(len(body), "application/gzip").encode())
                    for i in range(0, len(body), 10):
                        if stop.wait(0.5):
                            break
                        conn.sendall(body[i : i + 10])
            except OSError:  # the client gave up
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    finally:
        stop.set()
        server.close()


OXYGEN = Path("/usr/share/icons/oxygen/base")  # Debian's oxygen-icon-theme: real colour PNGs


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """`call()`'s result, or its exception; a deadline that only ends a hung test (a timeout
    that did not work), not a measure of speed: speed is measured in benchmarks/."""
    done: dict[str, Any] = {}

    def target() -> None:
        try:
            done["value"] = call()
        except BaseException as exc:  # re-raised in the test's thread
            done["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s: it hung"
    if "error" in done:
        raise done["error"]
    return done["value"]


def unavailable(reason: str) -> NoReturn:
    """The one place a test gives up on a missing component or power: under CI (.ci/run, which
    installs and runs as root) the test fails, elsewhere it is skipped, each saying `reason`."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; .ci/run provides it, so under CI this is a failure")
    pytest.skip(reason)


def needs(path: Path, package: str) -> None:
    """A test's real component at `path`: missing, `unavailable` (`package` installs it)."""
    if not Path(path).exists():
        unavailable(f"{path} not found (apt-get install {package})")


def oxygen_icons(
    dest: Path, categories: list[str], sizes: list[str], per_size: int | None = None
) -> Path:
    """A folder dataset of Oxygen's icons: one class folder per category, each icon of each size
    copied as `<size>-<name>.png` (the first `per_size` of each, sorted; all with None)."""
    needs(OXYGEN, "oxygen-icon-theme")
    for category in categories:
        (dest / category).mkdir(parents=True, exist_ok=True)
        for size in sizes:
            icons = sorted((OXYGEN / size / category).glob("*.png"))[:per_size]
            for icon in icons:
                shutil.copyfile(icon, dest / category / f"{size}-{icon.name}")
    return dest


def fashion_mirror() -> str | None:
    """A local copy of Fashion-MNIST: FASHION_MNIST_MIRROR, else the shared folder beside the
    checkout, else Debian's dataset-fashion-mnist; None leaves the config's public mirror."""
    for place in (
        os.environ.get("FASHION_MNIST_MIRROR"),
        ROOT.parent / "shared" / "data" / "fashion-mnist",
        Path("/usr/share/datasets/fashion-mnist"),
    ):
        if place and Path(place).is_dir():
            return str(place)
    return None


def started_until(
    cmd: list[str],
    cwd: Path,
    prefix: str,
    stderr: int = subprocess.STDOUT,
    new_session: bool = False,
    **env: str,
) -> tuple[subprocess.Popen, str]:
    """`cmd` started in `cwd` (unbuffered, stderr into stdout unless `stderr` says otherwise;
    in a process group of its own with `new_session`), read until it prints a line starting
    with `prefix`; returns the process and that line."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=run_env(PYTHONUNBUFFERED="1", **env),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=new_session,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return proc, line
    errors = proc.stderr.read() if proc.stderr else ""
    raise AssertionError(f"{cmd[2]} ended before printing {prefix!r}, exit {proc.wait()} {errors}")


@contextmanager
def team_stack(project: Path, *options: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """`python -m pipeline.stack up --port auto OPTIONS` run in `project`, as a user starts it,
    in a folder of its own outside pytest's (PostgreSQL's user must reach it); yields the folder
    and the exports `up` printed. `down` and the folder's removal end the block."""
    import shlex

    folder = Path(tempfile.mkdtemp(prefix="mnist-stack-"))
    stack = [sys.executable, "-m", "pipeline.stack"]
    place = ["--dir", str(folder)]
    try:
        up = run([*stack, "up", *place, "--port", "auto", *options], project, PYTHONPATH=str(ROOT))
        exports = {
            key: shlex.split(value)[0]
            for key, value in re.findall(r"^export (\w+)=(.*)$", up.stdout, re.MULTILINE)
        }
        yield folder, exports
    finally:
        run([*stack, "down", *place], project, check=False, PYTHONPATH=str(ROOT))
        shutil.rmtree(folder, ignore_errors=True)


def child_runs(experiment: str) -> list:
    """The sweep child runs of `experiment` in this process's store ([] before it exists)."""
    import mlflow

    if mlflow.get_experiment_by_name(experiment) is None:
        return []
    found = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    return [r for r in found if r.data.tags.get("sweep") != "parent"]


def sweep_in_background(
    cmd: list[str], project: Path, env: dict[str, str], folder: Path
) -> tuple[subprocess.Popen, Path, Path]:
    """`cmd` started in `project` with `env` added, its output in folder/sweep.out and
    folder/sweep.err; returns the process and those two files."""
    out, errors = folder / "sweep.out", folder / "sweep.err"
    with out.open("w") as stdout, errors.open("w") as stderr:
        process = subprocess.Popen(
            cmd, cwd=project, env=run_env(**env), stdout=stdout, stderr=stderr
        )
    return process, out, errors
