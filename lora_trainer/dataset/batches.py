"""One epoch's batches, ordered as kohya orders them (shuffle_buckets, train_util §5.4).

Pure: the same (items, batch_size, seed, epoch) always gives the same batches.
"""

from __future__ import annotations

import math
import random


def epoch_batches(items, batch_size: int, seed: int, epoch: int, flip_aug: bool = False):
    """[[(item, flip), ...], ...] for one epoch.

    Each bucket's samples (every item `item.repeats` times) are shuffled and cut into
    ceil(n / batch_size) batches, so a batch never mixes buckets and a bucket smaller than
    the batch size gives a short batch; then the list of batches is shuffled. One
    random.Random(seed + epoch) drives everything, including the per-sample 50 % flip
    decision when flip_aug (flip is always False otherwise).
    """
    batch_size = max(1, int(batch_size))
    rng = random.Random(seed + epoch)
    by_bucket: dict[tuple[int, int], list] = {}
    for item in items:
        by_bucket.setdefault(tuple(item.bucket), []).extend([item] * int(item.repeats))

    batches = []
    for bucket in sorted(by_bucket):  # fixed bucket order so the rng sequence is reproducible
        samples = by_bucket[bucket]
        rng.shuffle(samples)
        for i in range(math.ceil(len(samples) / batch_size)):
            batches.append(samples[i * batch_size:(i + 1) * batch_size])
    rng.shuffle(batches)

    return [[(item, flip_aug and rng.random() < 0.5) for item in batch] for batch in batches]


def batches_per_epoch(items, batch_size: int) -> int:
    """Number of batches epoch_batches yields (sum over buckets of ceil(samples / batch))."""
    batch_size = max(1, int(batch_size))
    counts: dict[tuple[int, int], int] = {}
    for item in items:
        counts[tuple(item.bucket)] = counts.get(tuple(item.bucket), 0) + int(item.repeats)
    return sum(math.ceil(n / batch_size) for n in counts.values())
