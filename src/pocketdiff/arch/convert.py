"""Weights in and out of FlexUNet: from a diffusers `UNet2DConditionModel`, and students from teachers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import SpecError
from .spec import ArchSpec, ResSpec, TfSpec
from ..loading import check_component_dir
from .unet import BlockKey, FlexUNet, load_state_dict_strict

# ---------------------------------------------------------------------------- diffusers -> ArchSpec

_DOWN = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
_UP = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}


def spec_from_diffusers_config(cfg: dict) -> ArchSpec:
    """The ArchSpec of a diffusers `UNet2DConditionModel` config (the SD-1.x family of block types)."""
    def get(k, default=None):
        return cfg.get(k, default) if isinstance(cfg, dict) else getattr(cfg, k, default)

    channels = list(get("block_out_channels"))
    n = len(channels)
    layers = get("layers_per_block", 2)
    layers = [layers] * n if isinstance(layers, int) else list(layers)
    heads = get("num_attention_heads") or get("attention_head_dim", 8)  # SD-1.x: "attention_head_dim" is the head count
    heads = [heads] * n if isinstance(heads, int) else list(heads)
    for k, expected in (("use_linear_projection", False), ("upcast_attention", False), ("class_embed_type", None),
                        ("addition_embed_type", None), ("time_cond_proj_dim", None)):
        if get(k, expected) != expected:
            raise SpecError(f"diffusers UNet option {k}={get(k)!r} is not supported (FlexUNet covers the SD-1.x topology)")
    down, up = [], []
    for lvl, t in enumerate(get("down_block_types")):
        if t not in _DOWN:
            raise SpecError(f"diffusers down block type {t!r} is not supported ({sorted(_DOWN)})")
        unit = [ResSpec(), TfSpec(heads=heads[lvl])] if _DOWN[t] else [ResSpec()]
        down.append(unit * layers[lvl])
    for i, t in enumerate(get("up_block_types")):
        if t not in _UP:
            raise SpecError(f"diffusers up block type {t!r} is not supported ({sorted(_UP)})")
        lvl = n - 1 - i
        unit = [ResSpec(), TfSpec(heads=heads[lvl])] if _UP[t] else [ResSpec()]
        up.append(unit * (layers[lvl] + 1))
    up.reverse()
    mid_type = get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid_type not in ("UNetMidBlock2DCrossAttn", None):
        raise SpecError(f"diffusers mid block type {mid_type!r} is not supported")
    mid = [ResSpec(), TfSpec(heads=heads[-1]), ResSpec()] if mid_type else []
    return ArchSpec.from_dict(dict(
        name="sd15-from-diffusers", channels=channels, down=down, mid=mid, up=up, in_channels=get("in_channels", 4),
        out_channels=get("out_channels", 4), sample_size=get("sample_size") or 64,  # diffusers allows None
        cross_attention_dim=get("cross_attention_dim", 768), norm_groups=get("norm_num_groups", 32),
    ))


def diffusers_block_prefix(spec: ArchSpec, key: BlockKey) -> str:
    """diffusers' module path of a FlexUNet block: the k-th res of a level is `resnets.k`, the k-th tf `attentions.k`."""
    path, lvl, i = key
    blocks = spec.mid if path == "mid" else (spec.down if path == "down" else spec.up)[lvl]
    kind = blocks[i].kind
    k = sum(1 for b in blocks[:i] if b.kind == kind)
    sub = "resnets" if kind == "res" else "attentions"
    if path == "mid":
        return f"mid_block.{sub}.{k}"
    if path == "down":
        return f"down_blocks.{lvl}.{sub}.{k}"
    return f"up_blocks.{spec.num_levels - 1 - lvl}.{sub}.{k}"


def flexunet_key_map(spec: ArchSpec) -> dict[str, str]:
    """FlexUNet module prefix -> diffusers module prefix, for every block and sampler."""
    m = {}
    for path, lvl, i, _ in spec.all_blocks():
        ours = f"mid_blocks.{i}" if path == "mid" else f"{path}_levels.{lvl}.blocks.{i}"
        m[ours] = diffusers_block_prefix(spec, (path, lvl, i))
    for lvl in range(spec.num_levels - 1):
        m[f"down_levels.{lvl}.sampler"] = f"down_blocks.{lvl}.downsamplers.0"
    for lvl in range(1, spec.num_levels):
        m[f"up_levels.{lvl}.sampler"] = f"up_blocks.{spec.num_levels - 1 - lvl}.upsamplers.0"
    return m


