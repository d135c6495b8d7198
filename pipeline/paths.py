"""Where things are: the project root, and what each stage reads and writes below it.

The root is DVC_ROOT when DVC sets it (also for a queued experiment run in a temporary copy),
else the folder holding this package. Everything below is relative to the root, as in dvc.yaml.
"""

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = PACKAGE_DIR.parent / "conf"  # code, so it sits beside the package it configures


def project_root() -> Path:
    """The project the stages, sweeps and commands work in."""
    return Path(os.environ.get("DVC_ROOT") or PACKAGE_DIR.parent).resolve()


PARAMS_FILE = Path("params.yaml")
RAW_DIR = Path("data/raw")
PROCESSED_DIR = Path("data/processed")
MODELS_DIR = Path("models")
MODEL_PATH = MODELS_DIR / "model.keras"
RUN_FILE = MODELS_DIR / "run.json"
# The files an experiment writes below its output folder: the project root for `dvc repro`,
# a job's own folder in a sweep.
REPORTS_DIR = Path("reports")
DATA_REPORT = REPORTS_DIR / "data.json"
HISTORY_CSV = REPORTS_DIR / "history.csv"
TRAIN_JSON = REPORTS_DIR / "train.json"
METRICS_JSON = REPORTS_DIR / "metrics.json"
PREDICTIONS_CSV = REPORTS_DIR / "predictions.csv"
FIGURES_DIR = REPORTS_DIR / "figures"
