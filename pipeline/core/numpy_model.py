"""A saved `.keras` model run by NumPy alone, so that reading a picture takes a second, not the
three or four that importing TensorFlow takes on a small machine.

`load` reads the model's `config.json` (JSON, no code) and its `model.weights.h5` (arrays, read
with h5py) and runs the layers the project's builders use (core/model.py): Input, Reshape,
Flatten, Dropout (nothing at inference), Dense, Conv2D and MaxPooling2D, channels last, with
linear, ReLU or softmax activations. A model with anything else gives `None`, and the caller
loads it with Keras. The answers are Keras's to float32 rounding (tests/test_predict.py holds
them to the same labels and probabilities within 1e-5 on the 10,000 MNIST test digits).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.data import check_model_file
from pipeline.core.errors import PipelineError

MEMBERS = {"metadata.json", "config.json", "model.weights.h5"}
MAX_CONFIG_BYTES, MAX_WEIGHTS_BYTES = 1 << 20, 1 << 31


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "softmax": _softmax,
}


class Unsupported(Exception):
    """The model has a layer or setting this module does not run."""


def _pairs(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _windows(x: np.ndarray, size: tuple[int, int], strides: tuple[int, int]) -> np.ndarray:
    """(n, rows, cols, channels, size[0], size[1]): each output position's input window."""
    view = np.lib.stride_tricks.sliding_window_view(x, size, axis=(1, 2))
    return view[:, :: strides[0], :: strides[1]]


def _same_padding(x: np.ndarray, size: tuple[int, int], strides: tuple[int, int]) -> np.ndarray:
    """Zero-pad rows and columns as TensorFlow's "same" does: the extra one at the end."""
    pads = [(0, 0)]
    for length, k, s in zip(x.shape[1:3], size, strides, strict=True):
        total = max((-(-length // s) - 1) * s + k - length, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [*pads, (0, 0)])


def _layer(kind: str, config: dict[str, Any], weights: list[np.ndarray]) -> Callable:
    """The function of one layer of `kind` with its `config` and `weights`."""
    if kind in ("Flatten", "Reshape", "Dropout"):
        if config.get("data_format", "channels_last") != "channels_last":
            raise Unsupported(f"{kind} with data_format {config['data_format']}")
        if kind == "Flatten":
            return lambda x: x.reshape(len(x), -1)
        if kind == "Reshape":
            shape = tuple(config["target_shape"])
            return lambda x: x.reshape(len(x), *shape)
        return lambda x: x
    activation = ACTIVATIONS.get(config.get("activation", "linear"))
    if kind == "MaxPooling2D":
        size, strides = (
            _pairs(config["pool_size"]),
            _pairs(config["strides"] or config["pool_size"]),
        )
        if config["padding"] != "valid" or config["data_format"] != "channels_last":
            raise Unsupported(f"MaxPooling2D {config['padding']}, {config['data_format']}")
        return lambda x: _windows(x, size, strides).max(axis=(-2, -1))
    if kind not in ("Dense", "Conv2D"):
        raise Unsupported(f"layer {kind}")
    if activation is None:
        raise Unsupported(f"activation {config.get('activation')!r}")
    width = config["units"] if kind == "Dense" else config.get("filters")
    kernel, bias = weights[0], weights[1] if config.get("use_bias", True) else np.float32(0)
    if kernel.shape[-1] != width or (np.ndim(bias) and bias.shape != (width,)):
        raise ValueError(f"{kind} {config['name']}: weights {kernel.shape}, bias {np.shape(bias)}")
    if kind == "Dense":
        return lambda x: activation(x @ kernel + bias)
    if kind == "Conv2D":
        size, strides = _pairs(config["kernel_size"]), _pairs(config["strides"])
        plain = _pairs(config["dilation_rate"]) == (1, 1) and config.get("groups", 1) == 1
        if not plain or config["data_format"] != "channels_last":
            raise Unsupported("Conv2D with dilation, groups or channels first")
        if config["padding"] not in ("same", "valid"):
            raise Unsupported(f"Conv2D padding {config['padding']}")

        def conv(x: np.ndarray) -> np.ndarray:
            if config["padding"] == "same":
                x = _same_padding(x, size, strides)
            windows = _windows(x, size, strides)  # (n, rows, cols, in, kh, kw)
            return activation(np.einsum("nrcihw,hwio->nrco", windows, kernel) + bias)

        return conv


class NumpyModel:
    """A Sequential Keras model's inference in NumPy: `predict_on_batch`, `input_shape` and
    `output_shape` as a Keras model has them."""

    def __init__(self, input_shape: tuple, layers: list[Callable], classes: int) -> None:
        self.input_shape, self.output_shape = input_shape, (None, classes)
        self._layers = layers

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        for layer in self._layers:
            x = layer(x)
        return x.astype(np.float32)


def load(path: Path, sha256: str | None = None) -> NumpyModel | None:
    """The `.keras` model at `path` (its digest checked, with `sha256`) as a `NumpyModel`, or
    None when it has a layer this module does not run."""
    import h5py

    path = Path(path)
    check_model_file(path, sha256)
    try:
        with zipfile.ZipFile(path) as archive:
            members = {i.filename: i for i in archive.infolist()}
            too_big = (
                members["config.json"].file_size > MAX_CONFIG_BYTES
                or members["model.weights.h5"].file_size > MAX_WEIGHTS_BYTES
            )
            if set(members) - MEMBERS or too_big:
                return None  # not one the project saved: Keras's safe mode decides
            config = json.loads(archive.read("config.json"))
            weights = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise PipelineError(f"refused to load {path}: not a .keras model file ({exc})") from None
    with weights:
        try:
            return _model(config, weights)
        except Unsupported:
            return None
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"refused to load {path}: its config or weights: {exc}") from None


def snake_case(name: str) -> str:
    """A class name as Keras's saving names a layer's weights after it (`keras.src.utils.naming.
    to_snake_case`): MaxPooling2D -> max_pooling2d."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _model(config: dict[str, Any], weights: Any) -> NumpyModel:
    if config.get("class_name") != "Sequential":
        raise Unsupported(config.get("class_name"))
    specs = config["config"]["layers"]
    if not specs or specs[0]["class_name"] != "InputLayer":
        raise Unsupported("no InputLayer")
    input_shape = tuple(specs[0]["config"]["batch_shape"])
    layers, shape = [], np.zeros((1, *input_shape[1:]), np.float32)
    seen: dict[str, int] = {}  # Keras saves the n-th layer of a class as <class>_<n-1>
    for spec in specs[1:]:
        kind, layer_config = spec["class_name"], spec["config"]
        name = snake_case(kind)
        seen[name] = seen.get(name, -1) + 1
        group = weights["layers"][f"{name}_{seen[name]}" if seen[name] else name]["vars"]
        arrays = [np.asarray(group[str(i)], dtype=np.float32) for i in range(len(group))]
        layers.append(_layer(kind, layer_config, arrays))
        shape = layers[-1](shape)  # a shape that does not fit the weights fails here
    return NumpyModel(input_shape, layers, shape.shape[-1])


def load_predictor(path: Path, sha256: str | None = None) -> Any:
    """The model at `path` to read pictures with: a `NumpyModel` where this module runs it, else
    the Keras model (`model.load_model`, safe mode), TensorFlow imported only then."""
    model = load(path, sha256)  # checks the file's digest first
    if model is None:
        from pipeline.core.console import load_keras

        load_keras()
        from pipeline.core.model import load_model

        model = load_model(path)  # its digest checked above, once
    return model
