"""Figures, each a pure function from arrays to a matplotlib Figure (no pyplot, no globals)."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from pipeline.core import names
from pipeline.core.errors import DataError

RIGHT, WRONG = "tab:green", "tab:red"


def _digit_grid(
    images: np.ndarray, titles: Sequence[str], colours: Sequence[str], cols: int, title: str
) -> Figure:
    """The images tiled into one image, each captioned above: one Axes, however many images.
    Images are (n, height, width[, channels]), uint8 or 0-1 floats: grayscale is shown dark on
    light (as digits are drawn), colour as it is, on white. Captions of two lines (long class
    names) get room for two lines, in a smaller font."""
    images = np.asarray(images)
    pixels = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
    if pixels.ndim == 4 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    colour = pixels.ndim == 4
    rows = max(1, -(-len(images) // cols))
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    height, width = pixels.shape[1:3] if len(pixels) else (28, 28)
    unit = max(height, width) / 28  # captions and gaps grow with the pictures
    gap, caption = round(4 * unit), round(12 * lines * unit)
    cell_w, cell_h = width + gap, height + gap + caption
    shape = (rows * cell_h, cols * cell_w, *((3,) if colour else ()))
    mosaic = np.full(shape, 1.0 if colour else 0.0, dtype=np.float32)
    fig = Figure(figsize=(cols * 1.3, rows * 1.5 + 0.5))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1 - 0.5 / (rows * 1.5 + 0.5)))
    ax.axis("off")
    fig.suptitle(title, y=1 - 0.1 / (rows * 1.5 + 0.5), va="top")
    for k, (image, text, ink) in enumerate(zip(pixels, titles, colours, strict=False)):
        top, left = (k // cols) * cell_h + caption, (k % cols) * cell_w + gap // 2
        mosaic[top : top + height, left : left + width] = image
        size = 9 if lines == 1 else 7
        ax.text(left + width / 2, top - 2 * unit, text, color=ink, fontsize=size, ha="center")
    if colour:
        ax.imshow(np.clip(mosaic, 0, 1), aspect="auto", interpolation="nearest")
    else:
        ax.imshow(
            mosaic, cmap="gray_r", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest"
        )
    return fig


def _caption(pred: int, true: int, classes: Sequence[str] | None, extra: str = "") -> str:
    """'pred (true)' by class name (its label without names); on two lines for long names."""
    p, t = (classes[pred], classes[true]) if classes else (str(pred), str(true))
    long = max(len(p), len(t)) > 3
    return f"{p}\n({t}){extra}" if long else f"{p} ({t}){extra}"


def prediction_grid(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    cols: int = 8,
    classes: Sequence[str] | None = None,
) -> Figure:
    """Images titled 'pred (true)', by class name; wrong predictions in red."""
    wrong = y_true != y_pred
    titles = [_caption(p, t, classes) for p, t in zip(y_pred, y_true, strict=True)]
    colours = [WRONG if w else RIGHT for w in wrong]
    return _digit_grid(
        images,
        titles,
        colours,
        cols,
        f"Predictions (true label in brackets): {int(wrong.sum())} wrong, "
        f"{int((~wrong).sum())} right",
    )


def showcase(y_true: np.ndarray, y_pred: np.ndarray, n: int = 32) -> np.ndarray:
    """Indices of `n` digits to show, in test-set order: the first mistakes (up to half) and
    the first correct ones for the rest, so a grid always shows what goes wrong."""
    wrong = np.flatnonzero(y_true != y_pred)[: n // 2]
    right = np.flatnonzero(y_true == y_pred)[: n - len(wrong)]
    return np.sort(np.concatenate([wrong, right]))


def worst_mistakes(
    y_true: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray, limit: int = 40
) -> np.ndarray:
    """Indices of the `limit` most confident mistakes, most confident first."""
    wrong = np.flatnonzero(y_true != y_pred)
    return wrong[np.argsort(-confidence[wrong], kind="stable")][:limit]


def misclassified_gallery(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    confidence: np.ndarray,
    limit: int = 40,
    cols: int = 8,
    classes: Sequence[str] | None = None,
    mistakes: int | None = None,
) -> Figure:
    """The most confidently misclassified images, titled 'pred (true) confidence'. `mistakes`
    is how many there are in all when the arrays hold only some of them (`worst_mistakes`)."""
    worst = worst_mistakes(y_true, y_pred, confidence, limit)
    total = int((y_true != y_pred).sum()) if mistakes is None else mistakes
    titles = [_caption(y_pred[i], y_true[i], classes, f" {confidence[i]:.2f}") for i in worst]
    return _digit_grid(
        images[worst],
        titles,
        [WRONG] * len(worst),
        cols,
        f"Misclassified: {total} digits, the {len(worst)} most confident shown",
    )


Drawing = tuple[Callable[..., Figure], tuple[Any, ...], dict[str, Any]]  # a figure to draw
GRID = 32  # test images in the predictions grid: half of them mistakes, where there are as many
MODEL_FIGURES = names.MODEL_FIGURES  # a model's figures, drawn from its figure data
FIGURE_DATA_KEYS = {  # key -> dtype kind: numbers (f, i, u) or text (U)
    "shown_images": "fu", "shown_true": "iu", "shown_pred": "iu",
    "worst_images": "fu", "worst_true": "iu", "worst_pred": "iu", "worst_confidence": "f",
    "mistakes": "iu", "confusion": "iu", "classes": "U", "history_keys": "U", "history": "f",
}  # fmt: skip
MAX_FIGURE_DATA_BYTES = 20 * 1024 * 1024


def figure_data(
    take: Callable[[np.ndarray], np.ndarray],
    y_true: np.ndarray,
    probs: np.ndarray,
    confusion: np.ndarray,
    history: Mapping[str, Sequence[float]],
    classes: Sequence[str],
) -> dict[str, np.ndarray]:
    """What a model's figures (`MODEL_FIGURES`) are drawn from, as plain arrays of a few tens of
    kB: the test images shown (`take(indices)` gives them, uint8), predictions, confidences, the
    confusion matrix, the history."""
    y_pred = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    shown = showcase(y_true, y_pred, GRID)
    worst = worst_mistakes(y_true, y_pred, confidence)  # only they are kept
    return {
        "shown_images": thumbnails(take(shown)), "shown_true": y_true[shown],
        "shown_pred": y_pred[shown],
        "worst_images": thumbnails(take(worst)), "worst_true": y_true[worst],
        "worst_pred": y_pred[worst],
        "worst_confidence": confidence[worst],
        "mistakes": np.asarray(int((y_true != y_pred).sum())),
        "confusion": confusion,
        "classes": np.asarray(list(classes), dtype=str),
        "history_keys": np.asarray(list(history), dtype=str),
        "history": np.asarray(list(history.values()), dtype=np.float64),
    }  # fmt: skip


THUMBNAIL = 96  # pixels of a figure's picture at most: a grid shows each about an inch wide


def thumbnails(images: np.ndarray, side: int = THUMBNAIL) -> np.ndarray:
    """uint8 (n, height, width, channels) pictures, scaled down whole (aspect kept) to at most
    `side` pixels on their longer side: what a figure shows of them, in a fraction of the
    memory and the figure data's size. Smaller pictures (MNIST's) are kept as they are."""
    images = np.asarray(images)
    height, width = images.shape[1:3]
    if max(height, width) <= side:
        return images
    from PIL import Image

    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.zeros((len(images), size[1], size[0], images.shape[-1]), dtype=np.uint8)
    for k, image in enumerate(images):
        picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        small[k] = np.asarray(picture.resize(size, Image.Resampling.BILINEAR)).reshape(
            small[k].shape
        )
    return small


def model_drawings(data: Mapping[str, np.ndarray]) -> dict[str, Drawing]:
    """The model's figures (`MODEL_FIGURES`) to draw from its `figure_data`."""
    classes = {"classes": [str(c) for c in data["classes"]]}
    history = dict(zip(map(str, data["history_keys"]), data["history"].tolist(), strict=True))
    return {
        names.PREDICTIONS_FIGURE: (
            prediction_grid,
            (data["shown_images"], data["shown_true"], data["shown_pred"]),
            classes,
        ),
        names.MISCLASSIFIED_FIGURE: (
            misclassified_gallery,
            (
                data["worst_images"],
                data["worst_true"],
                data["worst_pred"],
                data["worst_confidence"],
            ),
            {**classes, "mistakes": int(data["mistakes"])},
        ),  # fmt: skip
        names.CONFUSION_FIGURE: (confusion_heatmap, (data["confusion"], classes["classes"]), {}),
        names.CURVES_FIGURE: (learning_curves, (history,), {}),
    }


