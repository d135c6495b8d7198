"""Where each stage reads and writes, relative to the project root (dvc.yaml names the same)."""

from pathlib import Path

RAW_DIR = Path("data/raw")
PROCESSED_DIR = Path("data/processed")
MODEL_PATH = Path("models/model.keras")
RUN_FILE = Path("models/run.json")
REPORTS_DIR = Path("reports")
DATA_REPORT = REPORTS_DIR / "data.json"
HISTORY_CSV = REPORTS_DIR / "history.csv"
TRAIN_JSON = REPORTS_DIR / "train.json"
# evaluate writes these three under a reports folder: REPORTS_DIR, or a sweep job's own folder
METRICS_JSON = REPORTS_DIR / "metrics.json"
PREDICTIONS_CSV = REPORTS_DIR / "predictions.csv"
FIGURES_DIR = REPORTS_DIR / "figures"
