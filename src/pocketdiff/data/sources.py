"""The user's caption data at scale: webdataset tar shards (streamed) and parquet / Hugging Face `datasets` tables
(map-style), beside the image folder (`pocketdiff.data.folder`). Every source yields examples
{"pixel_values": (3, S, S) in [-1, 1], "caption": str}, S the training resolution (short side resized, centre crop).

    source = open_source("shards/{00000..00099}.tar", size=512)     # WebDataSource: endless, split by process/worker
    source = open_source("table.parquet", size=512)                 # TableSource: parquet files or a saved `datasets`

Bad data is skipped and counted, never a crash hours in: an image that does not decode, a missing or empty
caption, a sample without an image, a shard that is empty or unreadable. A streaming example carries "skipped": the
number of bad samples dropped before it in its worker's stream, so the counts sum correctly over DataLoader workers
and processes; a table source returns None for a bad row (the trainer's stream takes the next index and counts it).
"""

from __future__ import annotations

import io
import itertools
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import torch

from pocketdiff.errors import DataError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CAPTION_KEYS = ("txt", "caption", "text")


def decode_example(image_bytes: bytes | None, caption, size: int) -> dict | None:
    """{"pixel_values", "caption"} from encoded image bytes and a caption, or None when either is bad."""
    from PIL import Image, UnidentifiedImageError

    from pocketdiff.data.folder import center_crop
    from pocketdiff.data.shapes import to_tensor

    if isinstance(caption, bytes):
        caption = caption.decode("utf-8", errors="replace")
    if not image_bytes or not isinstance(caption, str) or not caption.strip():
        return None
    try:
        with Image.open(io.BytesIO(image_bytes)) as im:
            array = center_crop(im.convert("RGB"), size)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    return {"pixel_values": to_tensor(array), "caption": caption.strip()}


def _caption_of(sample: dict):
    for key in CAPTION_KEYS:
        if key in sample:
            return sample[key]
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError):
            return None
        return meta.get("caption") or meta.get("text") if isinstance(meta, dict) else None
    return None


def expand_shards(spec: str) -> list[str]:
    """A directory (its *.tar), a brace pattern (`shards/{00000..00099}.tar`) or one tar file -> sorted shard paths."""
    import braceexpand

    path = Path(spec)
    if path.is_dir():
        shards = sorted(str(p) for p in path.glob("*.tar"))
    else:
        shards = [s for s in braceexpand.braceexpand(spec) if Path(s).is_file()]
    if not shards:
        raise DataError(f"options.data: {spec!r}: no webdataset shards (*.tar) there")
    return shards


def _is_empty(shard: str) -> bool:
    """An empty or unreadable tar (reads its first header only)."""
    try:
        with tarfile.open(shard) as tf:
            return tf.next() is None
    except (tarfile.TarError, OSError):
        return True


class WebDataSource(torch.utils.data.IterableDataset):
    """Webdataset tar shards (webdataset's `WebDataset`), endless: each epoch the shard order is reshuffled with
    (seed, epoch); shards are split over processes (`split_by_node`) and DataLoader workers (`split_by_worker`), so
    every process reads only its own shards (`splits_by_process`). Samples: an image (jpg/png/webp) and a caption
    (txt, or json's "caption"); bad ones skipped and counted (module docstring)."""

    splits_by_process = True

    def __init__(self, spec: str, size: int, seed: int = 0, shuffle_buffer: int = 1000):
        self.size, self.seed, self.shuffle_buffer = size, seed, shuffle_buffer
        shards = expand_shards(spec)
        self.empty_shards = [s for s in shards if _is_empty(s)]
        self.shards = [s for s in shards if s not in self.empty_shards]
        if self.empty_shards:
            warnings.warn(f"{len(self.empty_shards)} of {len(shards)} shards are empty or unreadable, skipped: "
                          f"{', '.join(Path(s).name for s in self.empty_shards[:3])}", stacklevel=2)
        if not self.shards:
            raise DataError(f"options.data: {spec!r}: all {len(shards)} shards are empty or unreadable")

    def __iter__(self):
        import webdataset as wds

        errors = [0]

        def count(exn) -> bool:  # webdataset's handler: a broken tar member or shard is counted, not raised
            errors[0] += 1
            return True

        skipped = 0
        for epoch in itertools.count():
            order = list(np.random.default_rng([self.seed, epoch]).permutation(len(self.shards)))
            urls = [self.shards[i] for i in order]
            stream = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node,
                                    workersplitter=wds.split_by_worker, handler=count, empty_check=False)
            if self.shuffle_buffer > 1:
                stream = stream.shuffle(self.shuffle_buffer, seed=self.seed + epoch)
            n = 0
            for sample in stream:
                image = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
                example = decode_example(image, _caption_of(sample), self.size)
                if example is None:
                    skipped += 1
                    continue
                example["skipped"] = skipped + errors[0]
                skipped, errors[0], n = 0, 0, n + 1
                yield example
            if n == 0:
                raise DataError(f"webdataset: this process/worker got no usable sample from its share of "
                                f"{len(self.shards)} shards (fewer shards than processes x workers, or all bad)")


class TableSource(torch.utils.data.Dataset):
    """Parquet files (a file, a directory of *.parquet) or a `datasets.save_to_disk` directory, through Hugging Face
    `datasets` (memory-mapped Arrow, nothing loaded up front). Columns: an image column (`image`, `jpg`, `png`:
    datasets' Image feature or raw bytes) and a caption column (`caption`, `text`, `txt`). `ds[i]` is None for a bad
    row (counted by the caller)."""

    def __init__(self, spec: str, size: int):
        import datasets

        self.size = size
        path = Path(spec)
        try:
            if path.is_dir() and (path / "dataset_info.json").is_file():
                table = datasets.load_from_disk(str(path))
            else:
                files = sorted(str(p) for p in path.glob("*.parquet")) if path.is_dir() else [str(path)]
                if not files:
                    raise DataError(f"options.data: {spec!r}: no *.parquet files")
                table = datasets.Dataset.from_parquet(files)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - arrow / datasets raise many types for a bad file
            raise DataError(f"options.data: {spec!r}: cannot be read as parquet / datasets ({' '.join(str(e).split())[:200]})") from None
        if isinstance(table, datasets.DatasetDict):
            table = table["train"] if "train" in table else next(iter(table.values()))
        self.image_col = next((c for c in ("image", "jpg", "png") if c in table.column_names), None)
        self.caption_col = next((c for c in CAPTION_KEYS if c in table.column_names), None)
        if self.image_col is None or self.caption_col is None:
            raise DataError(f"options.data: {spec!r}: needs an image column (image/jpg/png) and a caption column "
                            f"(caption/text/txt); it has {table.column_names}")
        if isinstance(table.features[self.image_col], datasets.Image):
            table = table.cast_column(self.image_col, datasets.Image(decode=False))  # bytes: we decode and count
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict | None:
        row = self.table[int(index)]
        image = row[self.image_col]
        if isinstance(image, dict):  # datasets' Image(decode=False): {"bytes", "path"}
            image = image.get("bytes") or (Path(image["path"]).read_bytes() if image.get("path") else None)
        return decode_example(image, row[self.caption_col], self.size)
