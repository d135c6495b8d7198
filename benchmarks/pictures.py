"""Benchmark: a folder of colour pictures into training, at the speed of the decoder and in memory
that does not grow with the dataset.

On Debian's Oxygen icons (`oxygen-icon-theme`: 8,813 colour PNGs with transparency, 8 to 256
pixels, in category folders), at 64 x 64 RGB, in one run on one machine:

  (p1) one core's rate of reading, decoding and resizing the icons (`read_picture`, PIL): the
       decoder's limit;
  (p2) the preprocess stage's pictures per second on a 40,000-picture folder (the icons again
       under other names: hard links, the same bytes), against cores x (p1): target >= 0.8;
  (p3) the input pipeline alone (a streamed epoch of that folder's training split through
       tf.data, nothing trained), against what the CNN consumes when it trains on the same
       shards (training and validation examples per second of an epoch): target >= 3;
  (p4) the train stage's peak RSS, streamed (`train.in_memory_mb=0`, 1 epoch of the default
       MLP), at 10,000, 40,000 and 160,000 pictures: the largest over the smallest, target
       <= 1.1.

Writes `benchmarks/pictures.json` and its table into docs/benchmarks.md. About 6 minutes on 2
cores. Command: `uv run python benchmarks/pictures.py`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

from run import DOC, machine, taken, timed  # noqa: E402

from helpers import OXYGEN, copy_project, run_env  # noqa: E402

RESULTS = ROOT / "benchmarks" / "pictures.json"
BEGIN, END = "<!-- pictures: written by benchmarks/pictures.py -->", "<!-- /pictures -->"
SIZE = [64, 64]
SIZES = (10_000, 40_000, 160_000)
TARGETS = {  # key: (what it measures, target, True when higher is better)
    "preprocess_vs_cores": ("(p2) preprocess pictures/s / (cores x one core's rate)", 0.8, True),
    "pipeline_vs_cnn": ("(p3) input pipeline examples/s / CNN's examples/s", 3.0, True),
    "rss_largest_over_smallest": ("(p4) train peak RSS, 160k / 10k pictures", 1.1, False),
}
STREAM_EPOCH = """
import json, sys, time
from pathlib import Path
from pipeline.core.data import prepared
from pipeline.core.streaming import Streamed
from pipeline.core.training import set_determinism
set_determinism(0, 2, 2)
split = Streamed(prepared(Path.cwd(), "train"))
rates = []
for _ in range(2):
    began, n = time.perf_counter(), 0
    for x, y in split.epoch(32, 64 << 20):
        n += len(y)
    rates.append(n / (time.perf_counter() - began))
