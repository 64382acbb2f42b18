"""Training batches from a data source: the built-in shapes world (`data: shapes`) or a folder of captioned images.

    dataset = open_dataset(opts.data)                 # None for shapes, else an ImageCaptionFolder
    batch = image_batch(opts.data, rng, 32, 0.5, dataset)   # {"pixel_values": [B, 3, H, W] in [-1, 1], "caption": [...]}
    stream = image_stream(opts.data, dataset, seed, 0.5, make)  # the trainer's: stream[i] = the run's i-th example

Indices and scenes are drawn with the caller's numpy `rng`, so a resumed run sees the same batches. `image_stream`
is what a training stage's `dataset()` returns (`pocketdiff.data.stream`: example i a pure function of (seed, i)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocketdiff.errors import DataError


def random_batch(dataset, rng: np.random.Generator, batch_size: int) -> dict[str, Any]:
    """A batch from a map-style dataset (items: dicts of tensors / strings), indices drawn with `rng` (exact resume).
    An item that is None (a bad row: an undecodable image, no caption) is replaced by another draw and counted in
    the batch's "skipped"; an iterable dataset (webdataset) is read in order (its examples count their own skips)."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        it = dataset.__dict__.setdefault("_batch_iter", iter(dataset))
        items = [next(it) for _ in range(batch_size)]
        skipped = sum(int(x.pop("skipped", 0)) for x in items)
    else:
        if len(dataset) == 0:
            raise DataError("the dataset is empty")
        items, skipped = [], 0
        while len(items) < batch_size:
            item = dataset[int(rng.integers(len(dataset)))]
            if item is None:
                skipped += 1
                if skipped > 100 * batch_size + 1000:
                    raise DataError(f"the data source gave {skipped} bad items in a row (see the warnings above)")
                continue
            items.append(item)
    batch = {k: torch.stack([it[k] for it in items]) if isinstance(items[0][k], torch.Tensor) else [it[k] for it in items]
             for k in items[0]}
    batch["skipped"] = skipped
    return batch


def image_batch(data: str, rng: np.random.Generator, batch_size: int, two_object_fraction: float, dataset=None):
    if data == "shapes":
        from pocketdiff.data.shapes import make_batch

        return make_batch(rng, batch_size, two_object_fraction=two_object_fraction)
    if dataset is None:
        raise DataError(f"data: {data!r} is neither 'shapes' nor a folder")
    return random_batch(dataset, rng, batch_size)


def image_fields(batch: dict) -> dict:
    """The part of a data batch a diffusion stage trains on: its images ("pixel_values") or cached VAE posteriors
    ("latent_moments"), and "skipped", the bad examples dropped to fill it (counted into the run's log)."""
    return {k: batch[k] for k in ("pixel_values", "latent_moments", "skipped") if k in batch}


def count_skipped(batch: dict) -> int:
    """How many bad examples the data source dropped to fill this (collated) batch."""
    return int(torch.as_tensor(batch.get("skipped", 0)).sum())


def image_stream(data: str, dataset, seed: int, two_object_fraction: float, make=None, size: int = 64):
    """The run's examples ({"pixel_values", "caption"}, then `make(example, rng)`: the stage's per-example randomness)
    from the shapes world (`data: shapes`, generated from the example's own generator) or from `dataset`."""
    from pocketdiff.data.stream import seeded_stream

    make = make or (lambda example, rng: example)
    if data == "shapes":
        from pocketdiff.data.shapes import make_example

        return seeded_stream(seed, lambda _, rng: make(make_example(rng, two_object_fraction, size=size), rng))
    if dataset is None:
        raise DataError(f"data: {data!r} is neither 'shapes' nor a folder")
    return seeded_stream(seed, make, dataset)


def open_dataset(data: str, size: int = 64, seed: int = 0):
    """The data source `data` names, its images at `size` px: None for the built-in shapes world; a latent cache
    (`pocketdiff data cache-latents`); webdataset shards (a directory of *.tar, a brace pattern or a .tar); parquet
    files or a saved `datasets` directory; else a folder of captioned images."""
    if data == "shapes":
        return None
    from pocketdiff.data.latent_cache import LatentCache, is_latent_cache
    from pocketdiff.data.sources import TableSource, WebDataSource

    path = Path(data)
    if is_latent_cache(path):
        return LatentCache(path)
    if ".tar" in data or (path.is_dir() and any(path.glob("*.tar"))):
        return WebDataSource(data, size, seed)
    if data.endswith(".parquet") or (path.is_dir() and (any(path.glob("*.parquet"))
                                                        or (path / "dataset_info.json").is_file())):
        return TableSource(data, size)
    if not path.is_dir():
        raise DataError(f"options.data: {data!r} is neither 'shapes' nor a folder of captioned images, webdataset "
                        "shards, parquet files or a latent cache")
    from pocketdiff.data.folder import ImageCaptionFolder

    return ImageCaptionFolder(data, size=size)


__all__ = ["count_skipped", "image_batch", "image_fields", "image_stream", "open_dataset", "random_batch"]
