"""Colour pictures end to end, on Debian's Oxygen icons (real colour PNGs with transparency, in
category folders, one tree per size): colour reaches the model, a folder of mixed PNGs and JPEGs
(EXIF-rotated, one CMYK) trains in rgb and the web app reads a colour upload, a streamed run
reproduces bit for bit, and `dvc repro` finishes with less memory than its prepared data."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from helpers import OXYGEN, copy_project, needs, oxygen_icons, run, run_env, use_store
from pipeline.core import images
from pipeline.core.config import params_yaml_text

pytestmark = pytest.mark.slow  # real training on real pictures, dvc, MLflow, a cgroup


def metrics(project: Path) -> dict:
    return json.loads((project / "reports/metrics.json").read_text())


def exp_run(project: Path, folder: Path, *settings: str) -> subprocess.CompletedProcess:
    sets = [x for s in ("data=folder", f"data.path={folder}", *settings) for x in ("-S", s)]
    return run(["dvc", "exp", "run", *sets], project)


def test_colour_reaches_the_model_and_grayscale_cannot_see_it(tmp_path: Path) -> None:
    """400 Oxygen icon shapes (32 x 32), each drawn once in red (255, 0, 0) and once in green
    (0, 130, 0) on transparency: two classes that differ only by hue. Both colours have the same
    grey level (Pillow's luma: 76), so in grayscale each red picture is its green twin, pixel for
    pixel. An rgb model learns them; a grayscale one cannot beat a coin (its bound: chance plus
    three standard deviations of a coin's accuracy on the 160 test pictures)."""
    needs(OXYGEN, "oxygen-icon-theme")
    icons = sorted((OXYGEN / "32x32" / "actions").glob("*.png"))[:400]
    assert len(icons) == 400
    root = tmp_path / "hues"
    for name, colour in (("green", (0, 130, 0)), ("red", (255, 0, 0))):
        (root / name).mkdir(parents=True)
        for icon in icons:
            shape = np.asarray(Image.open(icon).convert("RGBA"))[..., 3] > 127
            pixels = np.zeros((*shape.shape, 4), np.uint8)
            pixels[shape] = (*colour, 255)
            Image.fromarray(pixels, "RGBA").save(root / name / icon.name)
    grey = {
        c: Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0))
        for c in ("#ff0000", "#008200")
    }
    assert grey["#ff0000"] == grey["#008200"] == 76

    project = copy_project(tmp_path / "project")
    common = ("data.image_size=[32,32]", "train.epochs=20")
    proc = exp_run(project, root, *common)
    assert "color rgb (800 of 800 pictures have colour" in proc.stdout, proc.stdout
    rgb = metrics(project)["test_accuracy"]
    exp_run(project, root, *common, "data.color=grayscale")
    test = json.loads((project / "reports/data.json").read_text())["test"]
    assert test["examples"] == 160 and set(test["per_class"].values()) == {80}
    grayscale = metrics(project)["test_accuracy"]
    print(f"hue-only folder: rgb {rgb:.4f}, grayscale {grayscale:.4f}")
    assert rgb >= 0.95, rgb
    assert grayscale <= 0.5 + 3 * (0.25 / 160) ** 0.5, grayscale


def photo_folder(root: Path) -> Path:
    """Oxygen's places, devices and emotes icons at five sizes (16 to 128 pixels, PNGs with
    transparency), and as photos would come: every fourth 48-pixel icon a JPEG stored turned on
    its side with the EXIF orientation that turns it back, and one CMYK JPEG."""
    oxygen_icons(
        root, ["devices", "emotes", "places"], ["16x16", "22x22", "48x48", "64x64", "128x128"]
    )
    for category in ("devices", "emotes", "places"):
        for k, icon in enumerate(sorted((root / category).glob("48x48-*.png"))):
            if k % 4:
                continue
            upright = Image.open(icon).convert("RGBA")
            paper = Image.new("RGBA", upright.size, "white")
            flat = Image.alpha_composite(paper, upright).convert("RGB")
            exif = Image.Exif()
            exif[images.ORIENTATION] = 6  # stored turned; viewers turn it 90 degrees clockwise
            flat.transpose(Image.Transpose.ROTATE_90).save(
                icon.with_suffix(".jpg"), quality=92, exif=exif
            )
            icon.unlink()
    cmyk = next(iter(sorted((root / "places").glob("64x64-*.png"))))
    Image.open(cmyk).convert("RGB").convert("CMYK").save(cmyk.with_suffix(".jpg"), quality=92)
    cmyk.unlink()
    return root


