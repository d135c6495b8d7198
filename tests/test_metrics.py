import numpy as np
import pytest

from pipeline.core.metrics import classification_report, confusion_matrix, cross_entropy


def one_hot_probs(pred: list[int], confidence: float = 0.91) -> np.ndarray:
    probs = np.full((len(pred), 10), (1 - confidence) / 9)
    probs[np.arange(len(pred)), pred] = confidence
    return probs


def test_confusion_matrix_counts_true_rows_predicted_columns() -> None:
    cm = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 10)
    assert cm.shape == (10, 10) and cm.sum() == 4
    assert (cm[0, 0], cm[0, 1], cm[1, 1], cm[2, 1]) == (1, 1, 1, 1)


def test_report_matches_hand_computation() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = [0, 1, 1, 1, 2, 0]
    report = classification_report(y_true, one_hot_probs(y_pred))
    assert report["test_accuracy"] == pytest.approx(4 / 6)
    c0 = report["per_class"]["0"]
    assert (c0["precision"], c0["recall"], c0["support"]) == (0.5, 0.5, 2)
    c1 = report["per_class"]["1"]
    assert c1["precision"] == pytest.approx(2 / 3) and c1["recall"] == 1.0
    assert c1["f1"] == pytest.approx(0.8)
    assert report["per_class"]["2"]["f1"] == pytest.approx(2 / 3)
    # Classes with no examples and no predictions score 0, as scikit-learn's zero_division=0.
    assert report["per_class"]["7"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 10)
    assert report["test_loss"] == pytest.approx(cross_entropy(y_true, one_hot_probs(y_pred)))


def test_cross_entropy_is_clipped_like_keras() -> None:
    y = np.array([3])
    assert cross_entropy(y, one_hot_probs([3], confidence=1.0)) == pytest.approx(0.0)
    assert cross_entropy(y, one_hot_probs([4], confidence=1.0)) == pytest.approx(-np.log(1e-7))
