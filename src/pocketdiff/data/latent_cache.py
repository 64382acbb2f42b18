"""A latent cache: a data set encoded once by the VAE, so training reads latents instead of running the encoder
every step (at 512 px the VAE encoder costs more than a small student UNet's step).

    pocketdiff data cache-latents --model SD15_V --data shards/ --n 100000 --out cache/   # once
    pocketdiff train student ... --set options.data=cache/                               # reads latents

On disk: `index.json` ({"n", "resolution", "scaling_factor", "vae", "shards": [...], "skipped"}) and shards
`latents-00000.safetensors` ("moments": [n, 2C, h, w], the posterior's mean and log-variance as diffusers'
`DiagonalGaussianDistribution` takes them, fp16) with `captions-00000.json` beside each. Training draws the
posterior sample from the moments with the example's seed, as it would from the encoder, so a cached run sees the
same distribution of latents as an uncached one. Shards are written atomically; a cache is complete once
index.json exists.
"""

from __future__ import annotations

import bisect
import itertools
from pathlib import Path

import torch

from pocketdiff.errors import DataError

INDEX = "index.json"


def is_latent_cache(path: str | Path) -> bool:
    return (Path(path) / INDEX).is_file()


@torch.no_grad()
def build_latent_cache(source, vae, out: str | Path, n: int | None = None, shard_size: int = 1000,
                       batch_size: int = 16, resolution: int | None = None, vae_name: str = "") -> dict:
    """Encode `source` (a map-style dataset, whole or its first `n` items; or an iterable, its first `n` examples)
    into a cache at `out`. Bad examples (None, or "skipped" counts of a stream) are counted in the index."""
    from safetensors.torch import save_file

    from pocketdiff.io import atomic_path, write_json_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if n is None and not hasattr(source, "__len__"):
        raise DataError("a streaming source is endless: give --n, the number of examples to cache")
    items = (source[i] for i in range(len(source) if n is None else min(n, len(source)))) \
        if hasattr(source, "__getitem__") and hasattr(source, "__len__") else iter(source)
    device = next(vae.parameters()).device
    shards, moments, captions, skipped, total = [], [], [], 0, 0
    pending_px, pending_cap = [], []

    def encode() -> None:
        if pending_px:
            x = torch.stack(pending_px).to(device, vae.dtype)
            moments.append(vae.encode(x).latent_dist.parameters.to(torch.float16).cpu())
            captions.extend(pending_cap)
            pending_px.clear()
            pending_cap.clear()

    def flush() -> None:
        encode()
        if captions:
            name = f"latents-{len(shards):05d}"
            with atomic_path(out / f"{name}.safetensors") as tmp:
                save_file({"moments": torch.cat(moments).contiguous()}, str(tmp))
            write_json_atomic(out / f"captions-{len(shards):05d}.json", captions)
            shards.append(name)
            moments.clear()
            captions.clear()

    for example in items:
        if example is None:
            skipped += 1
            continue
        skipped += int(example.get("skipped", 0))
        pending_px.append(example["pixel_values"])
        pending_cap.append(example["caption"])
        total += 1
        if len(pending_px) == batch_size:
            encode()
        if len(captions) + len(pending_px) == shard_size:
            flush()
        if n is not None and total >= n:
            break
    flush()
    if total == 0:
        raise DataError("the data source gave no usable example to cache")
    index = {"n": total, "skipped": skipped, "resolution": resolution, "scaling_factor": vae.config.scaling_factor,
             "vae": vae_name, "shards": shards}
    write_json_atomic(out / INDEX, index)
    return index


class LatentCache(torch.utils.data.Dataset):
    """A cache written by `build_latent_cache`, map-style: {"latent_moments": (2C, h, w) fp32, "caption"}."""

    def __init__(self, path: str | Path):
        from pocketdiff.loading import check_safetensors, read_json

        self.path = Path(path)
        index = read_json(self.path / INDEX, error=DataError)
        try:
            self.scaling_factor, shards = float(index["scaling_factor"]), list(index["shards"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{self.path / INDEX}: not a latent cache index (rebuild it with "
                            "`pocketdiff data cache-latents`)") from None
        self.resolution = index.get("resolution")
        for s in shards:
            check_safetensors(self.path / f"{s}.safetensors")
        self.files = [str(self.path / f"{s}.safetensors") for s in shards]
        self.captions = [read_json(self.path / f"{s.replace('latents', 'captions')}.json", error=DataError) for s in shards]
        self.starts = list(itertools.accumulate((len(c) for c in self.captions), initial=0))
        self._open: dict[int, object] = {}  # safetensors handles, opened lazily (per DataLoader worker)

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> dict:
        """Reads one latent from its memory-mapped shard (a million 512 px latents are 64 GB: nothing is preloaded)."""
        from safetensors import safe_open

        index = int(index)
        k = bisect.bisect_right(self.starts, index) - 1
        if k not in self._open:
            self._open[k] = safe_open(self.files[k], framework="pt")
        j = index - self.starts[k]
        return {"latent_moments": self._open[k].get_slice("moments")[j:j + 1][0].float(),
                "caption": self.captions[k][j]}
