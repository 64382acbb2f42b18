"""User data: a folder of captioned images, served in the same format as `ShapesDataset`.

Captions come from, in order of preference, `captions.jsonl` ({"file": ..., "caption": ...} per line),
`captions.csv` (columns file,caption) or a `.txt` file beside each image.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pocketdiff.data.shapes import to_tensor
from pocketdiff.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _read_jsonl(path: Path) -> dict[str, str]:
    captions = {}
    from pocketdiff.loading import read_text

    for n, line in enumerate(read_text(path, error=DataError).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            captions[row["file"]] = row["caption"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path}:{n}: expected {{\"file\": ..., \"caption\": ...}}, got {line!r}") from e
    return captions


def _read_csv(path: Path) -> dict[str, str]:
    import io

    from pocketdiff.loading import read_text

    reader = csv.DictReader(io.StringIO(read_text(path, error=DataError), newline=""))
    if not reader.fieldnames or not {"file", "caption"} <= set(reader.fieldnames):
        raise DataError(f"{path}: needs a header with columns file,caption, got {reader.fieldnames}")
    try:
        return {row["file"]: row["caption"] for row in reader}
    except csv.Error as e:
        raise DataError(f"{path}: not valid CSV ({e})") from None


def _read_caption(path: Path) -> str:
    from pocketdiff.loading import read_text

    return read_text(path, error=DataError).strip()


def _check_image(path: Path) -> None:
    try:
        with Image.open(path):
            pass
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def load_image(path: Path, size: int) -> np.ndarray:
    """RGB uint8 (size, size, 3): the short side resized to `size`, then a center crop."""
    try:
        with Image.open(path) as im:
            return center_crop(im.convert("RGB"), size)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def center_crop(im: Image.Image, size: int) -> np.ndarray:
    """An RGB image -> uint8 (size, size, 3): the short side resized to `size` (bicubic), then a center crop."""
    scale = size / min(im.size)
    w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
    im = im.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return np.array(im.crop((left, top, left + size, top + size)))


class ImageCaptionFolder(torch.utils.data.Dataset):
    """Images (png/jpg) with captions; items are {"pixel_values": (3, size, size) in [-1, 1], "caption": str}."""

    def __init__(self, root: str | Path, size: int = 64):
        self.root, self.size = Path(root), size
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist")
        images = sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.root}")
        if (self.root / "captions.jsonl").exists():
            table = _read_jsonl(self.root / "captions.jsonl")
        elif (self.root / "captions.csv").exists():
            table = _read_csv(self.root / "captions.csv")
        else:
            table = {
                p.name: _read_caption(p.with_suffix(".txt"))
                for p in images
                if p.with_suffix(".txt").exists()
            }
        missing = [p.name for p in images if p.name not in table]
        if missing:
            raise DataError(
                f"{len(missing)} image(s) in {self.root} have no caption, e.g. {missing[0]}: add a .txt beside it "
                "or a line in captions.jsonl / captions.csv"
            )
        for p in images:  # fail now, not hours into training: a header check is cheap
            _check_image(p)
        self.items = [(p, table[p.name]) for p in images]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, text = self.items[index]
        return {"pixel_values": to_tensor(load_image(path, self.size)), "caption": text}
