"""A tiny CLIP for the shapes world: a transformers `CLIPTextModel` (what the UNet conditions on, frozen after
contrastive training, as SD freezes CLIP) and a small CNN image tower with both projection heads (for the domain
CLIP score).

Text pooling. Standard CLIP pools the `<eos>` state, so only that one state receives contrastive gradient. The UNet
cross-attends to *all* `last_hidden_state` tokens (as SD-1.5, pads included), so we pool by the mean over all
context positions: every state the UNet will see is trained to carry caption information. With the causal mask,
each word state summarises its prefix and each pad state the whole caption.

Layout on disk (inside a diffusers-style model directory):
    tokenizer/      PreTrainedTokenizerFast          (pocketdiff.text.tokenizer)
    text_encoder/   CLIPTextModel.save_pretrained    (config.json + model.safetensors)
    clip_image/     CLIPImageTower.save_pretrained   (diffusers ModelMixin: config.json + safetensors);
                    the image CNN, image and text projections and the learned temperature
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from pocketdiff.errors import ModelDirError
from pocketdiff.text.tokenizer import BOS, EOS, PAD, load_tokenizer, tokenize_prompts


def text_encoder_config(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 128,
    num_layers: int = 3,
    num_heads: int = 4,
    intermediate_size: int = 512,
) -> CLIPTextConfig:
    """A small CLIPTextConfig sized to `tokenizer` (vocab, context = max_position_embeddings, special ids)."""
    ids = tokenizer.convert_tokens_to_ids([PAD, BOS, EOS])
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=hidden_size,
        hidden_act="gelu",
        pad_token_id=ids[0],
        bos_token_id=ids[1],
        eos_token_id=ids[2],  # != 2, so transformers pools the first <eos> (not the legacy argmax)
    )


def build_text_encoder(tokenizer: PreTrainedTokenizerFast, **kwargs) -> CLIPTextModel:
    return CLIPTextModel(text_encoder_config(tokenizer, **kwargs))


def encode_prompts(tokenizer: PreTrainedTokenizerFast, text_encoder: CLIPTextModel, prompts: str | Sequence[str]) -> torch.Tensor:
    """Prompts -> `last_hidden_state` [B, L, D] (L = the tokenizer's context), what the UNet cross-attends to.

    "" encodes to the unconditional embedding (bos, eos, pads). Unknown words and over-long prompts warn (see
    `tokenize_prompts`). Runs with the encoder's current grad mode; wrap in `torch.no_grad()` for a frozen one."""
    device = next(text_encoder.parameters()).device
    ids = tokenize_prompts(tokenizer, prompts).to(device)
    return text_encoder(input_ids=ids).last_hidden_state


def pool_text(last_hidden_state: torch.Tensor) -> torch.Tensor:
    """Mean over all context positions (see the module docstring for why not the <eos> state)."""
    return last_hidden_state.mean(dim=1)


class CLIPImageTower(ModelMixin, ConfigMixin):
    """CNN image encoder (64 -> 4x4, position-preserving flatten) + image/text projections + temperature."""

    @register_to_config
    def __init__(
        self,
        image_size: int = 64,
        block_out_channels: tuple[int, ...] = (32, 64, 128, 128),
        hidden_dim: int = 256,
        text_hidden_size: int = 128,
        embed_dim: int = 128,
        logit_scale_init: float = math.log(1 / 0.07),
    ):
        super().__init__()
        layers, cin = [], 3
        for cout in block_out_channels:  # each level halves the resolution
            layers += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
            ]
            cin = cout
        self.encoder = nn.Sequential(*layers)
        side = image_size // 2 ** len(block_out_channels)
        self.image_head = nn.Sequential(
            nn.Flatten(), nn.Linear(cin * side * side, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, embed_dim)
        )
        self.text_proj = nn.Linear(text_hidden_size, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> unit-norm embeddings [B, E]."""
        return F.normalize(self.image_head(self.encoder(pixel_values)), dim=-1)

    def encode_text(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """Text encoder states [B, L, D] -> unit-norm embeddings [B, E]."""
        return F.normalize(self.text_proj(pool_text(last_hidden_state)), dim=-1)

    def forward(self, pixel_values: torch.Tensor, last_hidden_state: torch.Tensor):
        """(image embeddings, text embeddings, logit scale): one call for training, so that DDP sees the step."""
        return self.encode_image(pixel_values), self.encode_text(last_hidden_state), self.logit_scale


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): cross-entropy of exp(t) * cos(image_i, text_j) against the diagonal, both ways."""
    logits = logit_scale.clamp(max=math.log(100)).exp() * image_emb @ text_emb.t()
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def load_clip(model_dir: str | Path) -> tuple[PreTrainedTokenizerFast, CLIPTextModel, CLIPImageTower]:
    """(tokenizer, text_encoder, clip_image) from a model directory holding those three subfolders."""
    model_dir = Path(model_dir)
    for sub in ("tokenizer", "text_encoder", "clip_image"):
        if not (model_dir / sub).is_dir():
            raise ModelDirError(f"{model_dir}: no {sub}/ (train it with `pocketdiff train clip`)")
    from ..loading import load_component

    tokenizer = load_tokenizer(model_dir / "tokenizer")
    text_encoder = load_component(model_dir, "text_encoder", "CLIPTextModel")
    image = load_component(model_dir, "clip_image", "CLIPImageTower", (CLIPImageTower,))
    return tokenizer, text_encoder, image
