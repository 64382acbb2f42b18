"""Stage `vae`: a small diffusers `AutoencoderKL` (64x64x3 -> 16x16x4), reconstruction + tiny KL, no GAN.

The loss follows LDM/SD's convention: reconstruction and KL are both summed over each image (we divide both by the
pixel count, which leaves their ratio unchanged), so `kl_weight` 1e-6 means what it means for SD's VAE. The shapes
config uses 1.2288e-2 (12,288x SD's): its posterior is as wide as the signal (std 0.64 against a spread of 0.73 in
the means), and a teacher on it learned faster than one on an SD-weighted VAE (docs/shapes-world.md, session 3).

After training, `scaling_factor` = `latent_std` / std of the latents (posterior samples, see `encode_latents`) of
`scaling_samples` training images is written into the exported config (SD-1.5's 0.18215 is the same statistic for
its VAE, with `latent_std` 1). `latent_std` < 1 is the input scaling of Chen 2023 ("On the importance of noise
scheduling for diffusion models", sec. 3.2): it lowers every SNR of the diffusion model by `latent_std`**2 without
touching the scheduler, so it carries into any diffusers pipeline. `evaluate_vae` measures PSNR and the judge's accuracy
on reconstructions (the ceiling of any diffusion model on this VAE) on held-out scenes rendered with a seed the
training stream never uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from pocketdiff.data.shapes import to_uint8
from pocketdiff.errors import DataError, ModelDirError
from pocketdiff.training.loop import Stage, make_grid, random_batch

EVAL_SEED = 10_000  # renders held-out scenes with jitter no training batch shares
SCALING_SEED = 20_000


def build_vae(
    block_out_channels=(32, 64, 128), layers_per_block: int = 1, latent_channels: int = 4, norm_num_groups: int = 32,
    mid_block_attention: bool = True, image_size: int = 64,
) -> AutoencoderKL:
    """len(block_out_channels) levels: downsampling 2**(levels - 1), e.g. 3 levels: 64x64 -> 16x16."""
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups, sample_size=image_size, mid_block_add_attention=mid_block_attention,
    )


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2 => 10 log10(4 / MSE))."""
    mse = (x.float().clamp(-1, 1) - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def heldout_images(n: int = 400, seed: int = EVAL_SEED, size: int = 64, with_prompts: bool = False):
    """Held-out scenes (heldout-single and heldout-two interleaved, n in all) rendered with `seed`: [n, 3, H, W] in
    [-1, 1] (and their prompts and object counts if `with_prompts`)."""
    from pocketdiff.data.shapes import heldout_prompts, render, to_tensor

    one, two = heldout_prompts("heldout-single"), heldout_prompts("heldout-two")
    pairs = [p for ab in zip(one, two) for p in ab]
    pairs = [pairs[i % len(pairs)] for i in range(n)]
    rng = np.random.default_rng(seed)
    images = to_tensor(np.stack([render(s, size, rng) for _, s in pairs]))
    if not with_prompts:
        return images
    return images, [p for p, _ in pairs], [len(s.objects) for _, s in pairs]


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


def load_vae(path: str | Path) -> AutoencoderKL:
    path = Path(path)
    if (path / "vae" / "config.json").is_file():
        path = path / "vae"
    if not (path / "config.json").is_file():
        raise ModelDirError(f"{path}: no VAE config.json (train one with `pocketdiff train vae`)")
    return AutoencoderKL.from_pretrained(str(path))


def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor, sample: bool = True,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Diffusion-scale latents of images: a posterior sample (default, as SD) or the posterior mean, x scaling_factor.

    Measured on the shapes world: this small VAE's posterior std averages 0.64 against a spread of 0.71 in its means,
    so training on samples puts ~45% of the target variance into noise (v-loss plateau 0.72). Training on means instead
    (with scaling_factor recomputed on means, 1.40, and GroupNorm at >= 4 channels per group) lowered the loss to ~0.18
    but made the samples worse: held-out accuracy during training (EMA, 24 prompts, 20 DDIM steps, w 3) 4% / 13% at
    steps 1000 / 2000 against 13% / 38% with samples (runs/teacher_v2_means, killed at step 2100). Our reading: the
    means raise every SNR ~1.9x and move the model's effort from composition (high noise) to latent detail.
    """
    posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    z = posterior.sample(generator=generator) if sample else posterior.mode()
    return z * vae.config.scaling_factor


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


class VAEStage(Stage):
    """Train the AutoencoderKL (64x64x3 -> 16x16x4) and export vae/ with its scaling_factor."""

    name = "vae"

    @dataclass
    class Options:
        block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
        layers_per_block: int = 1
        latent_channels: int = 4
        norm_num_groups: int = 8
        mid_block_attention: bool = True
        kl_weight: float = 1e-6  # relative to the per-image summed reconstruction loss, as in LDM/SD
        latent_std: float = 1.0  # std of scaled latents (Chen 2023 input scaling); 1 = SD's rule
        recon_loss: Literal["mse", "l1", "l1+mse"] = "mse"
        data: str = "shapes"  # or a folder for ImageCaptionFolder
        image_size: int = 64
        two_object_fraction: float = 0.5
        scaling_samples: int = 512
        eval_images: int = 400

    def build(self):
        o = self.opts
        if any(c % o.norm_num_groups for c in o.block_out_channels):
            raise DataError(f"options.block_out_channels {o.block_out_channels} must be multiples of "
                            f"norm_num_groups={o.norm_num_groups}")
        self.dataset = open_dataset(o.data, o.image_size)
        return {"vae": build_vae(o.block_out_channels, o.layers_per_block, o.latent_channels, o.norm_num_groups,
                                 o.mid_block_attention, o.image_size)}

    def get_batch(self, rng):
        b = image_batch(self.opts.data, rng, self.cfg.batch_size, self.opts.two_object_fraction, self.dataset)
        return {"pixel_values": b["pixel_values"]}

    def compute_loss(self, models, frozen, batch):
        x = batch["pixel_values"]
        posterior = models["vae"].encode(x).latent_dist
        rec = models["vae"].decode(posterior.sample()).sample.float()
        mse = F.mse_loss(rec, x)
        recon = {"mse": mse, "l1": F.l1_loss(rec, x), "l1+mse": F.l1_loss(rec, x) + mse}[self.opts.recon_loss]
        kl = posterior.kl().float().mean()  # summed over the latent, averaged over the batch
        # both terms per image summed (LDM/SD), then divided by the pixel count: recon is already a per-pixel mean
        return recon + self.opts.kl_weight * kl / x[0].numel(), {"mse": mse.item(), "kl": kl.item(),
                                                  "psnr": 10 * math.log10(4.0 / max(mse.item(), 1e-10))}

    def sample(self, models, frozen, rng):
        vae, x = models["vae"], heldout_images(8)
        rec = vae.decode(vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mode()).sample.float().cpu()
        both = torch.cat([x, rec.clamp(-1, 1)])
        return make_grid(to_uint8(both), cols=8)

    def evaluate(self, models, frozen):
        return evaluate_vae(models["vae"], n=self.opts.eval_images)

    @torch.no_grad()
    def measure_latent_std(self, vae: AutoencoderKL) -> float:
        rng = np.random.default_rng(SCALING_SEED)
        latents = []
        for start in range(0, self.opts.scaling_samples, 64):
            n = min(64, self.opts.scaling_samples - start)
            x = image_batch(self.opts.data, rng, n, self.opts.two_object_fraction, self.dataset)["pixel_values"]
            latents.append(vae.encode(x.to(vae.device, vae.dtype)).latent_dist.sample().float())
        return torch.cat(latents).std().item()

    def export(self, models, frozen, export_dir: Path) -> None:
        vae = models["vae"]
        std = self.measure_latent_std(vae)
        vae.register_to_config(scaling_factor=self.opts.latent_std / std)
        from pocketdiff.io import atomic_dir

        with atomic_dir(export_dir) as tmp:  # readers (and a kill) never see half a model
            vae.save_pretrained(str(tmp))
