"""Classification metrics from labels and predicted probabilities (NumPy), and the paired test
that compares two models on the same examples (SciPy)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.names import MACRO_F1, TEST_ACCURACY, TEST_LOSS

EPSILON = 1e-7  # Keras clips probabilities the same way in its cross-entropy


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def cross_entropy(y_true: np.ndarray, probs: np.ndarray) -> float:
    picked = probs[np.arange(len(y_true)), y_true]
    return float(-np.mean(np.log(np.clip(picked, EPSILON, 1.0))))


def classification_report(y_true: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """test_accuracy, test_loss, macro_f1 and per-class precision, recall, F1 and support."""
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, probs.shape[1])
    tp = np.diag(cm).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.nan_to_num(tp / cm.sum(axis=0))
        recall = np.nan_to_num(tp / cm.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return {
        TEST_ACCURACY: float(tp.sum() / cm.sum()),
        TEST_LOSS: cross_entropy(y_true, probs),
        MACRO_F1: float(f1.mean()),
        "per_class": {
            str(c): {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(cm[c].sum()),
            }
            for c in range(probs.shape[1])
        },
    }


def mcnemar_greater(a_right: np.ndarray, b_right: np.ndarray) -> tuple[int, int, float]:
    """Exact one-sided McNemar test that model A is more often right than model B on the same
    examples (per-example correctness, boolean arrays): of the examples exactly one of them gets
    right, A's share is binomial(n, 1/2) when they are equally good. Returns (examples only A
    gets right, only B gets right, p-value); p is 1 when they never disagree."""
    from scipy.stats import binomtest

    only_a = int(np.sum(a_right & ~b_right))
    only_b = int(np.sum(~a_right & b_right))
    if only_a + only_b == 0:
        return only_a, only_b, 1.0
    return only_a, only_b, float(binomtest(only_a, only_a + only_b, 0.5, "greater").pvalue)
