from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pipeline.core import plots


def rendered(fig: Figure, path: Path) -> int:
    fig.savefig(path, dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path.stat().st_size


def captions(fig: Figure) -> list[tuple[str, str]]:
    (ax,) = fig.axes
    return [(t.get_text(), t.get_color()) for t in ax.texts]


def test_showcase_takes_half_mistakes_then_the_first_correct() -> None:
    y_true = np.arange(100) % 10
    y_pred = y_true.copy()
    y_pred[[7, 40, 41, 90]] += 1
    shown = plots.showcase(y_true, y_pred, n=8)
    np.testing.assert_array_equal(shown, [0, 1, 2, 3, 7, 40, 41, 90])
    assert (y_true[shown] != y_pred[shown]).sum() == 4
    few = plots.showcase(y_true, y_pred, n=16)  # only 4 mistakes: the rest correct
    assert len(few) == 16 and (y_true[few] != y_pred[few]).sum() == 4
    assert len(plots.showcase(y_true, y_true, n=8)) == 8  # no mistakes at all


def test_prediction_grid_marks_wrong_predictions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.random((5, 28, 28))
    y_true = np.array([1, 2, 3, 4, 5])
    y_pred = np.array([1, 2, 0, 4, 0])
    fig = plots.prediction_grid(images, y_true, y_pred, cols=4)
    shown = captions(fig)
    assert [text for text, _ in shown] == ["1 (1)", "2 (2)", "0 (3)", "4 (4)", "0 (5)"]
    assert [text for text, colour in shown if colour == plots.WRONG] == ["0 (3)", "0 (5)"]
    mosaic = fig.axes[0].images[0].get_array()
    # Every digit's pixels are somewhere in the tiled image.
    for image in images:
        assert any(
            np.allclose(mosaic[r : r + 28, c : c + 28], image, atol=1e-6)
            for r in range(mosaic.shape[0] - 27)
            for c in range(mosaic.shape[1] - 27)
        )
    assert "2 wrong, 3 right" in fig.get_suptitle()
    assert rendered(fig, tmp_path / "grid.png") > 1000


def test_misclassified_gallery_shows_most_confident_mistakes_first(tmp_path: Path) -> None:
    y_true = np.array([0, 1, 2, 3])
    y_pred = np.array([0, 7, 8, 9])
    confidence = np.array([0.99, 0.6, 0.95, 0.7])
    fig = plots.misclassified_gallery(np.zeros((4, 28, 28)), y_true, y_pred, confidence, limit=2)
    assert captions(fig) == [("8 (2) 0.95", plots.WRONG), ("9 (3) 0.70", plots.WRONG)]
    assert "3 digits, the 2 most confident shown" in fig.get_suptitle()
    assert rendered(fig, tmp_path / "wrong.png") > 1000
    # Only the worst mistakes, with the count of all of them: the same figure.
    worst = plots.worst_mistakes(y_true, y_pred, confidence, limit=2)
    np.testing.assert_array_equal(worst, [2, 3])
    some = plots.misclassified_gallery(
        np.zeros((2, 28, 28)), y_true[worst], y_pred[worst], confidence[worst], mistakes=3
    )
    assert captions(some) == captions(fig)
    assert some.get_suptitle() == fig.get_suptitle()


def test_save_figures_draws_each_one_into_its_file(tmp_path: Path) -> None:
    history = {"loss": [0.5, 0.3], "val_loss": [0.4, 0.35], "accuracy": [0.8, 0.9]}
    history["val_accuracy"] = [0.85, 0.88]
    drawings = {
        "curves.png": (plots.learning_curves, (history,), {}),
        "cm.png": (plots.confusion_heatmap, (np.eye(3, dtype=int) * 5,), {"classes": list("abc")}),
    }
    plots.save_figures(tmp_path / "figures", drawings, dpi=40)
    saved = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert saved == ["cm.png", "curves.png"]
    assert all((tmp_path / "figures" / n).read_bytes()[:4] == b"\x89PNG" for n in saved)


def test_confusion_heatmap_writes_every_count(tmp_path: Path) -> None:
    cm = np.arange(100).reshape(10, 10)
    fig = plots.confusion_heatmap(cm)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert texts == {str(n) for n in range(100)}
    assert rendered(fig, tmp_path / "cm.png") > 1000


def test_learning_curves_plot_train_and_validation(tmp_path: Path) -> None:
    history = {
        "loss": [0.5, 0.3],
        "val_loss": [0.6, 0.4],
        "accuracy": [0.8, 0.9],
        "val_accuracy": [0.7, 0.85],
    }
    fig = plots.learning_curves(history)
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train", "validation"]
    np.testing.assert_allclose(acc_ax.lines[1].get_ydata(), [0.7, 0.85])
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["train", "validation"]
    assert rendered(fig, tmp_path / "curves.png") > 1000


def test_sweep_figures(tmp_path: Path) -> None:
    hidden, epochs = [16, 32, 16, 32], [1, 1, 2, 2]
    accuracy = [0.6, 0.7, 0.8, 0.9]
    lines = plots.sweep_lines(hidden, accuracy, [f"e{e}" for e in epochs])
    (ax,) = lines.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["e1", "e2"]
    np.testing.assert_allclose(np.asarray(ax.lines[1].get_ydata(), float), [0.8, 0.9])
    assert ax.get_xscale() == "log" and not any(c.has_yerr for c in ax.containers)
    heat = plots.sweep_heatmap(hidden, epochs, accuracy)
    assert {t.get_text() for t in heat.axes[0].texts} == {"0.6000", "0.7000", "0.8000", "0.9000"}
    cost = plots.accuracy_vs_seconds([1.0, 2.0, 3.0, 4.0], accuracy, list("abcd"))
    assert [t.get_text() for t in cost.axes[0].texts] == list("abcd")
    for name, fig in {"l": lines, "h": heat, "c": cost}.items():
        assert rendered(fig, tmp_path / f"{name}.png") > 1000


def test_sweep_figures_draw_95_percent_intervals(tmp_path: Path) -> None:
    hidden, epochs = [16, 32, 16, 32], [1, 1, 2, 2]
    mean, ci = [0.6, 0.7, 0.8, 0.9], [0.01, 0.02, 0.03, 0.04]
    lines = plots.sweep_lines(hidden, mean, [f"e{e}" for e in epochs], ci)
    (ax,) = lines.axes
    assert all(c.has_yerr for c in ax.containers) and "95% CI" in ax.get_title()
    heat = plots.sweep_heatmap(hidden, epochs, mean, ci)
    assert "0.9000\n±0.0400" in {t.get_text() for t in heat.axes[0].texts}
    cost = plots.accuracy_vs_seconds([1.0, 2.0, 3.0, 4.0], mean, list("abcd"), ci)
    assert cost.axes[0].containers[0].has_yerr
    for name, fig in {"l": lines, "h": heat, "c": cost}.items():
        assert rendered(fig, tmp_path / f"{name}.png") > 1000


def small_figure_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    probs = rng.dirichlet(np.ones(3), size=60).astype(np.float32)
    cm = np.zeros((3, 3), dtype=np.int64)
    np.add.at(cm, (y, probs.argmax(1)), 1)
    x = rng.integers(0, 256, (60, 28, 28, 1), np.uint8)
    history = {"loss": [1.0, 0.5], "accuracy": [0.5, 0.7], "val_loss": [1.1, 0.6],
               "val_accuracy": [0.4, 0.6]}  # fmt: skip
    return plots.figure_data(x.__getitem__, y, probs, cm, history, ["a", "b", "c"])


def test_figure_data_round_trips_and_draws_every_model_figure(tmp_path: Path) -> None:
    data = small_figure_data()
    plots.save_figure_data(tmp_path / "figure_data.npz", data)
    back = plots.load_figure_data(tmp_path / "figure_data.npz")
    assert set(back) == set(data) and back["classes"].tolist() == ["a", "b", "c"]
    plots.save_figures(tmp_path / "drawn", plots.model_drawings(back), dpi=40)
    for name in plots.MODEL_FIGURES:
        assert (tmp_path / "drawn" / name).read_bytes()[:4] == b"\x89PNG"


def test_figure_data_from_elsewhere_is_checked_before_use(tmp_path: Path) -> None:
    import pytest

    from pipeline.core.errors import DataError

    pickled = tmp_path / "pickled.npz"
    data = small_figure_data() | {"classes": np.array([object()], dtype=object)}
    np.savez(pickled, **data)  # an object array: loading it would unpickle
    notzip = tmp_path / "notzip.npz"
    notzip.write_bytes(b"not a zip file")
    lacking = tmp_path / "lacking.npz"
    np.savez(lacking, **{k: v for k, v in small_figure_data().items() if k != "confusion"})
    for path, says in ((pickled, "not an .npz of plain arrays"),
                       (notzip, "not an .npz of plain arrays"),
                       (lacking, "confusion missing or of the wrong kind")):  # fmt: skip
        with pytest.raises(DataError, match=says):
            plots.load_figure_data(path)
