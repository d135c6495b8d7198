"""Load test: the web app's /api/predict against `mlflow models serve` on the same champion model.

Both servers run on 127.0.0.1 in a project where `dvc repro` made and registered the champion,
one after the other, each warmed up first. Clients are threads with a kept-alive connection:
8 at once x 50 requests, then 1 x 50. The app gets 140 x 140 PNG uploads of real MNIST test
digits (what a user sends); MLflow's server gets the same digits as ready 28 x 28 tensors in JSON
(it does less work per request). Every app answer is checked against `pipeline.predict --json`
on the same files, and the seconds of one `pipeline.predict` command are timed.

Part of `benchmarks/run.py` (`--only serve` runs this part alone).
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CLIENTS, REQUESTS = 8, 50
BOUNDARY = "benchmark-boundary"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serving(cmd: list[str], cwd: Path, env: dict[str, str], ready: str, log: Path) -> Any:
    """Start `cmd`; return the process once `ready` (a URL) answers."""
    out = log.open("w")
    process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{' '.join(cmd)} exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(ready, timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"{ready} did not answer in 180 s:\n{log.read_text()[-3000:]}")


def digits(project: Path, n: int, folder: Path) -> tuple[list[Path], np.ndarray]:
    """The first `n` test digits as 140 x 140 dark-on-light PNG files, and as 28 x 28 arrays."""
    from PIL import Image

    from pipeline.core.shards import Shards

    x = Shards(project / "data" / "processed", "test").whole(n)[0][..., 0]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(x):
        ink = Image.fromarray(np.round(255 - image * 255).astype(np.uint8))
        path = folder / f"digit-{i:03d}.png"
        ink.resize((140, 140), Image.Resampling.BILINEAR).save(path)
        paths.append(path)
    return paths, x


def _multipart(path: Path) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; '
        f'filename="{path.name}"\r\nContent-Type: image/png\r\n\r\n'
    ).encode()
    return head + path.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode()


def load(
    port: int, path: str, bodies: list[bytes], headers: dict[str, str], clients: int
) -> dict[str, Any]:
    """`clients` threads, each sending every body in `bodies` on its own kept-alive
    connection; requests per second over the whole, latency percentiles, errors, answers."""
    latencies: list[float] = []
    answers: dict[int, Any] = {}
    errors: list[str] = []
    guard = threading.Lock()

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i, body in enumerate(bodies):
            start = time.perf_counter()
            try:
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                with guard:
                    errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            took = time.perf_counter() - start
            with guard:
                if response.status != 200:
                    errors.append(f"{response.status}: {data[:200]!r}")
                    continue
                latencies.append(took)
                if k == 0:
                    answers[i] = json.loads(data)
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "rps": round(len(latencies) / wall, 1),
        "p50_ms": round(1000 * statistics.median(ordered), 1) if ordered else None,
        "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 1) if ordered else None,
        "errors": len(errors),
        "first_errors": errors[:3],
        "answers": answers,
    }


def timed_predict(project: Path, env: dict[str, str], image: Path) -> float:
    """Median seconds of `python -m pipeline.predict IMAGE` over 3 runs, after a first one."""
    command = [sys.executable, "-m", "pipeline.predict", str(image)]
    subprocess.run(command, cwd=project, env=env, check=True, capture_output=True)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(command, cwd=project, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 2)


def measure_serving(project: Path, env: dict[str, str], work: Path) -> dict[str, Any]:
    """The load test's figures (see the module's docstring)."""
    paths, x = digits(project, REQUESTS, work / "digits")
    expected = subprocess.run(
        [sys.executable, "-m", "pipeline.predict", "--json", "--model-uri",
         "models:/mnist-digits@champion", *map(str, paths)],
        cwd=project, env=env, check=True, capture_output=True, text=True,
    ).stdout.splitlines()  # fmt: skip
    expected_answers = [json.loads(line) for line in expected]

    app_port = _free_port()
    app = _serving(
        [sys.executable, "-m", "pipeline.app", "--port", str(app_port)],
        project, env, f"http://127.0.0.1:{app_port}/api/model", work / "app.log",
    )  # fmt: skip
    try:
        bodies = [_multipart(p) for p in paths]
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        load(app_port, "/api/predict", bodies[:10], headers, 2)  # warm-up
        app8 = load(app_port, "/api/predict", bodies, headers, CLIENTS)
        app1 = load(app_port, "/api/predict", bodies, headers, 1)
    finally:
        app.terminate()
        app.wait(30)
    same = sum(
        app1["answers"].get(i, {}).get("top3") == want["top3"]
        and app1["answers"][i]["digit"] == want["digit"]
        for i, want in enumerate(expected_answers)
    )

    serve_port = _free_port()
    serve = _serving(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/mnist-digits@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(serve_port)],
        project, env, f"http://127.0.0.1:{serve_port}/ping", work / "serve.log",
    )  # fmt: skip
    try:
        bodies = [json.dumps({"inputs": image[np.newaxis].tolist()}).encode() for image in x]
        headers = {"Content-Type": "application/json"}
        load(serve_port, "/invocations", bodies[:10], headers, 2)  # warm-up
        serve8 = load(serve_port, "/invocations", bodies, headers, CLIENTS)
    finally:
        serve.terminate()
        serve.wait(30)

    return {
        "app_rps": app8["rps"],
        "app_p50_ms": app8["p50_ms"],
        "app_p95_ms": app8["p95_ms"],
        "app_single_client_p50_ms": app1["p50_ms"],
        "app_errors": app8["errors"] + app1["errors"],
        "app_answers_as_predict": f"{same}/{len(expected_answers)}",
        "mlflow_serve_rps": serve8["rps"],
        "mlflow_serve_p50_ms": serve8["p50_ms"],
        "mlflow_serve_p95_ms": serve8["p95_ms"],
        "mlflow_serve_errors": serve8["errors"],
        "app_vs_mlflow_serve": round(app8["rps"] / serve8["rps"], 2),
        "predict_cli_s": timed_predict(project, env, paths[0]),
        "load_first_errors": app8["first_errors"] + serve8["first_errors"],
    }


def check(results: dict[str, Any], fail: Callable[[str], None]) -> None:
    """Errors or answers unlike `pipeline.predict`'s are failures, not slow figures."""
    if results["app_errors"] or results["mlflow_serve_errors"]:
        fail(f"the load test had errors: {results['load_first_errors']}")
    done, total = results["app_answers_as_predict"].split("/")
    if done != total:
        fail(f"the app answered {done} of {total} digits as `pipeline.predict --json` does")


def main() -> None:  # pragma: no cover - `python benchmarks/serve.py PROJECT` for a quick look
    project = Path(sys.argv[1]).resolve()
    sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "tests")]
    import tempfile

    from helpers import run_env

    with tempfile.TemporaryDirectory() as work:
        print(json.dumps(measure_serving(project, run_env(), Path(work)), indent=2))


if __name__ == "__main__":
    main()
