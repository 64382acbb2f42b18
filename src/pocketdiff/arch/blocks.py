"""The UNet's building blocks. Parameter names follow diffusers' (`ResnetBlock2D`, `Transformer2DModel`,
`BasicTransformerBlock`, `Attention`, `FeedForward`) so that SD-1.5 weights load by renaming containers only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .spec import ResSpec, TfSpec


def _conv3x3(cin: int, cout: int, separable: bool) -> nn.Module:
    if not separable:
        return nn.Conv2d(cin, cout, 3, padding=1)
    # MobileDiffusion's separable conv: depthwise 3x3 then pointwise 1x1.
    return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin), nn.Conv2d(cin, cout, 1))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + time embedding, GroupNorm-SiLU-conv, + (1x1-projected) input. As SD's ResnetBlock2D."""

    def __init__(self, spec: ResSpec, in_channels: int, out_channels: int, temb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-5)
        self.conv1 = _conv3x3(in_channels, out_channels, spec.separable)
        self.time_emb_proj = nn.Linear(temb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-5)
        self.conv2 = _conv3x3(out_channels, out_channels, spec.separable)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    """Multi-head attention. `relu`: softmax replaced by ReLU(q k^T / sqrt(d)) / L_k (Wortsman et al. 2023, the
    variant MobileDiffusion fine-tunes into; the paper does not say which normalisation it used: this one is ours).
    `shared_kv`: one projection gives both keys and values (MobileDiffusion)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None, kind: str, shared_kv: bool):
        super().__init__()
        context_dim = context_dim or dim
        self.heads, self.kind, self.shared_kv = heads, kind, shared_kv
        self.to_q = nn.Linear(dim, dim, bias=False)
        if shared_kv:
            self.to_kv = nn.Linear(context_dim, dim, bias=False)
        else:
            self.to_k = nn.Linear(context_dim, dim, bias=False)
            self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, c = x.shape
        q = self.to_q(x)
        if self.shared_kv:
            k = v = self.to_kv(context)
        else:
            k, v = self.to_k(context), self.to_v(context)
        q, k, v = (t.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2) for t in (q, k, v))
        if self.kind == "softmax":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = F.relu(q @ k.transpose(-1, -2) * (c // self.heads) ** -0.5) / k.shape[-2]
            out = scores @ v
        return self.to_out[0](out.transpose(1, 2).reshape(b, n, c))


class GatedProj(nn.Module):
    """First FFN projection with its gate: GEGLU (SD) or Swish-GLU (MobileDiffusion: GELU is fragile in fp16/int8)."""

    def __init__(self, dim: int, inner: int, act: str):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)
        self.act = F.gelu if act == "geglu" else F.silu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * self.act(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: float, act: str):
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.ModuleList([GatedProj(dim, inner, act), nn.Identity(), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TransformerLayer(nn.Module):
    """[self-attention] -> [cross-attention] -> FFN, pre-LayerNorm and residual each (SD's BasicTransformerBlock)."""

    def __init__(self, spec: TfSpec, dim: int, context_dim: int):
        super().__init__()
        heads = spec.num_heads(dim)
        if spec.self_attn:
            self.norm1 = nn.LayerNorm(dim)
            self.attn1 = Attention(dim, heads, None, spec.attention, spec.shared_kv)
        if spec.cross_attn:
            self.norm2 = nn.LayerNorm(dim)
            # K/V sharing applies to self-attention, where K and V see the same tokens (MD does not say whether it
            # shares them in cross-attention too; we keep the text's K and V separate there).
            self.attn2 = Attention(dim, heads, context_dim, spec.attention, shared_kv=False)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, spec.ffn_mult, spec.ffn)
        self.self_attn, self.cross_attn = spec.self_attn, spec.cross_attn

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.self_attn:
            x = x + self.attn1(self.norm1(x))
        if self.cross_attn:
            x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class TransformerBlock(nn.Module):
    """Spatial transformer: GroupNorm, 1x1 conv in, `depth` layers over the H*W tokens, 1x1 conv out, + input."""

    def __init__(self, spec: TfSpec, dim: int, context_dim: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, dim, eps=1e-6)
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.transformer_blocks = nn.ModuleList([TransformerLayer(spec, dim, context_dim) for _ in range(spec.depth)])
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for layer in self.transformer_blocks:
            t = layer(t, context)
        return x + self.proj_out(t.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