def convert_diffusers_state_dict(spec: ArchSpec, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inverse = {v: k for k, v in flexunet_key_map(spec).items()}
    out = {}
    for key, value in sd.items():
        new = key
        parts = key.split(".")
        for n in (4, 3, 2):  # longest matching container prefix: "down_blocks.0.resnets.1", "mid_block.resnets.0"
            prefix = ".".join(parts[:n])
            if prefix in inverse:
                new = inverse[prefix] + key[len(prefix):]
                break
        out[new] = value
    return out


def flexunet_from_diffusers(unet_or_path) -> FlexUNet:
    """A FlexUNet with the weights of a diffusers `UNet2DConditionModel` (an instance or a local directory)."""
    if isinstance(unet_or_path, (str, Path)):
        from diffusers import UNet2DConditionModel

        path = Path(unet_or_path)
        if (path / "unet").is_dir():
            path = path / "unet"
        check_component_dir(path, expect="UNet2DConditionModel")
        unet = UNet2DConditionModel.from_pretrained(path)
    else:
        unet = unet_or_path
    spec = spec_from_diffusers_config(dict(unet.config))
    model = FlexUNet.from_spec(spec)
    load_state_dict_strict(model, convert_diffusers_state_dict(spec, unet.state_dict()))
    return model.to(unet.dtype)


# ---------------------------------------------------------------------------- students from teachers

@dataclass
class InitReport:
    copied: list[tuple[BlockKey, BlockKey]] = field(default_factory=list)  # (student block, teacher block)
    duplicated: list[tuple[BlockKey, BlockKey]] = field(default_factory=list)  # a teacher block copied a second time
    partial: list[tuple[BlockKey, BlockKey]] = field(default_factory=list)  # shapes differ: tensors sliced (below)
    new: list[BlockKey] = field(default_factory=list)  # no teacher block of its kind: fresh initialisation
    dropped: list[BlockKey] = field(default_factory=list)  # teacher blocks the student does not keep
    other: list[str] = field(default_factory=list)  # non-block modules (stem, time MLP, samplers, head)

    def summary(self) -> str:
        return (f"{len(self.copied)} blocks copied, {len(self.duplicated)} duplicated, {len(self.partial)} partly "
                f"copied (sliced), {len(self.new)} new, {len(self.dropped)} teacher blocks dropped; "
                f"{len(self.other)} other tensors copied")


# GELU(z) ~ z sigmoid(1.702 z), so SiLU(1.702 z) ~ 1.702 GELU(z): a GEGLU gate becomes a Swish-GLU gate by scaling the
# gate's projection by 1.702 and the value's by 1 / 1.702.
_GELU_TO_SILU = 1.702


def _slice_into(dst: torch.Tensor, src: torch.Tensor, concat: tuple | None = None) -> bool:
    """Copy the leading corner of `src` into `dst` (the first channels of every dim) when ranks agree; the rest of a
    matrix is zero. `concat` = ((s_in, s_first), (t_in, t_first)): a dim of size s_in in dst and t_in in src holds two
    concatenated parts (an up-path ResNet's [h, skip] input); each part is cut to its own leading channels."""
    if dst.ndim != src.ndim:
        return False
    index_d, index_s = [], []
    for a, b in zip(dst.shape, src.shape):
        if concat and a != b and (a, b) == (concat[0][0], concat[1][0]):
            (_, sf), (_, tf) = concat
            n1, n2 = min(sf, tf), min(a - sf, b - tf)
            index_d.append(torch.cat([torch.arange(n1), sf + torch.arange(n2)]))
            index_s.append(torch.cat([torch.arange(n1), tf + torch.arange(n2)]))
        else:
            index_d.append(torch.arange(min(a, b)))
            index_s.append(torch.arange(min(a, b)))
    if dst.ndim > 1:
        dst.zero_()
    dst[torch.meshgrid(*index_d, indexing="ij")] = src[torch.meshgrid(*index_s, indexing="ij")]
    return True


def _partial_copy(dst: torch.nn.Module, src: torch.nn.Module, concat: tuple | None = None) -> int:
    """Initialise `dst` from a teacher block of the same kind whose shapes differ (channel width, FFN width, shared
    K/V, Swish-GLU, separable convs): each tensor takes the teacher tensor of the same name, cut to its leading
    channels (as width pruning keeps the first channels; weights outside the teacher's shape are zero, so a wider
    block starts as the narrower one). Shared K/V take the teacher's V projection; a Swish-GLU FFN takes the GEGLU's
    value and gate halves separately, rescaled so that SiLU approximates GELU. Tensors with no counterpart (a
    separable conv's two parts) keep their fresh initialisation. Returns the number of tensors set."""
    s_sd = src.state_dict()
    ff_act = {n: m.act for n, m in dst.named_modules() if type(m).__name__ == "GatedProj"}
    src_act = {n: m.act for n, m in src.named_modules() if type(m).__name__ == "GatedProj"}
    n_set = 0
    for name, t in dst.state_dict().items():
        key = name.replace(".to_kv.", ".to_v.")
        if key not in s_sd:
            continue
        src_t = s_sd[key]
        mod = name.rsplit(".", 2)[0]  # "....ff.net.0" of "....ff.net.0.proj.weight"
        if mod in ff_act and mod in src_act:  # GatedProj.proj: [value; gate] stacked on dim 0
            halves = []
            for d, s_half in zip(t.chunk(2, 0), src_t.chunk(2, 0)):
                h = d.clone()
                _slice_into(h, s_half)
                halves.append(h)
            if ff_act[mod] is not src_act[mod]:
                halves = [halves[0] / _GELU_TO_SILU, halves[1] * _GELU_TO_SILU]
            t.copy_(torch.cat(halves, 0))
            n_set += 1
        elif _slice_into(t, src_t, concat):
            n_set += 1
    return n_set


def _block_fits(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


def _skip_concat(s_spec: ArchSpec, s_key: BlockKey, t_spec: ArchSpec, t_key: BlockKey) -> tuple | None:
    """((s_in, s_h), (t_in, t_h)) for two up-path ResNets whose input is [h, skip]: the total input width and the
    width of h (the level's own width, or the deeper level's for the level's first block); None elsewhere."""
    def split(spec, key):
        path, lvl, i = key
        if path != "up" or spec.up[lvl][i].kind != "res":
            return None
        h = spec.channels[lvl + 1] if i == 0 and lvl < spec.num_levels - 1 else spec.channels[lvl]
        pending = list(spec.skip_channels()[lvl])
        for b in spec.up[lvl][:i]:
            if b.kind == "res" and pending:
                pending.pop()
        return (h + pending[-1], h) if pending else None
    s, t = split(s_spec, s_key), split(t_spec, t_key)
    return (s, t) if s and t else None


def init_from_teacher(teacher: FlexUNet, spec: ArchSpec, partial: bool = True) -> tuple[FlexUNet, InitReport]:
    """BK-SDM-style initialisation: each student block takes the weights of its teacher counterpart.

    Alignment, per (path, level): student blocks are matched in order to the teacher's blocks of the same kind and
    shape (a subsequence match, so removing blocks keeps the survivors' weights). A student block beyond the teacher's
    (an added copy, as SnapFusion's Up-2 with 6 transformers) copies the last matched teacher block of its kind.
    A block that fits no teacher block (another width, MobileDiffusion's shared K/V or Swish-GLU FFN, separable
    convs) is initialised from the teacher block of its kind in the same position (k-th of its kind in the level, or
    the level's last) by `_partial_copy` (sliced tensors); with no teacher block of its kind in the level it keeps its
    fresh initialisation (`partial=False`: every such block starts fresh). Stem, time MLP, samplers and head copy
    where shapes fit, else (with `partial`) their leading slice.
    """
    student = FlexUNet.from_spec(spec)
    rep = InitReport()
    t_spec = teacher.spec
    groups: dict[tuple[str, int], list] = {}
    for path, lvl, i, b in t_spec.all_blocks():
        groups.setdefault((path, lvl), []).append(i)
    used: set[BlockKey] = set()
    with torch.no_grad():
        for path, lvl in {(p, l) for p, l, _, _ in spec.all_blocks()} | set(groups):
            s_idx = [i for p, l, i, _ in spec.all_blocks() if (p, l) == (path, lvl)]
            t_idx = groups.get((path, lvl), [])
            cursor, last_of_kind = 0, {}
            for i in s_idx:
                s_key = (path, lvl, i)
                s_mod = student.block(s_key)
                match = None
                for j in range(cursor, len(t_idx)):
                    t_key = (path, lvl, t_idx[j])
                    if _block_fits(s_mod, teacher.block(t_key)):
                        match, cursor = t_key, j + 1
                        break
                kind = type(s_mod).__name__
                if match is not None:
                    s_mod.load_state_dict(teacher.block(match).state_dict())
                    rep.copied.append((s_key, match))
                    used.add(match)
                    last_of_kind[kind] = match
                elif kind in last_of_kind and _block_fits(s_mod, teacher.block(last_of_kind[kind])):
                    s_mod.load_state_dict(teacher.block(last_of_kind[kind]).state_dict())
                    rep.duplicated.append((s_key, last_of_kind[kind]))
                else:
                    t_lvl = t_spec.num_levels - 1 if path == "mid" else lvl  # the mid block sits at the deepest level
                    same_kind = [(path, t_lvl, j) for j in groups.get((path, t_lvl), [])
                                 if type(teacher.block((path, t_lvl, j))).__name__ == kind]
                    ordinal = sum(1 for k in s_idx[:s_idx.index(i)]
                                  if type(student.block((path, lvl, k))).__name__ == kind)
                    t_key = same_kind[min(ordinal, len(same_kind) - 1)] if same_kind else None
                    if partial and t_key and _partial_copy(s_mod, teacher.block(t_key),
                                                           _skip_concat(spec, s_key, t_spec, t_key)):
                        if any(t == t_key for _, t in rep.partial) and hasattr(s_mod, "proj_out"):
                            # a teacher transformer taken again (MobileDiffusion's bottleneck: 11 from the teacher's
                            # one mid transformer) starts as identity: 11 stacked copies of one residual would
                            # multiply its update
                            s_mod.proj_out.weight.zero_()
                            s_mod.proj_out.bias.zero_()
                        rep.partial.append((s_key, t_key))
                    else:
                        rep.new.append(s_key)
        rep.dropped = [(p, l, i) for p, l, i, _ in t_spec.all_blocks() if (p, l, i) not in used]
        t_sd = teacher.state_dict()
        block_prefixes = tuple(f"{p}_levels.{l}.blocks." for p in ("down", "up") for l in range(16)) + ("mid_blocks.",)
        for name, param in student.state_dict().items():
            if name.startswith(block_prefixes):
                continue
            if name in t_sd and (t_sd[name].shape == param.shape or (partial and _slice_into(param, t_sd[name]))):
                if t_sd[name].shape == param.shape:
                    param.copy_(t_sd[name])
                rep.other.append(name)
    return student, rep


def with_attention(unet: FlexUNet, kind: str) -> FlexUNet:
    """The same network and weights with every transformer's attention switched to `kind` ("relu" or "softmax").

    MobileDiffusion fine-tunes its softmax attention into ReLU attention (FID 12.50 -> 12.31); the projections are
    shared by both kinds, so the conversion copies every weight as-is and only the score normalisation changes
    (`pocketdiff arch relu`; fine-tune after with `pocketdiff train student --arch OUT --teacher-unet PARENT`)."""
    from dataclasses import replace

    if kind not in ("relu", "softmax"):
        raise SpecError(f"attention kind {kind!r}: choose relu or softmax")
    spec = unet.spec
    fix = lambda b: replace(b, attention=kind) if isinstance(b, TfSpec) else b  # noqa: E731
    new_spec = spec.replace(down=tuple(tuple(fix(b) for b in lv) for lv in spec.down),
                            mid=tuple(fix(b) for b in spec.mid),
                            up=tuple(tuple(fix(b) for b in lv) for lv in spec.up))
    out = FlexUNet.from_spec(new_spec)
    load_state_dict_strict(out, unet.state_dict())
    return out
