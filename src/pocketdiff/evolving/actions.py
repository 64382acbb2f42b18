"""The actions of SnapFusion's architecture evolving on a FlexUNet: remove a block, or add a copy of one.

A block is addressed as in `ArchSpec.all_blocks()`: (path, level, index). `edit(unet, remove, copy)` returns a new
FlexUNet whose spec lacks the removed blocks and has each copied block twice in a row; every surviving block keeps
its weights exactly (mapped by index, not by shape), a copy starts as its original's twin, and the stem, time MLP,
samplers and head are unchanged.

Which blocks can evolve (`evolvable`): every transformer block, and the ResNets of the bottleneck ("mid"). The other
ResNets either change the width or take part in the skip rule (a down ResNet starts a unit whose output is a skip;
an up ResNet merges one): removing or copying one would re-pair every later skip of its level with a ResNet of
another input width, i.e. a different network rather than the same one minus a block. Robust training still drops
down-path ResNets of unchanged width as identity (`FlexUNet.droppable`), which keeps the pairing.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from pocketdiff.arch.unet import FlexUNet

BlockKey = tuple[str, int, int]

_BLOCK_PREFIXES = tuple(f"{p}_levels.{lvl}.blocks." for p in ("down", "up") for lvl in range(16)) + ("mid_blocks.",)


def evolvable(spec) -> list[BlockKey]:
    """Blocks that evolving may remove or copy: every `tf` block and the mid path's `res` blocks."""
    return [(path, lvl, i) for path, lvl, i, b in spec.all_blocks() if b.kind == "tf" or path == "mid"]


def edit(unet: FlexUNet, remove: Iterable[BlockKey] = (), copy: Iterable[BlockKey] = ()) -> FlexUNet:
    """A new FlexUNet without the `remove` blocks and with a twin after each `copy` block (keys of `unet.spec`)."""
    remove, copy = set(remove), set(copy)
    spec = unet.spec
    allowed = set(evolvable(spec))
    for key in remove | copy:
        if key not in allowed:
            raise ValueError(f"block {key} cannot evolve (only transformer blocks and mid ResNets can; see "
                             f"pocketdiff.evolving.actions)")
    if remove & copy:
        raise ValueError(f"blocks both removed and copied: {sorted(remove & copy)}")

    origin: dict[BlockKey, BlockKey] = {}  # new key -> old key

    def rebuild(path: str, lvl: int, blocks) -> tuple:
        out = []
        for i, b in enumerate(blocks):
            if (path, lvl, i) in remove:
                continue
            for _ in range(2 if (path, lvl, i) in copy else 1):
                origin[(path, lvl, len(out))] = (path, lvl, i)
                out.append(b)
        return tuple(out)

    mid_level = spec.num_levels - 1
    new_spec = spec.replace(
        name=spec.name if spec.name.endswith("-evolved") else f"{spec.name}-evolved",
        down=tuple(rebuild("down", lvl, bl) for lvl, bl in enumerate(spec.down)),
        mid=rebuild("mid", mid_level, spec.mid),
        up=tuple(rebuild("up", lvl, bl) for lvl, bl in enumerate(spec.up)))
    new = FlexUNet.from_spec(new_spec).to(device=unet.device, dtype=unet.dtype)
    old_sd = unet.state_dict()
    with torch.no_grad():
        for name, param in new.state_dict().items():
            if not name.startswith(_BLOCK_PREFIXES):
                param.copy_(old_sd[name])
        for new_key, old_key in origin.items():
            new.block(new_key).load_state_dict(unet.block(old_key).state_dict())
    return new


__all__ = ["BlockKey", "edit", "evolvable"]
