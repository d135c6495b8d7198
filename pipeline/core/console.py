"""Quiet by default: the console shows the pipeline's own lines, Keras's epoch lines and the final
tables, not the start-up chatter of TensorFlow (absl, its C++ logging), MLflow's INFO logging or
progress bars. `PIPELINE_VERBOSE=1` in the environment brings all of it back.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

VERBOSE_ENV = "PIPELINE_VERBOSE"
# MLflow warns about this on every model it logs: the project's environment comes from uv.lock.
NOISE = ("Failed to resolve installed pip version",)
UNUSED_BY_KERAS = ("sklearn", "matplotlib")  # what Keras imports where it can, for features unused


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in NOISE)


def quiet() -> None:
    """Turn the chatter down for this process and the processes it starts (unless verbose)."""
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # read by TensorFlow when it loads
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read by MLflow when it loads
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # per download
    for name in ("mlflow", "alembic", "absl"):  # absl: where Keras sends its progress bars
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        logger.addFilter(_DropNoise())
    logging.getLogger("mlflow.utils.environment").addFilter(_DropNoise())


@contextmanager
def _stderr_muted() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null: C++ code writes there, whatever Python says."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def load_keras() -> ModuleType:
    """Import Keras (and TensorFlow), without the lines TensorFlow's C++ core prints while it
    loads (before any log setting applies), and with Keras's progress bars off."""
    quiet()
    # Keras imports scikit-learn (0.7 s here) only for its scikit-learn wrappers and matplotlib
    # (0.45 s) only for its image galleries, none of which is used here: where they have not
    # been imported yet, Keras is told they are absent (it imports both only if it can).
    blocked = [name for name in UNUSED_BY_KERAS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        return _import_keras()
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]  # later imports work as usual


def _import_keras() -> ModuleType:
    if verbose():
        import keras

        return keras
    with _stderr_muted():
        import keras
        import tensorflow  # noqa: F401  (its start-up lines are what is muted)
    keras.utils.disable_interactive_logging()
    # Not for users: tf.function's advice on retracing (a model predicting splits of several
    # sizes, as evaluate does, retraces its prediction step).
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return keras
