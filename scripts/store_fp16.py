"""Rewrite the safetensors weights of shipped model directories in float16 (half the bytes; loading upcasts to
float32, so inference is unchanged apart from the rounding of the stored weights, which the shipping commit measures).

    python scripts/store_fp16.py models/shapes/unet models/shapes/text_encoder ...

Each file is written to a temporary name beside it and renamed over the original (atomic). Integer tensors and
tensors already in a 16-bit type are kept as they are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pocketdiff.io import atomic_path


def store_fp16(directory: Path) -> tuple[int, int]:
    before = after = 0
    for f in sorted(directory.glob("*.safetensors")):
        tensors = load_file(f)
        meta = {"format": "pt"}
        half = {k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}
        before += f.stat().st_size
        with atomic_path(f) as tmp:
            save_file(half, str(tmp), metadata=meta)
        after += f.stat().st_size
    return before, after


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        b, a = store_fp16(Path(arg))
        print(f"{arg}: {b / 1e6:.2f} MB -> {a / 1e6:.2f} MB")