def save_figure_data(path: Path, data: Mapping[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        np.savez_compressed(fh, **data)


def load_figure_data(path: Path) -> dict[str, np.ndarray]:
    """A model's figure data from `path`, checked: an .npz of plain arrays (no pickles), with
    the keys and kinds `figure_data` writes, consistent with each other."""
    size = path.stat().st_size
    if size > MAX_FIGURE_DATA_BYTES:
        raise DataError(
            f"figure data {path} is {size} bytes, over {MAX_FIGURE_DATA_BYTES}: not what a "
            "model's evaluation writes."
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"figure data {path} is not an .npz of plain arrays: {exc}") from None
    kinds = {k: v.dtype.kind for k, v in data.items()}
    wrong = sorted(k for k, kind in FIGURE_DATA_KEYS.items() if kinds.get(k, "?") not in kind)
    n = len(data.get("classes", ()))
    if not wrong and data["confusion"].shape != (n, n):
        wrong = ["confusion"]
    if not wrong and len(data["history_keys"]) != len(data["history"]):
        wrong = ["history"]
    if wrong:
        raise DataError(
            f"figure data {path}: {', '.join(wrong)} missing or of the wrong kind (got {kinds});"
            " it was not written by this project's evaluation."
        )
    return data


def save_figures(folder: Path, drawings: Mapping[str, Drawing], dpi: int = 100) -> None:
    """Draw each figure (file name -> (function, args, kwargs)) and save it under `folder`.
    Plain data in, files out: it can run in another process (a sweep's figure process)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (draw, args, kwargs) in drawings.items():
        draw(*args, **kwargs).savefig(folder / name, dpi=dpi)


def confusion_heatmap(cm: np.ndarray, classes: Sequence[str] | None = None) -> Figure:
    """Counts of true (rows) against predicted (columns) classes, by class name."""
    # Axes placed by hand: a constrained layout costs more than drawing the figure, once per
    # model of a sweep.
    long = bool(classes) and max(map(len, classes)) > 3  # room for names at the left and below
    left, bottom = (0.19, 0.17) if long else (0.1, 0.09)
    fig = Figure(figsize=(7, 6))
    ax = fig.add_axes((left, bottom, 0.82 - left, 0.92 - bottom))
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, cax=fig.add_axes((0.85, bottom, 0.035, 0.92 - bottom)))
    ticks = range(len(cm))
    ax.set(
        xticks=ticks,
        yticks=ticks,
        xlabel="predicted",
        ylabel="true",
        title="Confusion matrix (test set)",
    )
    if classes:
        ax.set_xticklabels(classes, rotation=45 if long else 0, ha="right" if long else "center")
        ax.set_yticklabels(classes)
    threshold = cm.max() / 2
    for (i, j), n in np.ndenumerate(cm):
        ax.text(
            j,
            i,
            str(n),
            ha="center",
            va="center",
            fontsize=8,
            color="white" if n > threshold else "black",
        )
    return fig


def learning_curves(history: Mapping[str, Sequence[float]]) -> Figure:
    """Loss and accuracy per epoch, training and validation side by side, one legend above."""
    fig = Figure(figsize=(10, 4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.84, wspace=0.25)
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
        ax.plot(epochs, history[metric], marker="o", label="train")
        ax.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        ax.set(xlabel="epoch", ylabel=metric, title=metric.capitalize(), xticks=epochs)
        ax.grid(alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="upper center", ncols=2, frameon=False)
    return fig


def _bars(errors: Sequence[float] | None) -> np.ndarray | None:
    """Error bar half-widths, or None where there are none to draw (one seed per point)."""
    if errors is None:
        return None
    bars = np.asarray(errors, dtype=float)
    return None if np.isnan(bars).all() else np.nan_to_num(bars)


def sweep_lines(
    hidden: Sequence[int],
    accuracy: Sequence[float],
    groups: Sequence[str],
    errors: Sequence[float] | None = None,
    metric: str = "validation accuracy",
) -> Figure:
    """Accuracy against hidden units on a log2 axis, a line per group (an epoch count, say
    'e5'), with 95% error bars where `errors` gives them."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    bars = _bars(errors)
    for group in sorted(set(groups), key=_natural):
        idx = sorted(
            (h, i) for i, (h, g) in enumerate(zip(hidden, groups, strict=True)) if g == group
        )
        order = [i for _, i in idx]
        ax.errorbar(
            [hidden[i] for i in order],
            [accuracy[i] for i in order],
            yerr=None if bars is None else bars[order],
            marker="o",
            capsize=3,
            label=group,
        )
    ax.set_xscale("log", base=2)
    ticks = sorted(set(hidden))
    ax.set_xticks(ticks, labels=[str(t) for t in ticks])
    ax.minorticks_off()
    title = f"{metric.capitalize()} by hidden size" + ("" if bars is None else " (95% CI)")
    ax.set(xlabel="hidden units", ylabel=metric, title=title)
    ax.grid(alpha=0.3)
    ax.legend(title="epochs")
    return fig


def sweep_heatmap(
    hidden: Sequence[int],
    epochs: Sequence[int],
    accuracy: Sequence[float],
    errors: Sequence[float] | None = None,
    metric: str = "validation accuracy",
) -> Figure:
    """Hidden units x epochs grid of accuracy, each cell annotated mean (and ± its 95% CI)."""
    rows, cols = sorted(set(hidden)), sorted(set(epochs))
    grid = np.full((len(rows), len(cols)), np.nan)
    spread = np.full_like(grid, np.nan)
    bars = _bars(errors)
    for k, (h, e, a) in enumerate(zip(hidden, epochs, accuracy, strict=True)):
        i, j = rows.index(h), cols.index(e)
        if np.isnan(grid[i, j]) or a > grid[i, j]:
            grid[i, j] = a
            spread[i, j] = np.nan if bars is None else bars[k]
    fig = Figure(figsize=(1.5 * len(cols) + 3, 0.7 * len(rows) + 2.5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label=metric)
    ax.set(
        xticks=range(len(cols)),
        xticklabels=cols,
        yticks=range(len(rows)),
        yticklabels=rows,
        xlabel="epochs",
        ylabel="hidden units",
        title=f"{metric.capitalize()}: hidden units x epochs",
    )
    middle = (np.nanmin(grid) + np.nanmax(grid)) / 2
    for (i, j), a in np.ndenumerate(grid):
        if not np.isnan(a):
            text = f"{a:.4f}" if np.isnan(spread[i, j]) else f"{a:.4f}\n±{spread[i, j]:.4f}"
            colour = "black" if a > middle else "white"  # readable on viridis's light end
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    return fig


def accuracy_vs_seconds(
    seconds: Sequence[float],
    accuracy: Sequence[float],
    labels: Sequence[str],
    errors: Sequence[float] | None = None,
    metric: str = "validation accuracy",
) -> Figure:
    """Accuracy against training seconds, each point labelled, with 95% error bars where
    `errors` gives them."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.errorbar(seconds, accuracy, yerr=_bars(errors), fmt="o", capsize=3)
    for s, a, label in zip(seconds, accuracy, labels, strict=True):
        ax.annotate(label, (s, a), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel="training seconds", ylabel=metric, title="Accuracy against cost")
    ax.grid(alpha=0.3)
    return fig


def _natural(text: str) -> list:
    """Sort key putting 'e10' after 'e5'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def search_history(values: Sequence[float | None], metric: str = "validation accuracy") -> Figure:
    """A search's trials in order: each one's objective, and the best so far."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    trials = np.arange(len(values))
    score = np.array([np.nan if v is None else v for v in values], dtype=float)
    ax.plot(trials, score, "o", label="trial")
    ax.plot(trials, np.fmax.accumulate(score), drawstyle="steps-post", label="best so far")
    ax.set(xlabel="trial", ylabel=metric, title="Search history")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
