"""The pipeline's components at full size (or scaled down by `width` for tests), random weights: latency does not
depend on the values. Every builder seeds itself, so a model is the same whichever order they are built in."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..profiling.components import TEXT_ENCODER_CONFIG, TextEncoder, VAEDecoder
from ..pruning.decoder import SD15_VAE_CONFIG, SlimAutoencoderKL
from .configs import DECODERS

PRUNED_RATIO = 0.5  # SnapFusion's efficient decoder: 50% of every decoder width
TINY_CHANNELS = 64  # TAESD's width


def _round8(x: float) -> int:
    return max(8, int(round(x / 8)) * 8)


def text_hidden(width: float = 1.0) -> int:
    """The text encoder's width = the UNet's cross-attention dim (768 at full size)."""
    return TEXT_ENCODER_CONFIG["hidden_size"] if width == 1.0 else _round8(768 * width)


def text_encoder_config(width: float = 1.0) -> dict:
    cfg = dict(TEXT_ENCODER_CONFIG)
    if width != 1.0:
        h = text_hidden(width)
        cfg.update(hidden_size=h, intermediate_size=4 * h, projection_dim=h, num_attention_heads=4 if h % 4 == 0 else 1,
                   num_hidden_layers=max(1, round(12 * width)))
    return cfg


def build_text_encoder(name: str = "clip-l", width: float = 1.0, seed: int = 0) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TextEncoder(CLIPTextModel(CLIPTextConfig(**text_encoder_config(width)))).eval()


def build_unet(preset: str, width: float = 1.0, seed: int = 0) -> nn.Module:
    from ..arch import create

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kw = {} if width == 1.0 else dict(cross_attention_dim=text_hidden(width))
        return create(preset, width=width, **kw).eval()


def vae_config(kind: str, width: float = 1.0) -> dict:
    """SlimAutoencoderKL config of decoder `kind` (sd / pruned / tiny), SD-1.5's VAE scaled by `width`."""
    if kind not in DECODERS:
        from ..errors import SpecError

        raise SpecError(f"decoder {kind!r}: choose one of {', '.join(DECODERS)}")
    cfg = dict(SD15_VAE_CONFIG)
    widths = tuple(cfg["block_out_channels"]) if width == 1.0 else tuple(_round8(c * width) for c in
                                                                         cfg["block_out_channels"])
    pruned = tuple(_round8(c * PRUNED_RATIO) for c in widths)
    g = math.gcd(*widths, *pruned)
    groups = max(d for d in range(1, 33) if g % d == 0)
    cfg.update(block_out_channels=widths, norm_num_groups=groups)
    if kind == "pruned":
        cfg.update(decoder_type="pruned", decoder_block_out_channels=pruned)
    elif kind == "tiny":
        cfg.update(decoder_type="tiny", tiny_channels=TINY_CHANNELS if width == 1.0 else _round8(64 * width))
    return cfg


def build_decoder(kind: str, width: float = 1.0, seed: int = 0) -> nn.Module:
    """post_quant_conv + decoder (what `vae.decode` runs) of decoder `kind`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = SlimAutoencoderKL(**vae_config(kind, width))
    return VAEDecoder(vae).eval()


def text_inputs(batch: int, width: float = 1.0) -> tuple[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    cfg = text_encoder_config(width)
    return (torch.randint(0, cfg["vocab_size"], (batch, cfg["max_position_embeddings"]), generator=g),)


def unet_inputs(batch: int, latent: int, width: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = TEXT_ENCODER_CONFIG["max_position_embeddings"]
    return (torch.randn(batch, 4, latent, latent, generator=g), torch.full((batch,), 999),
            torch.randn(batch, n, text_hidden(width), generator=g))


def decoder_inputs(batch: int, latent: int) -> tuple[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 4, latent, latent, generator=g),)


__all__ = ["build_decoder", "build_text_encoder", "build_unet", "decoder_inputs", "text_encoder_config",
           "text_hidden", "text_inputs", "unet_inputs", "vae_config"]
