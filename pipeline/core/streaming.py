"""A split too large to hold in memory, streamed from its shards through tf.data as it trains.

Each epoch reads the split's shards (core/shards.py) as fixed-length records, in a seeded order
of files, several files interleaved and read in parallel; passes them through a shuffle buffer of
`train.shuffle_buffer_mb` seeded from the run's generator (no `cache()`: nothing else holds the
data); batches them; decodes each batch to float32 pixels in 0-1 on a parallel map; and prefetches
the next batches while the model trains. Memory holds the buffer and a few batches, whatever the
size of the split. The file order and the shuffle seed are the epoch's draws from NumPy's global
generator, which `training.set_determinism` seeds: the same seed gives the same batches, and
tf.data keeps its order (deterministic) under TensorFlow's op determinism.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.shards import Shards

FILES_AT_ONCE = 4  # shards read side by side (a mix of several files even before the buffer)


@dataclass(frozen=True)
class Streamed:
    """A split to stream: its shards, and the first `limit` examples of them (all: None)."""

    shards: Shards
    limit: int | None = None

    def __len__(self) -> int:
        n = len(self.shards)
        return n if self.limit is None else min(self.limit, n)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.shards.shape)

    def head(self, n: int) -> np.ndarray:
        """Its first `n` pictures as float32 inputs (a logged model's example inputs)."""
        images, _ = next(self.shards.batches(min(n, len(self)) or 1))
        return images.astype(np.float32) / np.float32(255)

    def counts(self) -> list[int]:
        """Examples taken from each shard, in order (the limit cuts the last ones short)."""
        left, taken = len(self), []
        for shard in self.shards.entry["shards"]:
            taken.append(max(0, min(shard["examples"], left)))
            left -= taken[-1]
        return taken

    def dataset(self, batch_size: int, shuffle_bytes: int, order: np.ndarray, seed: int) -> Any:
        """One epoch's batches (float32 images, labels): the shards in `order`, shuffled
        through a buffer of `shuffle_bytes` with `seed`."""
        import tensorflow as tf

        shape = self.shards.shape
        record = 1 + int(np.prod(shape))
        files = self.shards.files()
        counts = self.counts()
        chosen = [i for i in order if counts[i] > 0]
        table = tf.data.Dataset.from_tensor_slices(
            (
                [str(files[i]) for i in chosen],
                np.asarray([self.shards.header_bytes(i) for i in chosen], np.int64),
                np.asarray([counts[i] for i in chosen], np.int64),
            )
        )
        records = table.interleave(
            lambda path, header, count: tf.data.FixedLengthRecordDataset(
                path, record, header_bytes=header
            ).take(count),
            cycle_length=FILES_AT_ONCE,  # the same buffers however many files there are
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        buffer = max(batch_size, shuffle_bytes // record)
        records = records.shuffle(
            min(buffer, len(self)), seed=seed, reshuffle_each_iteration=False
        )

        def decode(batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            raw = tf.io.decode_raw(batch, tf.uint8)
            images = tf.reshape(raw[:, 1:], (-1, *shape))
            return tf.cast(images, tf.float32) / 255.0, raw[:, 0]

        batches = records.batch(batch_size).map(
            decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        return batches.prefetch(2)

    def epoch(self, batch_size: int, shuffle_bytes: int) -> Any:
        """The next epoch's batches: its file order and shuffle seed drawn from NumPy's global
        generator."""
        order = np.random.permutation(len(self.shards.files()))
        seed = int(np.random.randint(0, 2**31 - 1))
        return self.dataset(batch_size, shuffle_bytes, order, seed)

    def in_order(self, size: int) -> Any:
        """Its examples in order, `size` at a time, as (float32 images, labels) arrays."""
        for images, labels in self.shards.batches(min(size, self.shards.chunk()), len(self)):
            yield images.astype(np.float32) / np.float32(255), labels
