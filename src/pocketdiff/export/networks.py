"""The three networks of a pipeline as plain tensor-in, tensor-out modules (what an exporter traces), their fixed
example inputs, and the calibration set for int8: UNet inputs recorded along real sampling trajectories."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


class TextEncoderNet(nn.Module):
    """input_ids [B, L] int64 -> token states [B, L, D] (SD's `last_hidden_state`)."""

    def __init__(self, text_encoder):
        super().__init__()
        self.m = text_encoder

    def forward(self, input_ids):
        return self.m(input_ids=input_ids).last_hidden_state


class UNetNet(nn.Module):
    """(latents [B, C, H, W], timestep [B] float32, context [B, L, D]) -> eps or v [B, C, H, W]."""

    def __init__(self, unet):
        super().__init__()
        self.m = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.m(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class DecoderNet(nn.Module):
    """Scaled latents [B, C, h, w] (already divided by the VAE's scaling factor) -> image [B, 3, H, W] in [-1, 1]."""

    def __init__(self, vae):
        super().__init__()
        self.m = vae

    def forward(self, latents):
        return self.m.decode(latents).sample


@dataclass
class Shapes:
    """What fixes the networks' input shapes."""
    tokens: int  # the tokenizer's context length
    context_dim: int
    latent_channels: int
    latent_size: int

    @classmethod
    def of(cls, pipe) -> "Shapes":
        return cls(tokens=int(pipe.tokenizer.model_max_length), context_dim=int(pipe.text_encoder.config.hidden_size),
                   latent_channels=int(pipe.unet.config.in_channels), latent_size=int(pipe.unet.config.sample_size))


def example_inputs(shapes: Shapes, batch: int, seed: int = 0, vocab: int = 40) -> dict[str, tuple[torch.Tensor, ...]]:
    """Fixed, seeded inputs per network at `batch` rows (the parity check and the tracer use them)."""
    g = torch.Generator().manual_seed(seed)
    c, s = shapes.latent_channels, shapes.latent_size
    ids = torch.randint(1, vocab, (batch, shapes.tokens), generator=g)
    return {
        "text_encoder": (ids,),
        "unet": (torch.randn(batch, c, s, s, generator=g), torch.linspace(999, 1, batch),
                 torch.randn(batch, shapes.tokens, shapes.context_dim, generator=g)),
        "decoder": (torch.randn(batch, c, s, s, generator=g),),
    }


def calibration_prompts(n: int, seed: int = 4321) -> list[str]:
    """Shapes-world *training-split* captions (never the held-out prompts the quality is measured on)."""
    from ..data.shapes import caption, sample_scene

    rng = np.random.default_rng(seed)
    return [caption(sample_scene(rng, split="train"), rng) for _ in range(n)]


@torch.no_grad()
def record_unet_inputs(pipe, prompts: list[str], steps: int, guidance: float, scheduler: str = "ddim",
                       seed: int = 10_000) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The UNet's real inputs at every step of sampling `prompts` (timestep-aware calibration: activation ranges
    differ strongly between noise levels, so the calibration set covers the whole trajectory; Q-Diffusion, PTQ4DM).
    One entry per prompt and step, each the CFG batch of 2 (conditional, unconditional) at that step."""
    calls: list = []
    real = pipe.unet

    class Spy:  # stands in for the UNet during one sampling call (not a Module: the pipeline asks its modules' device)
        config, dtype = real.config, real.dtype

        def __call__(self, x, t, encoder_hidden_states):
            n = x.shape[0] // 2 if guidance != 1.0 else x.shape[0]
            for i in range(n):
                rows = [i, i + n] if guidance != 1.0 else [i]
                calls.append((x[rows].clone(), t.float().reshape(-1).expand(x.shape[0])[rows].clone(),
                              encoder_hidden_states[rows].clone()))
            return real(x, t, encoder_hidden_states=encoder_hidden_states)

    pipe.unet = Spy()
    try:
        pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, scheduler=scheduler, seed=seed, decode=False)
    finally:
        pipe.unet = real
    return calls
