"""Read digits from real images: photos, scans, drawings, any size, either polarity.

Inputs: image files (PNG, JPEG, ...); a model: `--model PATH` (default models/model.keras),
`--run RUN_ID` (the model that run logged) or `--model-uri URI` (models:/NAME@ALIAS).
Outputs: per image the digit and the top-3 probabilities; `--json` prints one JSON object per
line; `--save-normalized DIR` writes the 28x28 images the model was fed. A file that is not an
image, unreadable or blank gets an error, the others are still predicted, and the exit status is 1.
Command: `uv run python -m pipeline.predict IMAGE [IMAGE ...]`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.console import load_keras
from pipeline.errors import DataError, PipelineError, run_cli
from pipeline.images import load_image, normalize, save_png
from pipeline.paths import MODEL_PATH, project_root


def load_predictor(args: argparse.Namespace) -> Callable[[np.ndarray], np.ndarray]:
    """A function from (n, 28, 28) float32 images to (n, 10) probabilities."""
    if args.model_uri or args.run:
        load_keras()
        import mlflow

        from pipeline import tracking

        tracking.connect(tracking.configured_uri())
        uri = args.model_uri or _run_model_uri(args.run)
        try:
            model = mlflow.tensorflow.load_model(uri)  # the Keras model, loaded in safe mode
        except mlflow.exceptions.MlflowException as exc:
            raise PipelineError(f"cannot load model {uri}: {exc.message}") from exc
    else:
        load_keras()
        from pipeline.model import load_model

        model = load_model(args.model if args.model else project_root() / MODEL_PATH)
    return lambda x: model.predict(x, verbose=0)


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


def top3(probs: np.ndarray) -> list[dict[str, float]]:
    best = np.argsort(-probs, kind="stable")[:3]
    return [{"digit": int(d), "probability": round(float(probs[d]), 6)} for d in best]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help=f"a .keras file (default {MODEL_PATH})")
    source.add_argument("--run", metavar="RUN_ID", help="the model an MLflow run logged")
    source.add_argument("--model-uri", metavar="URI", help="e.g. models:/mnist-digits@champion")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--save-normalized", type=Path, metavar="DIR")
    args = parser.parse_args(argv)

    inputs, failed = {}, 0
    for path in args.images:
        try:
            inputs[path] = normalize(load_image(path), str(path))
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    if inputs:
        predict = load_predictor(args)
        probs = predict(np.stack(list(inputs.values())).astype(np.float32))
        for (path, image), p in zip(inputs.items(), probs, strict=True):
            best = top3(p)
            if args.save_normalized:
                save_png(image, args.save_normalized / f"{path.stem}.png")
            if args.json:
                print(json.dumps({"path": str(path), "digit": best[0]["digit"], "top3": best}))
            else:
                ranked = ", ".join(f"{b['digit']} {b['probability']:.3f}" for b in best)
                print(f"{path}: {best[0]['digit']}  ({ranked})")
    if failed:
        raise PipelineError(f"{failed} of {len(args.images)} images could not be read.")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
