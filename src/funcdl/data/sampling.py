"""The order of an epoch: seeded permutations, per-process shards, length buckets."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of epoch ``epoch``: a function of ``(seed, epoch)`` only."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def shard(items: Sequence[Any] | np.ndarray, index: int, count: int, drop_last: bool) -> Any:
    """This process's share: every ``count``-th item, evened out as DistributedSampler does.

    Without ``drop_last`` the list is padded by wrapping around so every process gets the same
    number of items (and batches), which collective device steps need; with it the tail is cut.
    """
    if count == 1:
        return items
    n = len(items)
    if drop_last:
        items = items[: n - n % count]
    elif n % count:
        extra = count - n % count
        reps = math.ceil(extra / max(n, 1))
        pad = (list(items) * reps)[:extra] if not isinstance(items, np.ndarray) else \
            np.tile(items, reps)[:extra]
        items = np.concatenate([items, pad]) if isinstance(items, np.ndarray) else \
            list(items) + pad
    return items[index::count]


def bucket_by_length(lengths: Sequence[int], batch_size: int, *, seed: int = 0, epoch: int = 0,
                     bucket_size: int | None = None, drop_last: bool = False) -> list[np.ndarray]:
    """Batches of indices with similar lengths, to cut padding; seeded by ``(seed, epoch)``.

    Shuffle all indices, cut them into buckets of ``bucket_size`` (default ``50 * batch_size``),
    sort each bucket by length, cut it into batches, and shuffle the batch order. Every index
    appears once (``drop_last`` drops the incomplete batches).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size should be a positive integer, got {batch_size}")
    lengths = np.asarray(lengths)
    bucket = bucket_size or 50 * batch_size
    bucket = max(batch_size, bucket - bucket % batch_size)
    rng = np.random.default_rng([int(seed), int(epoch), 1])
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    for start in range(0, len(order), bucket):
        chunk = order[start:start + bucket]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        for b in range(0, len(chunk), batch_size):
            if len(chunk[b:b + batch_size]) == batch_size or not drop_last:
                batches.append(chunk[b:b + batch_size])
    return [batches[i] for i in rng.permutation(len(batches))]


def padding_fraction(lengths: Sequence[int], batches: Iterable[Sequence[int]]) -> float:
    """Share of the padded batch cells that are padding (each batch padded to its longest)."""
    lengths = np.asarray(lengths)
    real = cells = 0
    for b in batches:
        lb = lengths[np.asarray(b, dtype=np.int64)]
        real += int(lb.sum())
        cells += int(lb.max()) * len(lb) if len(lb) else 0
    return 0.0 if cells == 0 else 1.0 - real / cells


class BucketBatchSampler:
    """A ``batch_sampler`` for ``DataLoader`` that groups similar lengths (see bucket_by_length)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int = 0,
                 bucket_size: int | None = None, drop_last: bool = False):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed = batch_size, seed
        self.bucket_size, self.drop_last = bucket_size, drop_last
        self.epoch = 0
        bucket_by_length([], batch_size)  # validates batch_size early

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(bucket_by_length(self.lengths, self.batch_size, seed=self.seed,
                                     epoch=self.epoch, bucket_size=self.bucket_size,
                                     drop_last=self.drop_last))

    def __len__(self) -> int:
        return len(bucket_by_length(self.lengths, self.batch_size, seed=self.seed,
                                    epoch=self.epoch, bucket_size=self.bucket_size,
                                    drop_last=self.drop_last))
