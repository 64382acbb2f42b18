"""The networks of a model directory: loading and building them, shared by every stage and command.

A model directory is diffusers' pipeline layout (`tokenizer/`, `text_encoder/`, `vae/`, `unet/`, `scheduler/`,
`model_index.json`); a UNet is a FlexUNet directory (or a diffusers UNet2DConditionModel, converted on load).

    vae = load_vae("models/shapes")                       # the model's vae/ (or a VAE directory)
    unet = load_flexunet("models/shapes/unet_s8")          # a UNet directory, or a model directory's unet/
    sched_config, tokenizer, frozen = load_teacher("models/shapes")   # frozen context of the distillation stages
    student = init_student(frozen["teacher"], "mobilediffusion")     # a preset initialised from the teacher's blocks
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from diffusers import AutoencoderKL

from pocketdiff.errors import ConfigError, ModelDirError
from pocketdiff.io import atomic_dir


def build_vae(
    block_out_channels=(32, 64, 128), layers_per_block: int = 1, latent_channels: int = 4, norm_num_groups: int = 32,
    mid_block_attention: bool = True, image_size: int = 64,
) -> AutoencoderKL:
    """len(block_out_channels) levels: downsampling 2**(levels - 1), e.g. 3 levels: 64x64 -> 16x16."""
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups, sample_size=image_size, mid_block_add_attention=mid_block_attention,
    )


def load_vae(path: str | Path) -> AutoencoderKL:
    """A VAE directory, or a model directory's vae/ (strictly: pocketdiff.loading)."""
    from pocketdiff.loading import load_component_dir
    from pocketdiff.pruning.decoder import SlimAutoencoderKL

    path = Path(path)
    if not (path / "config.json").is_file() and not (path / "vae" / "config.json").is_file():
        raise ModelDirError(f"{path}: no VAE config.json (train one with `pocketdiff train vae`)")
    return load_component_dir(path, "vae", ("AutoencoderKL", "SlimAutoencoderKL"), (SlimAutoencoderKL,))


def load_flexunet(path: str | Path):
    """A UNet directory (or a model directory's unet/) as a FlexUNet; a diffusers UNet2DConditionModel is converted."""
    from pocketdiff.arch import FlexUNet, flexunet_from_diffusers
    from pocketdiff.loading import load_component_dir

    unet = load_component_dir(path, "unet", ("FlexUNet", "UNet2DConditionModel"), (FlexUNet,))
    return unet if isinstance(unet, FlexUNet) else flexunet_from_diffusers(unet)


def load_teacher(teacher_dir: str | Path, teacher_unet: str | Path | None = None):
    """A trained model directory as frozen training context: (scheduler config, tokenizer, {"teacher": FlexUNet,
    "vae", "text_encoder"}). The teacher must predict v; `teacher_unet` swaps in another UNet directory."""
    from pocketdiff.loading import read_scheduler_config

    root = Path(teacher_dir)
    if not (root / "scheduler").is_dir():
        raise ConfigError(f"options.teacher_dir: {root} has no scheduler/*.json (a trained model dir is needed)")
    sched_config = read_scheduler_config(root)
    if sched_config.get("prediction_type") != "v_prediction":
        raise ConfigError(f"{root}: the teacher must predict v, its scheduler says "
                          f"{sched_config.get('prediction_type')!r}: fine-tune it to v-prediction first, as SnapFusion "
                          f"does (`pocketdiff train vpred --teacher {root} --export DIR`, then --teacher DIR)")
    teacher = load_flexunet(teacher_unet or root / "unet").eval().requires_grad_(False)
    tokenizer, frozen = load_text_and_vae(root)
    return sched_config, tokenizer, {"teacher": teacher, **frozen}


def load_text_and_vae(model_dir: str | Path):
    """(tokenizer, {"vae", "text_encoder"}) of a model directory: the model's own tokenizer (the shapes world's
    word-level one, or SD-1.5's CLIP BPE) and text encoder, as the frozen context of a training stage."""
    from pocketdiff.loading import load_component, load_tokenizer_dir

    root = Path(model_dir)
    frozen = {"vae": load_vae(root / "vae"), "text_encoder": load_component(root, "text_encoder", "CLIPTextModel")}
    return load_tokenizer_dir(root, "tokenizer"), frozen


def init_student(teacher, arch: str | None, depth: float = 1.0, partial: bool = True):
    """The student UNet: a copy of the teacher (`arch` None), a saved UNet directory, or a preset / spec file
    initialised from the teacher's blocks (`init_from_teacher`, its report printed)."""
    from pocketdiff.arch import init_from_teacher

    if arch is None:
        return copy.deepcopy(teacher)
    if Path(arch).is_dir():
        return load_flexunet(arch)
    student, report = init_from_teacher(teacher, student_spec(arch, teacher.spec, depth), partial=partial)
    print(f"student from teacher: {report.summary()}")
    return student


def student_spec(name: str, teacher_spec, depth: float = 1.0):
    """A preset name or spec file, fitted to the teacher: width from the teacher's first channel count, the teacher's
    latent size, channels in/out, context width, and (if the teacher fixes it) its attention head width."""
    from dataclasses import replace

    from pocketdiff.arch import ArchSpec, TfSpec, get_spec

    if Path(name).is_file():
        spec = ArchSpec.load(name)
    else:
        spec = get_spec(name, width=teacher_spec.channels[0] / get_spec(name).channels[0], depth=depth)
    head_dim = next((b.head_dim for *_, b in teacher_spec.all_blocks() if b.kind == "tf" and b.head_dim), None)
    fix = (lambda b: replace(b, heads=None, head_dim=head_dim) if isinstance(b, TfSpec) else b) if head_dim else (lambda b: b)
    channels, groups = spec.channels, spec.norm_groups
    step = math.lcm(head_dim or 1, teacher_spec.norm_groups)
    if any(c % step for c in channels) and not Path(name).is_file():
        # the width rule can give a count that the teacher's head width or GroupNorm groups do not divide
        # (MobileDiffusion's 1024 at width 0.1: 102.4): round the unrounded width to the nearest multiple of both
        # (16 and 32: 102.4 -> 96, ties up) and keep the teacher's groups, so that blocks copied from the teacher
        # normalise as they did there (16 groups, from 112 channels, changed every copied block's GroupNorm)
        width = teacher_spec.channels[0] / get_spec(name).channels[0]
        channels = tuple(max(step, int(math.floor(c * width / step + 0.5)) * step) for c in get_spec(name).channels)
        groups = teacher_spec.norm_groups
    return spec.replace(
        channels=channels, norm_groups=groups,
        sample_size=teacher_spec.sample_size, cross_attention_dim=teacher_spec.cross_attention_dim,
        in_channels=teacher_spec.in_channels, out_channels=teacher_spec.out_channels,
        down=tuple(tuple(fix(b) for b in lv) for lv in spec.down), mid=tuple(fix(b) for b in spec.mid),
        up=tuple(tuple(fix(b) for b in lv) for lv in spec.up))


def save_unet(unet, export_dir, extra_json: dict[str, dict] | None = None) -> None:
    """`save_pretrained` into a temporary directory, then swap it in: readers never see half a model."""
    with atomic_dir(export_dir) as tmp:
        unet.save_pretrained(str(tmp), safe_serialization=True)
        for name, data in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(data, indent=1))


__all__ = ["build_vae", "init_student", "load_flexunet", "load_teacher", "load_text_and_vae", "load_vae", "save_unet", "student_spec"]
