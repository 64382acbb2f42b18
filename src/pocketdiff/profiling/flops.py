"""Parameters, MACs and FLOPs of a UNet, per block and per stage, counted on the meta device (no memory; ~1 s for
SD-1.5).

FLOPs are `torch.utils.flop_counter.FlopCounterMode`'s: 2 per multiply-add (matmul, conv, attention); norms and
activations count 0. So GFLOPs = 2 x GMACs; SD-1.5 at 64x64 latent is 803 GFLOPs = 402 GMACs (the talk's Table 1
says 392 "GFLOPs" for it: a multiply-add count; compare ratios, not absolute numbers, across sources).

A UNet is cut into *units* (the rows of every profile): its blocks (`res`, `tf`, keyed like
`ArchSpec.all_blocks()`) and the parts that are not blocks: `stem` (time embedding MLP + conv_in), the `sampler`s and
the `head` (GroupNorm, SiLU, conv_out). Units belong to *stages*: `stem`, `down<l>`, `mid`, `up<l>`, `head`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..arch.spec import ArchSpec, BlockSpec, block_signature
from ..errors import SpecError

CONTEXT_LEN = 77  # CLIP's token count: the text context of every count and timing here


@dataclass(frozen=True)
class Unit:
    """One row of a profile: a block of the spec or a non-block part of the UNet (stem, sampler, head)."""

    name: str  # "down0.1", "mid.0", "up2.3", "down0.sampler", "stem", "head"
    stage: str  # "stem", "down0", "mid", "up2", "head"
    kind: str  # "res", "tf", "sampler", "stem", "head"
    label: str  # "res", "res(sep)", "tf(SA+CA)", "tf(CA)x2", "down", "up", ...
    level: int
    resolution: int  # latent side at which the unit runs (input side for samplers)
    in_channels: int
    channels: int
    key: tuple[str, int, int] | None = None  # (path, level, index) for blocks
    signature: str | None = None  # latency lookup-table key (blocks only)

    @property
    def is_block(self) -> bool:
        return self.key is not None


def block_label(block: BlockSpec) -> str:
    """Short human form: res, res(sep), tf(SA+CA), tf(CA), tf(SA+CA)x2 (depth)."""
    if block.kind == "res":
        return "res(sep)" if block.separable else "res"
    parts = [p for p, on in (("SA", block.self_attn), ("CA", block.cross_attn)) if on]
    return f"tf({'+'.join(parts)})" + (f"x{block.depth}" if block.depth > 1 else "")


def compact_labels(labels: list[str], min_run: int = 3) -> str:
    """'res tf(CA) res' as is; runs of >= `min_run` equal labels as '11x tf(SA+CA)'."""
    out, i = [], 0
    while i < len(labels):
        j = i
        while j < len(labels) and labels[j] == labels[i]:
            j += 1
        out += [f"{j - i}x {labels[i]}"] if j - i >= min_run else labels[i:j]
        i = j
    return " ".join(out)


def latent_size(spec: ArchSpec, resolution: int | None) -> int:
    """Latent side for an image `resolution` (pixels; latent = resolution / 8); None = the spec's sample_size."""
    if resolution is None:
        return spec.sample_size
    if resolution <= 0 or resolution % 8:
        raise SpecError(f"--resolution {resolution}: must be a positive multiple of 8 (the VAE downsamples 8x)")
    latent = resolution // 8
    step = 2 ** (spec.num_levels - 1)
    if latent % step:
        raise SpecError(f"--resolution {resolution}: latent {latent} must be divisible by {step} for "
                        f"{spec.num_levels} levels; use a multiple of {8 * step}")
    return latent


def units(spec: ArchSpec, latent: int | None = None, context_len: int = CONTEXT_LEN) -> list[Unit]:
    """Every unit of `spec` in execution order, with widths and latency-table signatures (from the spec alone, the
    wiring `FlexUNet` builds: up-path `res` blocks take the skip's channels on top of their input's)."""
    latent = latent or spec.sample_size
    n, out = spec.num_levels, []
    res = lambda lvl: latent // 2**lvl  # noqa: E731
    ctx_dim = spec.cross_attention_dim

    def block(path: str, lvl: int, i: int, b: BlockSpec, cin: int) -> Unit:
        ch = spec.channels[lvl]
        stage = "mid" if path == "mid" else f"{path}{lvl}"
        return Unit(f"{stage}.{i}", stage, b.kind, block_label(b), lvl, res(lvl), cin, ch, (path, lvl, i),
                    block_signature(b, ch, cin, res(lvl), context_len, ctx_dim))

    out.append(Unit("stem", "stem", "stem", "time MLP + conv_in", 0, latent, spec.in_channels, spec.channels[0]))
    ch = spec.channels[0]
    for lvl, blocks in enumerate(spec.down):
        for i, b in enumerate(blocks):
            out.append(block("down", lvl, i, b, ch))
            ch = spec.channels[lvl]
        if lvl < n - 1:
            out.append(Unit(f"down{lvl}.sampler", f"down{lvl}", "sampler", "down", lvl, res(lvl), ch, ch))
    for i, b in enumerate(spec.mid):
        out.append(block("mid", n - 1, i, b, ch))
        ch = spec.channels[-1]
    skips = spec.skip_channels()
    for lvl in reversed(range(n)):
        pending = list(skips[lvl])
        for i, b in enumerate(spec.up[lvl]):
            cin = ch + (pending.pop() if b.kind == "res" and pending else 0)
            out.append(block("up", lvl, i, b, cin))
            ch = spec.channels[lvl]
        if lvl > 0:
            out.append(Unit(f"up{lvl}.sampler", f"up{lvl}", "sampler", "up", lvl, res(lvl), ch, ch))
    out.append(Unit("head", "head", "head", "norm + conv_out", 0, latent, spec.channels[0], spec.out_channels))
    return out


