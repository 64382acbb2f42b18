"""Training batches from a data source: the built-in shapes world (`data: shapes`) or a folder of captioned images.

    dataset = open_dataset(opts.data)                 # None for shapes, else an ImageCaptionFolder
    batch = image_batch(opts.data, rng, 32, 0.5, dataset)   # {"pixel_values": [B, 3, H, W] in [-1, 1], "caption": [...]}

Indices and scenes are drawn with the caller's numpy `rng`, so a resumed run sees the same batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocketdiff.errors import DataError


def random_batch(dataset, rng: np.random.Generator, batch_size: int) -> dict[str, Any]:
    """A batch from a map-style dataset (items: dicts of tensors / strings), indices drawn with `rng` (exact resume)."""
    if len(dataset) == 0:
        raise DataError("the dataset is empty")
    items = [dataset[int(i)] for i in rng.integers(len(dataset), size=batch_size)]
    return {k: torch.stack([it[k] for it in items]) if isinstance(items[0][k], torch.Tensor) else [it[k] for it in items]
            for k in items[0]}


def image_batch(data: str, rng: np.random.Generator, batch_size: int, two_object_fraction: float, dataset=None):
    if data == "shapes":
        from pocketdiff.data.shapes import make_batch

        return make_batch(rng, batch_size, two_object_fraction=two_object_fraction)
    if dataset is None:
        raise DataError(f"data: {data!r} is neither 'shapes' nor a folder")
    return random_batch(dataset, rng, batch_size)


def open_dataset(data: str, size: int = 64):
    """None for the built-in shapes world, else an ImageCaptionFolder at `data`."""
    if data == "shapes":
        return None
    if not Path(data).is_dir():
        raise DataError(f"options.data: {data!r} is neither 'shapes' nor a folder of images and captions")
    from pocketdiff.data.folder import ImageCaptionFolder

    return ImageCaptionFolder(data, size=size)


__all__ = ["image_batch", "open_dataset", "random_batch"]
