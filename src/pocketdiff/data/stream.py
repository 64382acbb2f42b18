"""A run's training examples as a dataset indexed by the global sample number, for the trainer's DataLoader.

    stream = seeded_stream(seed, make, source=ImageCaptionFolder("data/"))
    stream[i]   # == make(source[perm_epoch[i % len(source)]], np.random.default_rng([seed, i]))

`i` = 0, 1, 2, ... is the global sample number of the run (unbounded: a finite `source` is read in a fresh
permutation each epoch, seeded by (seed, epoch)). Every example is a pure function of (seed, i), and `make` draws the
example's randomness (caption dropout, timestep, noise seed) from its own generator, so the stream is the same for
any number of processes, DataLoader workers or resumes: 2 processes x batch B see the samples of 1 process x 2B, and
a resume restarts the index sampler at the checkpointed sample count (`IndexSampler`), without replaying anything.

`source=None`: `make(None, rng)` generates the example itself (the shapes world). An IterableDataset source
(streaming, e.g. webdataset) gives an IterableDataset: example j of a worker's stream gets the generator
(seed, worker, j); it must be endless. A map-style source may return None for an item it cannot read (a corrupt
image, a missing caption): the stream takes the next item of the permutation instead and counts it in `skipped`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from pocketdiff.errors import DataError

Make = Callable[[Any, np.random.Generator], dict]


class SeededStream(torch.utils.data.Dataset):
    """stream[i]: the run's i-th example (see the module docstring)."""

    def __init__(self, seed: int, make: Make, source=None):
        if source is not None and len(source) == 0:
            raise DataError("the dataset is empty")
        self.seed, self.make, self.source = seed, make, source
        self.skipped = 0  # items the source could not give (returned None), in this process / worker
        self._perm: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch, 1]).permutation(len(self.source)))
        return self._perm[1]

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, int(i)])
        if self.source is None:
            return self.make(None, rng)
        n = len(self.source)
        epoch, pos = divmod(int(i), n)
        perm = self._permutation(epoch)
        for k in range(n):
            item = self.source[int(perm[(pos + k) % n])]
            if item is not None:
                if k and isinstance(item, dict):  # the bad items this example replaced travel with it
                    item = {**item, "skipped": int(item.get("skipped", 0)) + k}
                return self.make(item, rng)
            self.skipped += 1
        raise DataError(f"no item of the dataset ({n} items) could be read")


class SeededIterableStream(torch.utils.data.IterableDataset):
    """`make` applied to a streaming source; example j of worker w's stream gets default_rng([seed, w, j])."""

    def __init__(self, seed: int, make: Make, source: torch.utils.data.IterableDataset):
        self.seed, self.make, self.source = seed, make, source
        self.splits_by_process = getattr(source, "splits_by_process", False)

    def __iter__(self) -> Iterator[dict]:
        worker = torch.utils.data.get_worker_info()
        w = 0 if worker is None else worker.id
        for j, item in enumerate(self.source):
            if item is not None:
                yield self.make(item, np.random.default_rng([self.seed, w, j]))


def seeded_stream(seed: int, make: Make, source=None) -> SeededStream | SeededIterableStream:
    """`SeededStream` for a map-style source (or None), `SeededIterableStream` for an IterableDataset."""
    if isinstance(source, torch.utils.data.IterableDataset):
        return SeededIterableStream(seed, make, source)
    return SeededStream(seed, make, source)


class IndexSampler(torch.utils.data.Sampler):
    """start, start + 1, start + 2, ... forever: the global sample numbers from where the run stands."""

    def __init__(self, start: int = 0):
        self.start = start

    def __iter__(self) -> Iterator[int]:
        i = self.start
        while True:
            yield i
            i += 1


def collate(examples: list[dict]) -> dict:
    """Examples -> a batch: tensors stacked, python numbers -> a tensor, anything else (captions) -> a list.
    "skipped" (bad items a data source dropped, `pocketdiff.data.batches.image_fields`) is 0 where an example lacks it."""
    out = {}
    keys = list(examples[0]) + (["skipped"] if "skipped" not in examples[0] and any("skipped" in e for e in examples)
                                else [])
    for k in keys:
        values = [e.get(k, 0) if k == "skipped" else e[k] for e in examples]
        v = values[0]
        if isinstance(v, torch.Tensor):
            out[k] = torch.stack(values)
        elif isinstance(v, bool | int | float | np.integer | np.floating | np.bool_):
            out[k] = torch.tensor(np.asarray(values))
        else:
            out[k] = values
    return out


__all__ = ["IndexSampler", "SeededIterableStream", "SeededStream", "collate", "seeded_stream"]