def stages(spec: ArchSpec) -> list[str]:
    """Stage names in execution order."""
    n = spec.num_levels
    return ["stem", *[f"down{l}" for l in range(n)], "mid", *[f"up{l}" for l in reversed(range(n))], "head"]


def unit_modules(model: nn.Module, unit: Unit) -> list[nn.Module]:
    """The FlexUNet submodules that make up a unit (for hooks and FLOP attribution)."""
    if unit.is_block:
        return [model.block(unit.key)]
    if unit.kind == "stem":
        return [model.time_proj, model.time_embedding, model.conv_in]
    if unit.kind == "head":
        return [model.conv_norm_out, model.conv_act, model.conv_out]
    levels = model.down_levels if unit.label == "down" else model.up_levels
    return [levels[unit.level].sampler]


def dummy_inputs(spec: ArchSpec, latent: int, context_len: int = CONTEXT_LEN, batch: int = 1, device=None,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sample, timestep, encoder_hidden_states) for one forward; random values (zeros on the meta device)."""
    shapes = ((batch, spec.in_channels, latent, latent), (batch, context_len, spec.cross_attention_dim))
    t = torch.tensor([999] * batch, device=device)
    if str(device) == "meta":
        return torch.zeros(*shapes[0], device="meta"), t, torch.zeros(*shapes[1], device="meta")
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shapes[0], generator=g), t, torch.randn(*shapes[1], generator=g)


@dataclass
class UnitCost:
    unit: Unit
    params: int
    flops: int

    @property
    def macs(self) -> int:
        return self.flops // 2


@dataclass
class ArchCost:
    """Static cost of one forward (batch 1, a `context_len` x cross_attention_dim text context)."""

    spec: ArchSpec
    resolution: int  # image pixels (latent = resolution / 8)
    latent: int
    context_len: int
    units: list[UnitCost]
    params: int
    flops: int

    @property
    def macs(self) -> int:
        return self.flops // 2

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    def stage_rows(self) -> list[dict]:
        """Per stage: latent resolution, channels, the blocks' labels, params and FLOPs (samplers included)."""
        rows = []
        for st in stages(self.spec):
            us = [u for u in self.units if u.unit.stage == st]
            if not us:
                continue
            blocks = [u.unit.label for u in us if u.unit.is_block]
            lvl = us[0].unit.level if st not in ("stem", "head") else 0
            rows.append(dict(
                stage=st, resolution=us[0].unit.resolution, channels=self.spec.channels[lvl],
                blocks=compact_labels(blocks), samplers=sum(u.unit.kind == "sampler" for u in us),
                params=sum(u.params for u in us), flops=sum(u.flops for u in us),
                macs=sum(u.flops for u in us) // 2,
            ))
        return rows

    def by_kind(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for u in self.units:
            d = out.setdefault(u.unit.kind, {"params": 0, "flops": 0})
            d["params"] += u.params
            d["flops"] += u.flops
        return out

    def to_dict(self) -> dict:
        counts = self.spec.counts()
        return dict(
            name=self.spec.name, channels=list(self.spec.channels), resolution=self.resolution, latent=self.latent,
            context_len=self.context_len, params=self.params, params_m=self.params / 1e6, macs=self.macs,
            flops=self.flops, gflops=self.gflops, gmacs=self.macs / 1e9, resnets=counts["resnets"],
            self_attn=counts["self_attn"], cross_attn=counts["cross_attn"], transformers=counts["transformers"],
            by_kind=self.by_kind(), stages=self.stage_rows(),
            blocks=[dict(**{k: v for k, v in asdict(u.unit).items()}, params=u.params, flops=u.flops, macs=u.macs)
                    for u in self.units],
        )


def count_flops(module: nn.Module, *args, **kwargs) -> int:
    """Total FLOPs of `module(*args, **kwargs)` (2 per multiply-add); run it on meta tensors to make it free."""
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        module(*args, **kwargs)
    return int(fc.get_total_flops())


def analyze(spec: ArchSpec, resolution: int | None = 512, context_len: int = CONTEXT_LEN) -> ArchCost:
    """Params and FLOPs of `spec`, per unit, for one forward at `resolution` pixels (None: the spec's sample_size)."""
    from ..arch.unet import FlexUNet

    latent = latent_size(spec, resolution)
    with torch.device("meta"):
        model = FlexUNet.from_spec(spec)
    names = {id(m): n for n, m in model.named_modules()}
    root = type(model).__name__
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(*dummy_inputs(spec, latent, context_len, device="meta"))
    per_module = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}

    costs = []
    for u in units(spec, latent, context_len):
        mods = unit_modules(model, u)
        params = sum(p.numel() for m in mods for p in m.parameters())
        flops = sum(per_module.get(f"{root}.{names[id(m)]}", 0) for m in mods)
        costs.append(UnitCost(u, params, int(flops)))
    total_params = sum(p.numel() for p in model.parameters())
    return ArchCost(spec, resolution or spec.sample_size * 8, latent, context_len, costs, total_params,
                    int(fc.get_total_flops()))


def iter_block_units(spec: ArchSpec, latent: int | None = None, context_len: int = CONTEXT_LEN) -> Iterator[Unit]:
    return (u for u in units(spec, latent, context_len) if u.is_block)


__all__ = ["Unit", "UnitCost", "ArchCost", "CONTEXT_LEN", "analyze", "count_flops", "units", "stages",
           "unit_modules", "block_label", "latent_size", "dummy_inputs", "iter_block_units"]
