"""Diffusion utilities every stage shares: the noise schedule, training timesteps, the forward process on VAE
latents, and the min-SNR loss weight.

    scheduler = noise_schedule(opts)                  # diffusers' DDPMScheduler, trailing timesteps
    x0, eps, t, z_t = noised_latents(scheduler, vae, batch)   # z_t = alpha_t x0 + sigma_t eps
    w = min_snr_weight(scheduler, t, 5.0, "v_prediction")     # Hang et al. 2023, eq. 7

(The step-distillation losses, including the truncated-SNR weight, are in `pocketdiff.training.distill`.)
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler


def noise_schedule(o) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=o.num_train_timesteps, beta_schedule=o.beta_schedule,
                         prediction_type=o.prediction_type, clip_sample=False,
                         timestep_spacing="trailing")  # trailing: few-step samplers start at t = T - 1


def sample_timesteps(rng: np.random.Generator, n: int, num_train_timesteps: int, density: str = "uniform",
                     logit_mean: float = 0.0, logit_std: float = 1.0) -> np.ndarray:
    """n training timesteps in [0, T): uniform, or t / T = sigmoid(N(logit_mean, logit_std^2)) (SD3's logit-normal)."""
    if density == "uniform":
        return rng.integers(0, num_train_timesteps, size=n)
    u = 1.0 / (1.0 + np.exp(-rng.normal(logit_mean, logit_std, size=n)))
    return np.minimum((u * num_train_timesteps).astype(np.int64), num_train_timesteps - 1)


def min_snr_weight(scheduler, t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023, eq. 7), SNR_t = alpha_t^2 / sigma_t^2 (diffusers' `compute_snr`).

    The paper weights the x0-MSE by min(SNR, gamma). Since x0 - x0_hat = sigma (v_hat - v) = (sigma / alpha)
    (eps_hat - eps), that is min(SNR, gamma) / (SNR + 1) on the v-MSE and min(SNR, gamma) / SNR on the eps-MSE."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, t)
    capped = snr.clamp(max=gamma)
    return capped / (snr + 1) if prediction_type == "v_prediction" else capped / snr


def seeded_randn(seeds: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """[len(seeds), *shape] standard normal noise, example b's from its own generator seeded with seeds[b]: an
    example's noise depends on the example only, not on the batch it lands in (2 processes x B == 1 x 2B)."""
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def noised_latents(scheduler, vae, batch: dict, latent_sample: bool = True):
    """(x0, eps, t, z_t): the batch's images (or cached posteriors) as VAE latents, noise drawn from each example's
    `noise_seed` (exact resume without a torch RNG), z_t = alpha_t x0 + sigma_t eps (`scheduler.add_noise`)."""
    x0 = batch_latents(vae, batch, latent_sample)
    noise = seeded_randn(batch["noise_seed"] + 1, x0.shape[1:]).to(x0)
    t = batch["t"].to(x0.device)
    return x0, noise, t, scheduler.add_noise(x0, noise, t)


@torch.no_grad()
def batch_latents(vae, batch: dict, sample: bool = True) -> torch.Tensor:
    """x0 of a training batch (fp32): its images encoded (`encode_latents`), or, from a latent cache
    (`pocketdiff.data.latent_cache`), the saved posterior's sample, drawn from the batch's seed as the encoder path
    draws it, so the two give the same latents up to the cache's fp16 rounding. Example b's sample is drawn from
    its own `noise_seed` (`seeded_randn`)."""
    seeds = torch.as_tensor(batch["noise_seed"]).reshape(-1)
    if "latent_moments" not in batch:
        return encode_latents(vae, batch["pixel_values"], sample=sample, noise_seeds=seeds).float()
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    posterior = DiagonalGaussianDistribution(batch["latent_moments"].float())
    z = posterior.mean + posterior.std * seeded_randn(seeds, posterior.mean.shape[1:]).to(posterior.mean) \
        if sample else posterior.mode()
    return (z * vae.config.scaling_factor).float()


def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor, sample: bool = True,
                   noise_seeds: torch.Tensor | None = None) -> torch.Tensor:
    """Diffusion-scale latents of images: a posterior sample (default, as SD) or the posterior mean, x scaling_factor.
    `noise_seeds` (one per image): each posterior sample from its own seed (`seeded_randn`); None: the torch RNG.

    Measured on the shapes world: this small VAE's posterior std averages 0.64 against a spread of 0.71 in its means,
    so training on samples puts ~45% of the target variance into noise (v-loss plateau 0.72). Training on means instead
    (with scaling_factor recomputed on means, 1.40, and GroupNorm at >= 4 channels per group) lowered the loss to ~0.18
    but made the samples worse: held-out accuracy during training (EMA, 24 prompts, 20 DDIM steps, w 3) 4% / 13% at
    steps 1000 / 2000 against 13% / 38% with samples (runs/teacher_v2_means, killed at step 2100). Our reading: the
    means raise every SNR ~1.9x and move the model's effort from composition (high noise) to latent detail.
    """
    posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    if not sample:
        z = posterior.mode()
    elif noise_seeds is None:
        z = posterior.sample()
    else:  # what DiagonalGaussianDistribution.sample does, with per-example noise
        z = posterior.mean + posterior.std * seeded_randn(noise_seeds, posterior.mean.shape[1:]).to(posterior.mean)
    return z * vae.config.scaling_factor


    """(x0, eps, t, z_t): the batch's images (or cached posteriors) as VAE latents, noise drawn from each example's
    `noise_seed` (exact resume without a torch RNG), z_t = alpha_t x0 + sigma_t eps (`scheduler.add_noise`)."""
    x0 = batch_latents(vae, batch, latent_sample)
    noise = seeded_randn(batch["noise_seed"] + 1, x0.shape[1:]).to(x0)
