"""Read digits, or a dataset's classes, from real images: photos, scans, drawings, any size.

Inputs: image files (PNG, JPEG, BMP, GIF, TIFF or WebP); a model: `--model PATH` (default
models/model.keras), `--run RUN_ID` (the model that run logged) or `--model-uri URI`
(models:/NAME@ALIAS). A model from the store is loaded only if its folder holds nothing but
the `.keras` file (see tracking/models.py) and that file has the digest its run recorded.
Outputs: per image the digit and the top-3 probabilities; `--json` prints one JSON object per
line; `--save-normalized DIR` writes the images the model was fed (28x28 for MNIST; in colour
for a colour model). A file that is not an image, unreadable or blank gets an error, the others
are still predicted, and the exit status is 1.
Command: `uv run python -m pipeline.predict IMAGE [IMAGE ...]`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataError, PipelineError, command_parser, run_cli
from pipeline.core.images import save_png
from pipeline.core.paths import MODEL_PATH
from pipeline.tracking.choose import choose_model, read_digit, top3


def main(argv: list[str]) -> None:
    parser = command_parser("predict", __doc__)
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help=f"a .keras file (default {MODEL_PATH})")
    source.add_argument("--run", metavar="RUN_ID", help="the model an MLflow run logged")
    source.add_argument("--model-uri", metavar="URI", help="e.g. models:/mnist-digits@champion")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--save-normalized", type=Path, metavar="DIR")
    args = parser.parse_args(argv)

    inputs, failed = {}, 0
    present = [path for path in args.images if path.is_file()]
    chosen = choose_model(args.model, args.run, args.model_uri) if present else None
    for path in args.images:
        try:
            if chosen is None:
                raise DataError(f"{path}: no such file.")
            inputs[path] = read_digit(path, str(path), chosen)
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    if inputs:
        probs = chosen.predict(np.stack(list(inputs.values())).astype(np.float32))
        for (path, image), p in zip(inputs.items(), probs, strict=True):
            best = top3(p, chosen.classes)
            if args.save_normalized:
                save_png(image, args.save_normalized / f"{path.stem}.png")
            if args.json:
                answer = {"digit": best[0]["digit"], "class": best[0]["class"], "top3": best}
                print(json.dumps({"path": str(path), **answer}))
            else:
                ranked = ", ".join(f"{b['class']} {b['probability']:.3f}" for b in best)
                print(f"{path}: {best[0]['class']}  ({ranked})")
    if failed:
        raise PipelineError(f"{failed} of {len(args.images)} images could not be read.")


def cli() -> None:
    run_cli(main, sys.argv[1:], skip_teardown=True)  # answers printed: no TensorFlow teardown


if __name__ == "__main__":
    cli()
