"""The seed model trained by Keras `fit`, tuned the documented way: the yardstick for the loop.

Reads the pipeline's prepared splits (the shards in `data/processed/` under the folder given
as argument 1), trains Flatten -> Dense(128, relu) -> Dense(10, softmax) with Adam for 5 epochs at
batch size 32 on the same 54,000 digits, scoring the 6,000 validation digits after each epoch,
with float32 inputs, `jit_compile=True` and `steps_per_execution` = the steps of one epoch.
Prints one JSON line: seconds per epoch (the first includes compilation), fit seconds in all,
test accuracy.
"""

import json
import sys
import time
from pathlib import Path

import keras
import numpy as np
from plain import EpochTimer  # benchmarks/, the script's own folder, is on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project: its shards
from pipeline.core.shards import Shards  # noqa: E402

EPOCHS, BATCH = 5, 32


def split(folder: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = Shards(Path(folder) / "data/processed", name).whole()
    return x[..., 0], y  # 28 x 28, as the plain script's


folder = sys.argv[1]
(x, y), val, (x_test, y_test) = (split(folder, s) for s in ("train", "val", "test"))
keras.utils.set_random_seed(42)
model = keras.Sequential(
    [
        keras.Input(shape=(28, 28)),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ]
)
model.compile(
    optimizer="adam",
    loss="sparse_categorical_crossentropy",
    metrics=["accuracy"],
    jit_compile=True,
    steps_per_execution=-(-len(y) // BATCH),
)
timer = EpochTimer()
began = time.perf_counter()
model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, validation_data=val, callbacks=[timer], verbose=0)
fit_seconds = time.perf_counter() - began
_, accuracy = model.evaluate(x_test, y_test, verbose=0)
print(
    json.dumps(
        {"epoch_seconds": timer.seconds, "fit_seconds": fit_seconds, "test_accuracy": accuracy}
    )
)
