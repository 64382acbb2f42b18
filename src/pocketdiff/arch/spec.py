"""ArchSpec: a conditional UNet as data.

A UNet is a list of levels (one channel width each; level ``l`` runs at resolution ``sample_size / 2**l``) and, for the
down path, the bottleneck ("mid", at the last level) and the up path, the ordered blocks at each level. Block kinds:

- ``res``: ResNet block (option ``separable``: depthwise 3x3 + pointwise 1x1 convs, as MobileDiffusion);
- ``tf``: a spatial transformer (GroupNorm, 1x1 projection in, ``depth`` transformer layers, 1x1 projection out) with
  independent ``self_attn`` / ``cross_attn`` switches, FFN ``geglu`` (SD) or ``swiglu`` (MD's Swish-gated), expansion
  ``ffn_mult`` (SD 4; the gate doubles the first projection), ``attention`` ``softmax`` or ``relu``, ``shared_kv``.

Samplers are implicit: a stride-2 conv after every down level but the last, a nearest x2 upsample + conv after every up
level but the first (level 0). Blocks of a level all run at the level's width: the first ``res`` of a level changes
the channel count, so a level's block list must start with ``res`` wherever the incoming width differs.

Skip rule (one rule for any block counts; SD-1.5 comes out exactly):
  The down path records skips per level: the level's input (``conv_in`` output at level 0, the downsampler's output
  elsewhere), then the output of each *unit*, a unit being a ``res`` block and the ``tf`` blocks that follow it.
  So down level ``l`` with ``n_l`` ResNets records ``S_l = 1 + n_l`` skips (or 1 + number of units if the level
  starts with tf blocks). Up level ``l`` consumes exactly the skips of down level ``l``, last recorded first, one per
  ``res`` block, concatenated on the channel axis before that block. If the up level has more ResNets than skips the
  extra (last) ResNets take none; if fewer, the earliest skips of that level are unused (and so is the compute that
  made them, which the profiler will show). Violations that are errors: a non-empty down level whose up level has
  no ``res`` block to take its skips, and an up level whose first block is not ``res`` (nothing would merge the skip).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from ..errors import SpecError
from ..io import write_text_atomic

BlockKind = Literal["res", "tf"]


@dataclass(frozen=True)
class ResSpec:
    kind: Literal["res"] = "res"
    separable: bool = False  # MobileDiffusion: depthwise 3x3 + pointwise instead of a dense 3x3


@dataclass(frozen=True)
class TfSpec:
    kind: Literal["tf"] = "tf"
    self_attn: bool = True
    cross_attn: bool = True
    ffn: Literal["geglu", "swiglu"] = "geglu"
    ffn_mult: float = 4.0  # inner width = ffn_mult * channels; the gated first projection is twice that
    attention: Literal["softmax", "relu"] = "softmax"
    shared_kv: bool = False  # MobileDiffusion: one projection for keys and values (self-attention)
    heads: int | None = 8  # SD-1.5 fixes the head count (8); set head_dim instead to fix the head width
    head_dim: int | None = None
    depth: int = 1  # transformer layers inside one block (they share norm and projections)

    def num_heads(self, channels: int) -> int:
        return channels // self.head_dim if self.head_dim else int(self.heads)


BlockSpec = ResSpec | TfSpec
_BLOCK_TYPES: dict[str, type] = {"res": ResSpec, "tf": TfSpec}


def _block_from(obj: Any, where: str) -> BlockSpec:
    if isinstance(obj, (ResSpec, TfSpec)):
        return obj
    if isinstance(obj, str):
        obj = {"kind": obj}
    if not isinstance(obj, dict) or obj.get("kind") not in _BLOCK_TYPES:
        raise SpecError(f"{where}: a block is 'res', 'tf' or a mapping with kind res|tf, got {obj!r}")
    cls = _BLOCK_TYPES[obj["kind"]]
    known = {f.name for f in fields(cls)}
    unknown = set(obj) - known
    if unknown:
        raise SpecError(f"{where}: unknown option(s) {sorted(unknown)} for a {obj['kind']} block; known: {sorted(known)}")
    return cls(**obj)


def _block_to(block: BlockSpec) -> str | dict:
    """Shortest faithful form: 'res' / 'tf' when every option is the default."""
    default = type(block)()
    diff = {k: v for k, v in asdict(block).items() if v != getattr(default, k)}
    return block.kind if not diff else {"kind": block.kind, **diff}


@dataclass(frozen=True)
class ArchSpec:
    """A conditional UNet. Field names are the FlexUNet config keys, so `config.json` of a saved model is its spec."""

    channels: tuple[int, ...]
    down: tuple[tuple[BlockSpec, ...], ...]
    mid: tuple[BlockSpec, ...]
    up: tuple[tuple[BlockSpec, ...], ...]  # indexed by level like `down`; executed from the last level to level 0
    in_channels: int = 4
    out_channels: int = 4
    sample_size: int = 64
    cross_attention_dim: int = 768
    time_embed_dim: int | None = None  # default 4 * channels[0], as SD
    norm_groups: int = 32
    name: str = "custom"

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, d: dict) -> "ArchSpec":
        if not isinstance(d, dict):
            raise SpecError(f"an ArchSpec is a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - {"_class_name", "_diffusers_version", "_name_or_path", "time_cond_proj_dim"}
        if unknown:
            raise SpecError(f"unknown ArchSpec field(s) {sorted(unknown)}; known: {sorted(known)}")
        for req in ("channels", "down", "mid", "up"):
            if req not in d:
                raise SpecError(f"ArchSpec field '{req}' is missing")
        kw = {k: v for k, v in d.items() if k in known}
        kw["channels"] = tuple(int(c) for c in d["channels"])
        for path in ("down", "up"):
            levels = d[path]
            if not isinstance(levels, (list, tuple)) or len(levels) != len(kw["channels"]):
                raise SpecError(f"'{path}' must list one block list per level ({len(kw['channels'])} levels), got {levels!r}")
            kw[path] = tuple(
                tuple(_block_from(b, f"{path}[{lvl}][{i}]") for i, b in enumerate(blocks)) for lvl, blocks in enumerate(levels)
            )
        kw["mid"] = tuple(_block_from(b, f"mid[{i}]") for i, b in enumerate(d["mid"]))
        spec = cls(**kw)
        spec.validate()
        return spec

    @classmethod
    def load(cls, path: str | Path) -> "ArchSpec":
        """Read a spec from JSON or YAML (a saved FlexUNet's config.json works too)."""
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"no spec file at {path}")
        from ..loading import read_text

        text = read_text(path, error=SpecError)
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as e:  # noqa: BLE001 - any parse error is the same user problem
            raise SpecError(f"{path} is not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: {e}") from e
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "channels": list(self.channels),
            "down": [[_block_to(b) for b in blocks] for blocks in self.down],
            "mid": [_block_to(b) for b in self.mid],
            "up": [[_block_to(b) for b in blocks] for blocks in self.up],
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "sample_size": self.sample_size,
            "cross_attention_dim": self.cross_attention_dim,
            "time_embed_dim": self.time_embed_dim,
            "norm_groups": self.norm_groups,
        }

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        write_text_atomic(path, text)

    def replace(self, **changes) -> "ArchSpec":
        spec = replace(self, **changes)
        spec.validate()
        return spec

    # ----------------------------------------------------------------- derived facts
    @property
    def num_levels(self) -> int:
        return len(self.channels)

    @property
    def temb_dim(self) -> int:
        return self.time_embed_dim or 4 * self.channels[0]

    def resolution(self, level: int, sample_size: int | None = None) -> int:
        return (sample_size or self.sample_size) // 2**level

    def all_blocks(self):
        """Yield (path, level, index, block) in execution order: down levels, mid, up levels deepest first."""
        for lvl, blocks in enumerate(self.down):
            for i, b in enumerate(blocks):
                yield "down", lvl, i, b
        for i, b in enumerate(self.mid):
            yield "mid", self.num_levels - 1, i, b
        for lvl in reversed(range(self.num_levels)):
            for i, b in enumerate(self.up[lvl]):
                yield "up", lvl, i, b

    def counts(self) -> dict[str, int]:
        """ResNet / self-attention / cross-attention counts, as the papers count them (a transformer layer each)."""
        c = {"resnets": 0, "self_attn": 0, "cross_attn": 0, "transformers": 0}
        for _, _, _, b in self.all_blocks():
            if b.kind == "res":
                c["resnets"] += 1
            else:
                c["transformers"] += 1
                c["self_attn"] += b.depth * b.self_attn
                c["cross_attn"] += b.depth * b.cross_attn
        return c

    def skip_channels(self) -> list[list[int]]:
        """Channels of the skips each down level records, in recording order (see the module docstring)."""
        out = []
        for lvl, blocks in enumerate(self.down):
            in_ch = self.channels[max(lvl - 1, 0)]
            skips = [in_ch]
            units = sum(1 for i, b in enumerate(blocks) if b.kind == "res" or i == 0)
            skips += [self.channels[lvl]] * units
            out.append(skips)
        return out

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        if not self.channels or any(c <= 0 for c in self.channels):
            raise SpecError(f"'channels' must be positive widths, got {list(self.channels)}")
        for c in self.channels:
            if c % self.norm_groups:
                raise SpecError(f"channels {c} not divisible by norm_groups={self.norm_groups}")
        if self.sample_size % 2 ** (self.num_levels - 1):
            raise SpecError(f"sample_size {self.sample_size} not divisible by 2**{self.num_levels - 1} (levels)")
        for path, lvl, i, b in self.all_blocks():
            ch = self.channels[lvl]
            where = f"{path}[{lvl}][{i}]" if path != "mid" else f"mid[{i}]"
            if isinstance(b, TfSpec):
                if not (b.self_attn or b.cross_attn):
                    raise SpecError(f"{where}: a tf block needs self_attn or cross_attn")
                if b.head_dim is not None and (b.head_dim <= 0 or ch % b.head_dim):
                    raise SpecError(f"{where}: channels {ch} not divisible by head_dim={b.head_dim}")
                if b.head_dim is None and (not b.heads or b.heads <= 0 or ch % b.heads):
                    raise SpecError(f"{where}: channels {ch} not divisible by heads={b.heads}")
                if b.depth < 1 or b.ffn_mult <= 0:
                    raise SpecError(f"{where}: depth must be >= 1 and ffn_mult > 0")
        # The first block of a level must be res where the incoming width differs (it is the one that changes it).
        for lvl, blocks in enumerate(self.down):
            if blocks and lvl > 0 and self.channels[lvl] != self.channels[lvl - 1] and blocks[0].kind != "res":
                raise SpecError(f"down[{lvl}][0] must be 'res': it changes the width {self.channels[lvl - 1]} -> {self.channels[lvl]}")
            if not blocks and lvl > 0 and self.channels[lvl] != self.channels[lvl - 1]:
                raise SpecError(f"down[{lvl}] is empty but the width changes {self.channels[lvl - 1]} -> {self.channels[lvl]}")
        if self.mid and self.mid[0].kind != "res" and not self.down[-1] and self.channels[-1] != self.channels[max(0, self.num_levels - 2)]:
            raise SpecError("mid[0] must be 'res': the width changes before it")
        # Skip rule.
        for lvl in range(self.num_levels):
            up = self.up[lvl]
            if not up or up[0].kind != "res":
                raise SpecError(
                    f"skip rule: up[{lvl}] must start with a 'res' block to merge the skips of down[{lvl}] "
                    f"(got {[b.kind for b in up]})"
                )


def block_signature(block: BlockSpec, channels: int, in_channels: int, resolution: int, context_len: int,
                    context_dim: int) -> str:
    """Key of a block in the latency lookup table: kind, options, widths, resolution, context length."""
    opts = ",".join(f"{k}={v}" for k, v in asdict(block).items() if k != "kind")
    ctx = f"|ctx={context_len}x{context_dim}" if isinstance(block, TfSpec) and block.cross_attn else ""
    return f"{block.kind}({opts})|in={in_channels}|ch={channels}|res={resolution}{ctx}"


__all__ = ["ArchSpec", "ResSpec", "TfSpec", "BlockSpec", "block_signature", "field"]