print(json.dumps({"examples": n, "rates": rates}))
"""


def icons() -> list[Path]:
    if not OXYGEN.is_dir():
        sys.exit(f"error: {OXYGEN} not found; apt-get install oxygen-icon-theme")
    return sorted(OXYGEN.glob("*/*/*.png"))


def folder_of(dest: Path, icons: list[Path], n: int) -> Path:
    """`n` pictures in category folders: the icons, then again under other names."""
    for k in range(n):
        icon = icons[k % len(icons)]
        size, category = icon.parts[-3], icon.parts[-2]
        path = dest / category / f"{k // len(icons)}-{size}-{icon.name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(icon, path)
        except OSError:
            shutil.copyfile(icon, path)
    return dest


def one_core_rate(files: list[Path]) -> float:
    from pipeline.core.images import PictureSettings, read_picture

    settings = PictureSettings(tuple(SIZE), "rgb")
    began = time.perf_counter()
    for path in files:
        read_picture(io.BytesIO(path.read_bytes()), settings)
    return len(files) / (time.perf_counter() - began)


def project_for(work: Path, name: str, folder: Path, *overrides: str) -> Path:
    from pipeline.core.config import params_yaml_text

    project = copy_project(work / name)
    settings = [f"data.path={folder}", f"data.image_size=[{SIZE[0]},{SIZE[1]}]", *overrides]
    (project / "params.yaml").write_text(params_yaml_text(["data=folder", *settings]))
    return project


def measure(work: Path) -> dict[str, Any]:
    py, env = sys.executable, run_env()
    found = icons()
    print(f"(p1) one core, {len(found)} icons ...", flush=True)
    single = one_core_rate(found)
    cores = os.cpu_count() or 1
    results: dict[str, Any] = {"icons": len(found), "one_core_pictures_per_s": round(single)}
    rss = {}
    for n in SIZES:
        folder = folder_of(work / f"pictures-{n}", found, n)
        stream = ("train.in_memory_mb=0", "train.epochs=1")
        project = project_for(work, f"project-{n}", folder, *stream)
        print(f"{n} pictures: fetch, preprocess, train ...", flush=True)
        timed([py, "-m", "pipeline.fetch"], project, env)
        seconds, _, _ = timed([py, "-m", "pipeline.preprocess"], project, env)
        prepared = sum(p.stat().st_size for p in (project / "data/processed").iterdir())
        _, rss[n], _ = timed([py, "-m", "pipeline.train"], project, env)
        results[f"prepared_mb_{n}"] = round(prepared / 2**20)
        results[f"preprocess_s_{n}"] = round(seconds, 2)
        if n == 40_000:
            rate = n / seconds
            results["preprocess_pictures_per_s"] = round(rate)
            results["preprocess_vs_cores"] = round(rate / (cores * single), 2)
            print("(p3) the input pipeline alone, then the CNN ...", flush=True)
            _, _, out = timed([py, "-c", STREAM_EPOCH], project, env)
            alone = json.loads(out.strip().splitlines()[-1])
            cnn = project_for(work, "project-cnn", folder, *stream, "model=cnn")
            shutil.copytree(project / "data", cnn / "data")  # the same prepared data
            timed([py, "-m", "pipeline.train"], cnn, env)
            history = (cnn / "reports/history.csv").read_text().splitlines()
            epoch = float(history[1].split(",")[history[0].split(",").index("epoch_seconds")])
            counts = json.loads((cnn / "reports/data.json").read_text())
            fed = counts["train"]["examples"] + counts["val"]["examples"]
            results["pipeline_examples_per_s"] = round(min(alone["rates"]))
            results["cnn_examples_per_s"] = round(fed / epoch)
            results["pipeline_vs_cnn"] = round(min(alone["rates"]) / (fed / epoch), 1)
        shutil.rmtree(folder)
    results["train_peak_rss_mb"] = {str(n): rss[n] for n in SIZES}
    results["rss_largest_over_smallest"] = round(rss[SIZES[-1]] / rss[SIZES[0]], 3)
    return results


def table(results: dict[str, Any]) -> str:
    rows = ["| measure | value | target | met |", "|---|---:|---:|:---:|"]
    for key, (label, target, higher) in TARGETS.items():
        value = results[key]
        met = value >= target if higher else value <= target
        rows.append(
            f"| {label} | {value} | {'>=' if higher else '<='} {target} | "
            f"{'yes' if met else 'NO'} |"
        )
    rss = results["train_peak_rss_mb"]
    rows += [
        "",
        f"(p1) one core: {results['one_core_pictures_per_s']} pictures/s (read, decode, resize "
        f"to {SIZE[0]} x {SIZE[1]} RGB). (p2) preprocess: "
        f"{results['preprocess_pictures_per_s']} pictures/s on 40,000 pictures "
        f"({results['preprocess_s_40000']} s, command start included). (p3) the input "
        f"pipeline alone: {results['pipeline_examples_per_s']} examples/s; the CNN trains on "
        f"{results['cnn_examples_per_s']} a second. (p4) train's peak RSS, streamed: "
        + ", ".join(
            f"{int(n):,} pictures ({results[f'prepared_mb_{n}']} MB prepared) {mb} MB"
            for n, mb in rss.items()
        )
        + ".",
    ]
    return "\n".join(rows)


def write_doc(results: dict[str, Any]) -> None:
    text = DOC.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        sys.exit(f"error: {DOC} lacks the markers {BEGIN} and {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    block = f"Taken {results['taken']}.\n\n{table(results)}\n"
    DOC.write_text(f"{head}{BEGIN}\n{block}{END}{tail}", encoding="utf-8")


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    with tempfile.TemporaryDirectory(prefix="mnist-pictures-") as work:
        results = measure(Path(work))
    results["taken"] = taken(machine())
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    write_doc(results)
    print(table(results))
    print(f"\nwrote {RESULTS.relative_to(ROOT)} and {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
