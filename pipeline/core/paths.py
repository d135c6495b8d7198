"""Where things are: the project root, and what each stage reads and writes below it.

The root is the current directory: DVC runs every stage there (a queued experiment in its
temporary copy), and commands are run from the project folder. A sweep's jobs take the root their
sweep was launched from, wherever a launcher runs them. Everything below is relative to the root,
as in dvc.yaml. (The MLflow store has a location of its own: see tracking/store.py.)
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # pipeline/
CONF_DIR = PACKAGE_DIR.parent / "conf"  # code, so it sits beside the package it configures


def project_root() -> Path:
    """The project the stages, sweeps and commands work in: the current directory."""
    return Path.cwd().resolve()


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
