"""How well an autoencoder reconstructs held-out shapes scenes: PSNR and the judge's accuracy on reconstructions
(the ceiling of any diffusion model on that VAE)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from pocketdiff.data.shapes import heldout_images, to_uint8
from pocketdiff.models import load_vae


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2 => 10 log10(4 / MSE))."""
    mse = (x.float().clamp(-1, 1) - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def evaluate_vae(vae: AutoencoderKL | str | Path, n: int = 400, batch_size: int = 50) -> dict[str, float]:
    """Held-out reconstructions (encode -> posterior mode -> decode): PSNR (mean and 5th percentile, dB) and the
    judge's compositional accuracy on one- and two-object scenes, the ceiling of a diffusion model on this VAE."""
    from pocketdiff.evaluation.judge import evaluate as judge

    if not isinstance(vae, AutoencoderKL):
        vae = load_vae(vae)
    vae.eval()
    images, prompts, counts = heldout_images(n, size=vae.config.sample_size, with_prompts=True)
    device, dtype = vae.device, vae.dtype
    rec = torch.cat([vae.decode(vae.encode(chunk.to(device, dtype)).latent_dist.mode()).sample.float().cpu()
                     for chunk in images.split(batch_size)])
    s = psnr(rec, images)
    correct = judge(list(to_uint8(rec)), prompts)["correct"]
    result = {"eval_psnr": s.mean().item(), "eval_psnr_p05": s.quantile(0.05).item()}
    for k, name in ((1, "single"), (2, "two")):
        verdicts = [c for c, m in zip(correct, counts) if m == k]
        if verdicts:
            result[f"eval_judged_{name}"] = float(np.mean(verdicts))
    return result


__all__ = ["evaluate_vae", "psnr"]
