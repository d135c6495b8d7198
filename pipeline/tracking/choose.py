"""Which model reads pictures, and how, for `pipeline.predict` and the web app.

`choose_model` finds the model a command names (a `.keras` file, the model a run logged, a model
URI, or the registry's champion), loaded safely (tracking/models.py); `Chosen` holds it with what
it is, and turns a picture into its input; `read_digit` and `top3` are the one path from an image
file to an answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pipeline.core import names
from pipeline.core.errors import PipelineError
from pipeline.core.images import (
    FORMATS,
    PictureSettings,
    fit,
    load_image,
    normalize,
    read_picture,
)
from pipeline.core.numpy_model import load_predictor
from pipeline.core.paths import MODEL_PATH, project_root
from pipeline.core.shards import picture_shape


@dataclass(frozen=True)
class Chosen:
    """A model to read digits with, and what it is: `source` (file, run, uri or registry), and
    where known its `uri`, registered `name`, `version`, `alias`, `run_id`, `experiment_id`,
    `val_accuracy` and `test_accuracy`."""

    model: Any
    about: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        """The model's class names in label order (its dataset's `data.classes`)."""
        return self.about.get("classes") or [str(c) for c in range(self.model.output_shape[-1])]

    @property
    def picture_settings(self) -> PictureSettings:
        """How a picture becomes this model's input when it was trained on a folder: the
        model's input size and channels, its dataset's `resize` and `background`."""
        height, width, channels = picture_shape(self.model.input_shape[1:])
        return PictureSettings(
            (height, width),
            "rgb" if channels == 3 else "grayscale",
            self.about.get("resize") or "stretch",
            self.about.get("background") or "white",
        )

    def read(
        self,
        source: Path | BinaryIO,
        name: str,
        max_pixels: int | None = None,
        formats: tuple[str, ...] = FORMATS,
    ) -> np.ndarray:
        """A picture file -> this model's input (float32 0-1, its input shape): for a model of
        a folder dataset it is read as that folder's pictures were (`read_picture`: colour or
        grey, resized as the dataset says); handwriting is cropped and centred as MNIST's
        digits are (`normalize`); another picture of an object is scaled down whole (`fit`)."""
        shape = tuple(self.model.input_shape[1:])
        if self.about.get("format") == "folder":
            picture = read_picture(source, self.picture_settings, name, max_pixels, formats)
            return (picture.astype(np.float32) / np.float32(255)).reshape(shape)
        gray = load_image(source, name, max_pixels, formats)
        side = picture_shape(shape)[:2]
        if self.about.get("handwriting", True):
            return normalize(gray, name, side).reshape(shape)
        return fit(gray, name, side).reshape(shape)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, *input shape) float32 images -> (n, classes) probabilities, one at a time: an
        image's answer never depends on the images it came with (a batch's last bits can), so
        this command and the web app give the same numbers."""
        if len(x) == 0:
            return np.zeros((0, self.model.output_shape[-1]), dtype=np.float32)
        return np.concatenate([self.model.predict_on_batch(x[i : i + 1]) for i in range(len(x))])


def choose_model(
    path: Path | None = None,
    run: str | None = None,
    model_uri: str | None = None,
    champion: bool = False,
) -> Chosen:
    """The model a command names: a `.keras` file, the model `run` logged, a model URI, or
    (with `champion`, when none is named) the registry's champion of the configured
    `tracking.registered_model`; else the project's models/model.keras. It is run by NumPy
    where it can be (core/numpy_model.py: no TensorFlow to import), else by Keras."""
    if path is not None or not (run or model_uri or champion):
        file = Path(path) if path else project_root() / MODEL_PATH
        return Chosen(load_predictor(file), {"source": "file", "path": str(file), **_dataset()})

    from pipeline.core.config import load_params
    from pipeline.tracking import store
    from pipeline.tracking.models import Refused, load_logged

    store.connect(store.configured_uri())
    about: dict[str, Any] = {"source": "uri"}
    if run:
        about = {"source": "run", "run_id": run}
        uri = _run_model_uri(run)
    elif model_uri:
        uri = model_uri
    else:
        name = load_params().tracking.registered_model
        uri = f"models:/{name}@{names.CHAMPION}"
        about = {"source": "registry", "name": name, "alias": names.CHAMPION}
    try:
        model, found = load_logged(uri, reading=True)  # the .keras file alone, digest checked
    except PipelineError as exc:
        if about["source"] != "registry" or isinstance(exc, Refused):
            raise
        raise PipelineError(
            f"{exc} Train one with `uv run dvc repro`, or name a model with --model, --run or "
            "--model-uri."
        ) from exc
    return Chosen(model, {**about, "uri": uri, **found, **_describe(found.get("run_id"))})


def _dataset() -> dict[str, Any]:
    """The project's dataset (params.yaml's `data`): the classes a model file was trained on."""
    from pipeline.core.config import load_params
    from pipeline.core.paths import PARAMS_FILE

    if not (project_root() / PARAMS_FILE).is_file():
        return {}
    data = load_params().data
    return {
        "dataset": data.name,
        "description": data.description,
        "classes": data.class_names,
        "handwriting": data.handwriting,
        "format": data.format,
        "resize": data.resize,
        "background": data.background,
    }


def _describe(run_id: str | None) -> dict[str, Any]:
    """The run that made a model from the store: its name, experiment, dataset, classes and
    accuracies, where the store knows them."""
    import mlflow

    try:
        run = mlflow.MlflowClient().get_run(run_id) if run_id else None
    except mlflow.exceptions.MlflowException:
        run = None
    if run is None:
        return {}
    metrics, tags = run.data.metrics, run.data.tags
    classes = json.loads(tags[names.CLASSES_TAG]) if names.CLASSES_TAG in tags else None
    return {
        "dataset": tags.get(names.DATASET_TAG),
        "description": tags.get(names.DESCRIPTION_TAG),
        "classes": classes,
        "handwriting": tags.get(names.HANDWRITING_TAG, "true") == "true",  # older runs: MNIST
        "format": run.data.params.get("data.format", "idx"),
        "resize": run.data.params.get("data.resize"),
        "background": run.data.params.get("data.background"),
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "val_accuracy": metrics.get(names.VAL_ACCURACY),
        "test_accuracy": metrics.get(names.TEST_ACCURACY),
    }


def _run_model_uri(run_id: str) -> str:
    import mlflow

    models = mlflow.search_logged_models(
        filter_string=f"source_run_id = '{run_id}'",
        experiment_ids=[e.experiment_id for e in mlflow.search_experiments()],
        output_format="list",
    )
    if not models:
        raise PipelineError(
            f"run {run_id!r} logged no model in {mlflow.get_tracking_uri()}; "
            "pick a run with `uv run python -m pipeline.compare`."
        )
    return f"models:/{models[0].model_id}"


def read_digit(
    source: Path | BinaryIO,
    name: str,
    chosen: Chosen,
    max_pixels: int | None = None,
    formats: tuple[str, ...] = FORMATS,
) -> np.ndarray:
    """An image file -> the 0-1 input `chosen`'s model reads: the one path from picture to
    model input, for this command and the web app (see `Chosen.read`)."""
    return chosen.read(source, name, max_pixels, formats)


def top3(probs: np.ndarray, classes: list[str] | None = None) -> list[dict[str, Any]]:
    """The three likeliest classes: label index (`digit`, as MNIST's labels are digits), its
    name (`class`) and probability."""
    best = np.argsort(-probs, kind="stable")[:3]
    return [
        {
            "digit": int(d),
            "class": classes[d] if classes else str(d),
            "probability": round(float(probs[d]), 6),
        }
        for d in best
    ]
