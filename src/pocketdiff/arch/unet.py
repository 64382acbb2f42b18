"""FlexUNet: one conditional UNet class for every ArchSpec, with diffusers' `UNet2DConditionModel` calling convention.

It drops into a diffusers `StableDiffusionPipeline` as `pipe.unet`, and its `config.json` is its ArchSpec.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ..errors import SpecError, WeightsError
from ..loading import check_component_dir
from .blocks import Downsample, ResBlock, TransformerBlock, Upsample
from .spec import ArchSpec, ResSpec

BlockKey = tuple[str, int, int]  # (path, level, index) as in ArchSpec.all_blocks()


@dataclass
class FlexUNetOutput(BaseOutput):
    sample: torch.Tensor


class Level(nn.Module):
    """The blocks of one level of the down or up path, and the sampler that follows them (if any)."""

    def __init__(self, blocks: Iterable[nn.Module], sampler: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.sampler = sampler


class FlexUNet(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        channels: list[int] = (320, 640, 1280, 1280),
        down: list = (),
        mid: list = (),
        up: list = (),
        in_channels: int = 4,
        out_channels: int = 4,
        sample_size: int = 64,
        cross_attention_dim: int = 768,
        time_embed_dim: int | None = None,
        norm_groups: int = 32,
        name: str = "custom",
        time_cond_proj_dim: None = None,  # read by diffusers pipelines (LCM); always None here
    ):
        super().__init__()
        spec = ArchSpec.from_dict(
            dict(channels=channels, down=down, mid=mid, up=up, in_channels=in_channels, out_channels=out_channels,
                 sample_size=sample_size, cross_attention_dim=cross_attention_dim, time_embed_dim=time_embed_dim,
                 norm_groups=norm_groups, name=name)
        )
        self.spec = spec
        g, temb, ctx = spec.norm_groups, spec.temb_dim, spec.cross_attention_dim

        def make(block, cin: int, cout: int) -> nn.Module:
            if isinstance(block, ResSpec):
                return ResBlock(block, cin, cout, temb, g)
            if cin != cout:
                raise SpecError(f"a tf block cannot change the width ({cin} -> {cout}): put a res block first")
            return TransformerBlock(block, cout, ctx, g)

        self.time_proj = Timesteps(spec.channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(spec.channels[0], temb)
        self.conv_in = nn.Conv2d(spec.in_channels, spec.channels[0], 3, padding=1)

        ch, last = spec.channels[0], spec.num_levels - 1
        self.down_levels = nn.ModuleList()
        for lvl, blocks in enumerate(spec.down):
            mods = []
            for b in blocks:
                mods.append(make(b, ch, spec.channels[lvl]))
                ch = spec.channels[lvl]
            self.down_levels.append(Level(mods, Downsample(ch) if lvl < last else None))

        mids = []
        for b in spec.mid:
            mids.append(make(b, ch, spec.channels[-1]))
            ch = spec.channels[-1]
        self.mid_blocks = nn.ModuleList(mids)

        skip_channels = spec.skip_channels()
        up_levels: list[Level] = [None] * spec.num_levels  # type: ignore[list-item]
        for lvl in reversed(range(spec.num_levels)):
            pending, mods = list(skip_channels[lvl]), []
            for b in spec.up[lvl]:
                cin = ch + (pending.pop() if b.kind == "res" and pending else 0)
                mods.append(make(b, cin, spec.channels[lvl]))
                ch = spec.channels[lvl]
            up_levels[lvl] = Level(mods, Upsample(ch) if lvl > 0 else None)
        self.up_levels = nn.ModuleList(up_levels)

        self.conv_norm_out = nn.GroupNorm(g, spec.channels[0], eps=1e-5)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(spec.channels[0], spec.out_channels, 3, padding=1)

        # Blocks to run as identity: robust training (random per step) and architecture evolving (chosen). Only
        # blocks that keep the tensor's shape may be skipped; see `droppable()`.
        self.skipped: set[BlockKey] = set()
        # Feature distillation: when a dict, forward stores each stage's output in it ("down0".., "mid", "up0"..):
        # a down level's output before its downsampler, the mid output, an up level's output before its upsampler.
        self.capture: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ structure helpers
    @classmethod
    def from_spec(cls, spec: ArchSpec) -> "FlexUNet":
        return cls(**spec.to_dict())

    def block(self, key: BlockKey) -> nn.Module:
        path, lvl, i = key
        if path == "mid":
            return self.mid_blocks[i]
        return (self.down_levels if path == "down" else self.up_levels)[lvl].blocks[i]

    def named_blocks(self) -> Iterable[tuple[BlockKey, nn.Module]]:
        for path, lvl, i, _ in self.spec.all_blocks():
            yield (path, lvl, i), self.block((path, lvl, i))

    def droppable(self) -> list[BlockKey]:
        """Blocks that can be replaced by identity without breaking shapes: every tf block and every res block whose
        input and output widths agree and that takes no skip (a res block that changes width or merges a skip
        cannot be dropped)."""
        keys = []
        for key, mod in self.named_blocks():
            if isinstance(mod, TransformerBlock) or (isinstance(mod, ResBlock) and mod.conv_shortcut is None):
                keys.append(key)
        return keys

    # ------------------------------------------------------------------ forward
    def _run(self, key: BlockKey, block: nn.Module, h: torch.Tensor, temb, ctx) -> torch.Tensor:
        if key in self.skipped:
            return h
        return block(h, temb) if isinstance(block, ResBlock) else block(h, ctx)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, return_dict: bool = True,
                **unused):
        spec = self.spec
        # 1. time: sinusoidal embedding of t, then an MLP (as SD)
        t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], device=sample.device)
        t = t.to(sample.device).reshape(-1).expand(sample.shape[0])
        temb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        ctx = encoder_hidden_states

        # 2. pre-process
        h = self.conv_in(sample)

        # 3. down: record the level input and each unit's output (the skip rule in spec.py)
        skips: list[list[torch.Tensor]] = []
        for lvl, level in enumerate(self.down_levels):
            rec = [h]
            for i, (b, mod) in enumerate(zip(spec.down[lvl], level.blocks)):
                if b.kind == "res" and i > 0:
                    rec.append(h)
                h = self._run(("down", lvl, i), mod, h, temb, ctx)
            if spec.down[lvl]:
                rec.append(h)
            skips.append(rec)
            if self.capture is not None:
                self.capture[f"down{lvl}"] = h
            if level.sampler is not None:
                h = level.sampler(h)

        # 4. mid
        for i, mod in enumerate(self.mid_blocks):
            h = self._run(("mid", spec.num_levels - 1, i), mod, h, temb, ctx)
        if self.capture is not None:
            self.capture["mid"] = h

        # 5. up: each res block merges the last unconsumed skip of its level
        for lvl in reversed(range(spec.num_levels)):
            level, rec = self.up_levels[lvl], skips[lvl]
            for i, (b, mod) in enumerate(zip(spec.up[lvl], level.blocks)):
                if b.kind == "res" and rec:
                    h = torch.cat([h, rec.pop()], dim=1)
                    h = mod(h, temb)  # a res block that merges a skip is never skipped
                else:
                    h = self._run(("up", lvl, i), mod, h, temb, ctx)
            if self.capture is not None:
                self.capture[f"up{lvl}"] = h
            if level.sampler is not None:
                h = level.sampler(h)

        # 6. post-process
        out = self.conv_out(self.conv_act(self.conv_norm_out(h)))
        return FlexUNetOutput(sample=out) if return_dict else (out,)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "FlexUNet":
        """`ModelMixin.from_pretrained` for local directories, with errors that say what is wrong."""
        path = Path(pretrained_model_name_or_path)
        if kwargs.get("subfolder"):
            path = path / kwargs["subfolder"]
        check_component_dir(path, expect="FlexUNet")
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except (ValueError, RuntimeError) as e:
            raise WeightsError(f"cannot load weights from {path}: {e}") from e

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        load_state_dict_strict(self, state_dict)


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load with no missing or unexpected keys; on a shape mismatch name the first key and both shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise WeightsError(
            f"weights do not fit the model: {len(missing)} missing (first: {missing[:3]}), "
            f"{len(unexpected)} unexpected (first: {unexpected[:3]})"
        )
    for k, v in own.items():
        if v.shape != state_dict[k].shape:
            raise WeightsError(f"weight '{k}' has shape {tuple(state_dict[k].shape)}, the model expects {tuple(v.shape)}")
    model.load_state_dict(state_dict, strict=True)
