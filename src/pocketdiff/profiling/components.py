"""The other two components of an SD-1.5 pipeline, at full size with random weights, for the talk's latency table
(text encoder / UNet / VAE decoder). Speed does not depend on the weights; the seed is set inside each builder (two
builders sharing the global RNG gave different weights in measured.md's ONNX check).
"""

from __future__ import annotations

import torch
from torch import nn

# CLIP ViT-L/14's text tower (SD-1.5's text encoder): 123.1M params.
TEXT_ENCODER_CONFIG = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                           projection_dim=768)
# SD-1.5's VAE (AutoencoderKL): we keep post_quant_conv + decoder, 49.5M params, latent x8 -> image.
VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                  layers_per_block=2, act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512)


class TextEncoder(nn.Module):
    """`CLIPTextModel` returning the last hidden state (the UNet's context), for one batch of token ids."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).last_hidden_state


class VAEDecoder(nn.Module):
    """The decoding half of SD's AutoencoderKL: post_quant_conv, then the decoder (what `vae.decode` runs)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(latents))


def build_text_encoder(seed: int = 0) -> TextEncoder:
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TextEncoder(CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))).eval()


def build_vae_decoder(seed: int = 0) -> VAEDecoder:
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VAEDecoder(AutoencoderKL(**VAE_CONFIG)).eval()


def text_inputs(batch: int = 1, seed: int = 0) -> tuple[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = TEXT_ENCODER_CONFIG["max_position_embeddings"]
    return (torch.randint(0, TEXT_ENCODER_CONFIG["vocab_size"], (batch, n), generator=g),)


def decoder_inputs(latent: int, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, VAE_CONFIG["latent_channels"], latent, latent, generator=g),)


def component_costs(latent: int) -> dict[str, dict[str, int]]:
    """Params and FLOPs (2 per multiply-add) of the text encoder and the decoder, counted on the meta device."""
    from .flops import count_flops

    out = {}
    with torch.device("meta"):
        te, dec = build_text_encoder(), build_vae_decoder()
        ids = torch.zeros(1, TEXT_ENCODER_CONFIG["max_position_embeddings"], dtype=torch.long)
        z = torch.zeros(1, VAE_CONFIG["latent_channels"], latent, latent)
    for name, m, args in (("text_encoder", te, (ids,)), ("vae_decoder", dec, (z,))):
        out[name] = {"params": sum(p.numel() for p in m.parameters()), "flops": count_flops(m, *args)}
    return out


__all__ = ["TEXT_ENCODER_CONFIG", "VAE_CONFIG", "TextEncoder", "VAEDecoder", "build_text_encoder",
           "build_vae_decoder", "text_inputs", "decoder_inputs", "component_costs"]
