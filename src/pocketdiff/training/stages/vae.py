"""Stage `vae`: a small diffusers `AutoencoderKL` (64x64x3 -> 16x16x4), reconstruction + tiny KL, no GAN.

The loss follows LDM/SD's convention: reconstruction and KL are both summed over each image (we divide both by the
pixel count, which leaves their ratio unchanged), so `kl_weight` 1e-6 means what it means for SD's VAE. The shapes
config uses 1.2288e-2 (12,288x SD's): its posterior is as wide as the signal (std 0.64 against a spread of 0.73 in
the means), and a teacher on it learned faster than one on an SD-weighted VAE (docs/shapes-world.md).

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

from pocketdiff.data.batches import image_batch, image_stream, open_dataset
from pocketdiff.data.shapes import heldout_images, to_uint8
from pocketdiff.errors import DataError
from pocketdiff.evaluation.reconstruction import evaluate_vae
from pocketdiff.models import build_vae
from pocketdiff.training.loop import Stage, call_method, make_grid

SCALING_SEED = 20_000





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
        self.dataset_source = open_dataset(o.data, o.image_size)
        return {"vae": build_vae(o.block_out_channels, o.layers_per_block, o.latent_channels, o.norm_num_groups,
                                 o.mid_block_attention, o.image_size)}

    def dataset(self):
        o = self.opts
        return image_stream(o.data, self.dataset_source, self.cfg.seed, o.two_object_fraction,
                            lambda ex, rng: {"pixel_values": ex["pixel_values"]}, size=o.image_size)

    def compute_loss(self, models, frozen, batch):
        x = batch["pixel_values"]
        posterior = call_method(models["vae"], "encode", x).latent_dist
        rec = call_method(models["vae"], "decode", posterior.sample()).sample.float()
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
            x = image_batch(self.opts.data, rng, n, self.opts.two_object_fraction, self.dataset_source)["pixel_values"]
            latents.append(vae.encode(x.to(vae.device, vae.dtype)).latent_dist.sample().float())
        return torch.cat(latents).std().item()

    def export(self, models, frozen, export_dir: Path) -> None:
        vae = models["vae"]
        std = self.measure_latent_std(vae)
        vae.register_to_config(scaling_factor=self.opts.latent_std / std)
        from pocketdiff.io import atomic_dir

        with atomic_dir(export_dir) as tmp:  # readers (and a kill) never see half a model
            vae.save_pretrained(str(tmp))
