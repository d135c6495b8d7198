"""Where each stage reads and writes, relative to the project root (dvc.yaml names the same)."""

from pathlib import Path

RAW_DIR = Path("data/raw")
PROCESSED_DIR = Path("data/processed")
MODEL_PATH = Path("models/model.keras")
RUN_FILE = Path("models/run.json")
DATA_REPORT = Path("reports/data.json")
HISTORY_CSV = Path("reports/history.csv")
TRAIN_JSON = Path("reports/train.json")
METRICS_JSON = Path("reports/metrics.json")
PREDICTIONS_CSV = Path("reports/predictions.csv")
FIGURES_DIR = Path("reports/figures")
