"""Domain CLIP score with the shipped tiny CLIP (text_encoder/ + clip_image/ of a model directory).

    clip_score(images, prompts) -> float     # the default model's domain CLIP; model_dir=DIR for another

As in the papers (and torchmetrics' CLIPScore): 100 * max(cos(image, text), 0), averaged over the pairs. Text is
embedded as in training (mean of the token states, then the text projection). The numbers are only comparable
between runs scored with the same CLIP checkpoint; they are not on OpenAI CLIP's scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from pocketdiff.errors import DataError


@lru_cache(maxsize=4)
def _load(model_dir: str, mtime: float):
    from pocketdiff.text.clip import load_clip

    return load_clip(model_dir)


def _as_tensor(images) -> torch.Tensor:
    """uint8 [N,H,W,3] array / list of HxWx3 arrays or PIL images / float [N,3,H,W] tensor in [-1,1] -> the latter."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise DataError(f"image tensor must be [N, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
        return images.float()
    arr = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise DataError(f"images must be uint8 HxWx3, got {arr.dtype} {arr.shape}")
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@torch.no_grad()
def clip_scores(images, prompts: Sequence[str], model_dir: str | Path | None = None, batch_size: int = 256) -> torch.Tensor:
    """Per-pair scores, 100 * max(cos, 0): a float tensor [N]. `model_dir` defaults to the default model
    (`pocketdiff.resources.default_model_dir`)."""
    from pocketdiff.resources import default_model_dir
    from pocketdiff.text.tokenizer import tokenize_prompts

    model_dir = default_model_dir() if model_dir is None else model_dir
    if isinstance(prompts, str):
        prompts = [prompts]
    x = _as_tensor(images)
    if len(x) != len(prompts):
        raise DataError(f"{len(x)} images but {len(prompts)} prompts")
    tokenizer, text_encoder, tower = _load(str(Path(model_dir).resolve()), _mtime(model_dir))
    size = tower.config.image_size
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    out = []
    for i in range(0, len(x), batch_size):
        img = tower.encode_image(x[i: i + batch_size])
        states = text_encoder(input_ids=tokenize_prompts(tokenizer, prompts[i: i + batch_size])).last_hidden_state
        out.append(100 * (img * tower.encode_text(states)).sum(-1).clamp_min(0))
    return torch.cat(out)


def clip_score(images, prompts: Sequence[str], model_dir: str | Path | None = None) -> float:
    """Mean of 100 * max(cos(image, prompt), 0) with the domain CLIP in `model_dir`."""
    return clip_scores(images, prompts, model_dir).mean().item()


def _mtime(model_dir: str | Path) -> float:
    p = Path(model_dir) / "clip_image"
    return max((f.stat().st_mtime for f in p.iterdir()), default=0.0) if p.is_dir() else 0.0
