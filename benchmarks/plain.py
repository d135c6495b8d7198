"""The seed model as a plain Keras script: what a user would write without this project.

Reads the four gzipped MNIST IDX files from a folder (argument 1), trains Flatten ->
Dense(128, relu) -> Dense(10, softmax) with Adam for 5 epochs at batch size 32 on all 60,000
training digits, and prints one JSON line: seconds per epoch, test accuracy, wall time from start.
"""

import gzip
import json
import sys
import time

START = time.perf_counter()

import keras  # noqa: E402
import numpy as np  # noqa: E402

EPOCHS = 5


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path) as fh:
        raw = fh.read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.began = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.began)


if __name__ == "__main__":
    folder = sys.argv[1]
    x_train = read_idx(f"{folder}/train-images-idx3-ubyte.gz") / 255.0
    y_train = read_idx(f"{folder}/train-labels-idx1-ubyte.gz")
    x_test = read_idx(f"{folder}/t10k-images-idx3-ubyte.gz") / 255.0
    y_test = read_idx(f"{folder}/t10k-labels-idx1-ubyte.gz")

    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimer()
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, callbacks=[timer], verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(
        json.dumps(
            {
                "epoch_seconds": timer.seconds,
                "test_accuracy": float(accuracy),
                "wall_s": time.perf_counter() - START,
            }
        )
    )