def test_a_colour_folder_trains_in_rgb_and_the_app_reads_a_colour_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = photo_folder(tmp_path / "icons")
    jpegs = sorted(root.rglob("*.jpg"))
    assert len(jpegs) > 10 and sum(Image.open(p).mode == "CMYK" for p in jpegs) == 1
    project = copy_project(tmp_path / "project")
    settings = ("data.image_size=[32,32]", "model=cnn", "train.epochs=10")
    proc = exp_run(project, root, *settings)
    assert "fetch: color rgb (" in proc.stdout, proc.stdout
    manifest = json.loads((project / "data/processed/manifest.json").read_text())
    assert manifest["shape"] == [32, 32, 3] and manifest["classes"] == [
        "devices",
        "emotes",
        "places",
    ]
    colour = metrics(project)["test_accuracy"]
    exp_run(project, root, *settings, "data.color=grayscale")
    grey = metrics(project)["test_accuracy"]
    print(f"oxygen devices/emotes/places, CNN 10 epochs: rgb {colour:.4f}, grayscale {grey:.4f}")
    assert colour > 0.75, colour  # three classes: chance is about 0.45 (the largest class)

    # The rgb model, registered, reads a colour upload in the app: in colour, by class name.
    store = f"sqlite:///{project}/mlflow.db"
    use_store(store)
    client = mlflow.MlflowClient()
    versions = client.search_model_versions("name = 'folder-images'")
    colour_version = next(
        v for v in versions if client.get_run(v.run_id).data.params["data.color"] == "None"
    )
    from fastapi.testclient import TestClient

    from pipeline.app.server import create_app
    from pipeline.tracking.choose import choose_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(project)
    chosen = choose_model(model_uri=f"models:/folder-images/{colour_version.version}")
    assert chosen.model.input_shape == (None, 32, 32, 3)
    upload = io.BytesIO()
    Image.open(next(iter(sorted((OXYGEN / "32x32" / "emotes").glob("*.png"))))).save(upload, "PNG")
    with TestClient(create_app(chosen, store)) as app:
        page = app.get("/").text
        assert "32 × 32 colour pictures" in page, page
        answer = app.post(
            "/api/predict", files={"image": ("face.png", upload.getvalue(), "image/png")}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
    assert body["classes"] == ["devices", "emotes", "places"] and body["class"] in body["classes"]
    seen = Image.open(io.BytesIO(base64.b64decode(body["input"].split(",", 1)[1])))
    assert seen.mode == "RGB" and seen.size == (32, 32)
    assert len(set(seen.getdata())) > 10  # a picture in colour, not grey levels

    # pipeline.predict reads it the same way (the NumPy path: no TensorFlow) and saves it.
    picture = tmp_path / "face.png"
    picture.write_bytes(upload.getvalue())
    uri = f"models:/folder-images/{colour_version.version}"
    out = run(
        ["python", "-m", "pipeline.predict", "--json", "--model-uri", uri,
         "--save-normalized", str(tmp_path / "seen"), str(picture)],
        project, MLFLOW_TRACKING_URI=store,
    ).stdout  # fmt: skip
    answer = json.loads(out.splitlines()[-1])
    assert answer["class"] == body["class"] and answer["top3"][0] == body["top3"][0]
    saved = Image.open(tmp_path / "seen" / "face.png")
    assert saved.mode == "RGB" and list(saved.getdata()) == list(seen.getdata())


def test_a_streamed_run_reproduces_bit_for_bit(tmp_path: Path) -> None:
    root = oxygen_icons(tmp_path / "icons", ["devices", "places"], ["32x32", "48x48"])
    project = copy_project(tmp_path / "project")
    overrides = [
        "data=folder", f"data.path={root}", "data.image_size=[32,32]",
        "train.in_memory_mb=0", "train.epochs=2", "train.shuffle_buffer_mb=1",
    ]  # fmt: skip
    (project / "params.yaml").write_text(params_yaml_text(overrides))
    run(["git", "commit", "-qam", "a streamed run"], project)
    run(["dvc", "repro"], project)
    run_id = json.loads((project / "models/run.json").read_text())["run_id"]
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.reproduce", run_id, "--current-env"],
        cwd=project, env=run_env(MLFLOW_TRACKING_URI=f"sqlite:///{project}/mlflow.db"),
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reproduced: bit for bit." in proc.stdout, proc.stdout
    weights = next(line for line in proc.stdout.splitlines() if line.startswith("weights_sha256"))
    assert weights.endswith("identical"), weights


CGROUP = Path("/sys/fs/cgroup/memory")


def test_dvc_repro_finishes_with_less_memory_than_its_prepared_data(tmp_path: Path) -> None:
    """Every Oxygen icon (8,813, 16 to 256 pixels) at 320 x 320 in colour: 2.6 GB prepared. The
    whole `dvc repro` (fetch, preprocess, training streamed, evaluation, registration) runs in a
    cgroup v1 memory limit of 1.6 GB, no swap, and finishes."""
    needs(CGROUP / "memory.limit_in_bytes", "a cgroup v1 memory controller")
    sizes = sorted(p.name for p in OXYGEN.iterdir() if p.is_dir()) if OXYGEN.is_dir() else []
    categories = sorted({c.name for size in sizes for c in (OXYGEN / size).iterdir()})
    root = oxygen_icons(tmp_path / "icons", categories, sizes)
    project = copy_project(tmp_path / "project")
    overrides = [
        "data=folder", f"data.path={root}", "data.image_size=[320,320]", "model.hidden_units=16",
        "train.epochs=1", "train.learning_rate=0.0001", "train.in_memory_mb=256",
    ]  # fmt: skip
    (project / "params.yaml").write_text(params_yaml_text(overrides))
    limit = 1600 << 20
    group = CGROUP / f"pipeline-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
        if (group / "memory.memsw.limit_in_bytes").exists():
            (group / "memory.memsw.limit_in_bytes").write_text(str(limit))  # no swap either
        enter = f"echo $$ > {group}/cgroup.procs && exec {sys.executable} -m dvc repro"
        proc = subprocess.run(["sh", "-c", enter], cwd=project, env=run_env(),
                              capture_output=True, text=True)  # fmt: skip
        oom = (group / "memory.oom_control").read_text()
        peak = int((group / "memory.max_usage_in_bytes").read_text())
    finally:
        for pid in (group / "cgroup.procs").read_text().split():  # none should be left
            (CGROUP / "cgroup.procs").write_text(pid)
        group.rmdir()
    assert proc.returncode == 0 and "oom_kill 0" in oom, proc.stdout[-2000:] + proc.stderr + oom
    prepared = sum(p.stat().st_size for p in (project / "data/processed").iterdir())
    gib = 2**30
    print(f"prepared {prepared / gib:.2f} GiB, limit {limit / gib:.2f}, peak {peak / gib:.2f}")
    assert prepared > 1.5 * limit
    assert peak <= limit
    assert "train:" in proc.stdout and "evaluate: test_accuracy" in proc.stdout
