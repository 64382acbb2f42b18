"""A TAESD-style tiny decoder (the baseline the pruned decoder is compared with): convolutions and ReLUs only.

    latents [B, 4, h, w] -> conv 3x3 -> ReLU -> (blocks, upsample x2, conv) x log2(factor) -> blocks -> conv 3x3
    -> image [B, 3, factor h, factor w], in the same range as AutoencoderKL's decoder output (about [-1, 1])

A block is three 3x3 convolutions with ReLUs between them and a skip connection around them (x + f(x), then ReLU).
No normalisation, no attention, nearest-neighbour upsampling: every op is a mobile-friendly primitive. At SD scale
(`channels=64`, x8, 3 blocks per stage) it has ~1.2M parameters against the SD decoder's 49.5M.

Same latent interface as the decoder it replaces: `latent_channels` in, the VAE's downsampling factor up, and it
receives what AutoencoderKL's decoder receives (the unscaled latent after `post_quant_conv`); `latent_scale` (the
VAE's `scaling_factor`) brings that back to unit variance first, and a soft clamp (3 tanh(z / 3), as TAESD) bounds it.
Ours: written from the idea (github.com/madebyollin/taesd), not its code.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TinyBlock(nn.Module):
    """x -> ReLU(x + conv(ReLU(conv(ReLU(conv(x))))))"""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.conv(x))


class TinyDecoder(nn.Module):
    """Latents -> image with `log2(upsample)` x2 stages of `blocks` TinyBlocks each (the last stage: 1 block)."""

    def __init__(self, latent_channels: int = 4, out_channels: int = 3, channels: int = 64, blocks: int = 3,
                 upsample: int = 8, latent_scale: float = 1.0):
        super().__init__()
        n_up = int(round(math.log2(upsample))) if upsample >= 1 else -1
        if n_up < 0 or 2**n_up != upsample:
            raise ValueError(f"upsample must be a power of 2 (4: 3-level VAE, 8: SD), got {upsample}")
        if channels < 1 or blocks < 1:
            raise ValueError(f"channels and blocks must be >= 1, got {channels}, {blocks}")
        self.latent_scale = float(latent_scale)  # from the VAE config; not a parameter
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, channels, 3, padding=1), nn.ReLU()]
        for _ in range(n_up):
            layers += [*(TinyBlock(channels) for _ in range(blocks)), nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(channels, channels, 3, padding=1, bias=False)]
        layers += [TinyBlock(channels), nn.Conv2d(channels, out_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, latent_embeds: torch.Tensor | None = None) -> torch.Tensor:
        # `latent_embeds`: accepted (and unused) so that this drops in where diffusers' Decoder is called
        z = z * self.latent_scale
        z = 3.0 * torch.tanh(z / 3.0)
        return self.layers(z)


__all__ = ["TinyBlock", "TinyDecoder"]
