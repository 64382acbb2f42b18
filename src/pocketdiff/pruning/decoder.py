"""Structured channel pruning of an AutoencoderKL's decoder (SnapFusion's efficient decoder), encoder untouched.

    vae = resolve_vae("sd")                                   # or "shapes", or a VAE / model directory
    slim = prune_decoder(vae, ratio=0.5, importance="l1")     # SD-1.5: decoder widths 128,256,512,512 -> 64,128,256,256
    slim.save_pretrained("models/sd-vae-pruned")              # diffusers format
    vae = load_vae_dir("models/sd-vae-pruned")                # -> SlimAutoencoderKL; load_pipeline(vae_dir=...) too

1. Pruning (Torch-Pruning 1.6.1, `tp.pruner.MetaPruner`). The decoder is traced once on a 2x2 latent to build the
   dependency graph, so coupled channels are removed together: the residual stream of a level (conv_in, every
   ResNet's conv2 and shortcut, the mid-block attention's output), the GroupNorms that normalise it, the attention's
   q/k/v/out projections. Every prunable group loses `ratio` of its channels (local, uniform pruning); `conv_out`
   (the 3 RGB channels) is ignored, and the decoder's input (the latent channels) is never a pruning target. With
   GroupNorm, Torch-Pruning keeps the number of groups: it ranks channel *positions* within a group (importance
   averaged over the groups) and removes the same positions from every group, so widths stay multiples of
   `norm_num_groups` (SD-1.5, 32 groups: 128 -> 64 at ratio 0.5; ratios round to multiples of 1 / group size).
   A width with too few channels per group to lose any (int(C / groups * (1 - ratio)) < 1) is kept, with a warning.
   Importance: "l1" (default) is the group L1 norm of the filters, `tp.importance.MagnitudeImportance(p=1)`: a
   channel's score is the L1 norm of the filter that produces it, averaged with the weight slices that consume it;
   "l2" the same with p=2; "random" a seeded baseline. SnapFusion does not name its criterion; L1 is the usual one.

2. The pruned model is rebuilt, not kept as the mutated module. Uniform pruning leaves every level with one width,
   so the pruned decoder IS a diffusers `Decoder` with smaller `block_out_channels`; a fresh `Decoder` is built with
   those widths and the pruned weights are loaded into it (strict). This also drops the attributes Torch-Pruning
   cannot see (`Upsample2D.channels`, the attention's `scale`, which becomes 1/sqrt(new width)). A result no
   `Decoder` config describes (two adjacent levels pruned to equal widths keep a shortcut conv diffusers would not
   build) is a PruningError naming the widths.
   SD-1.5 at 0.5 (counted on the meta device): decode path 49.49M -> 12.39M params (0.250x; SnapFusion: 50M -> 13M),
   2515 -> 638 GFLOPs at 512px; the TinyDecoder: 1.22M params, 141 GFLOPs.

3. Saving. diffusers' `AutoencoderKL` has one `block_out_channels` for both halves, and the encoder (with its latent
   channels, `scaling_factor` and weights) must stay exactly as it was. So the result is `SlimAutoencoderKL`: an
   `AutoencoderKL` subclass whose only extra config fields describe the decoder: `decoder_type` ("pruned": a
   diffusers `Decoder`; "tiny": the TAESD-style `TinyDecoder`), `decoder_block_out_channels` (the pruned widths;
   null: the encoder's) and the tiny decoder's `tiny_channels` / `tiny_blocks`. Everything else is inherited:
   `encode`, `decode`, the config, and `save_pretrained` / `from_pretrained` (config.json +
   diffusion_pytorch_model.safetensors, the same state-dict keys as AutoencoderKL). `load_pipeline` picks the class
   from config.json's `_class_name` (`vae_class`), so a pruned or tiny VAE drops in with
   `load_pipeline(model_dir, vae_dir=...)` / `pocketdiff generate --vae DIR`.
   A plain `AutoencoderKL.from_pretrained` cannot read it (the decoder widths differ from the encoder's): use
   `load_vae_dir` or `SlimAutoencoderKL.from_pretrained`.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import Decoder

from pocketdiff.errors import ModelDirError, PocketDiffError, SpecError
from pocketdiff.pruning.tiny_decoder import TinyDecoder

IMPORTANCES = ("l1", "l2", "random")
DECODER_TYPES = ("pruned", "tiny")

# Stable Diffusion 1.5's VAE (runwayml/stable-diffusion-v1-5, vae/config.json): built with random weights, no hub
SD15_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu",
    norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)


class PruningError(PocketDiffError, ValueError):
    """Bad pruning input: a ratio outside (0, 1), an unknown importance, a model that is not an AutoencoderKL."""


class SlimAutoencoderKL(AutoencoderKL):
    """AutoencoderKL whose decoder has its own widths (pruned) or is a TinyDecoder; encoder and latent interface are
    AutoencoderKL's, built from the same config fields."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float] | None = None,
        latents_std: tuple[float] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        # the decoder (the only fields AutoencoderKL lacks)
        decoder_type: Literal["pruned", "tiny"] = "pruned",
        decoder_block_out_channels: tuple[int, ...] | None = None,  # None: the encoder's
        decoder_norm_num_groups: int | None = None,  # None: norm_num_groups (see prune_decoder's regroup)
        tiny_channels: int = 64,
        tiny_blocks: int = 3,
    ):
        super().__init__(
            in_channels=in_channels, out_channels=out_channels, down_block_types=down_block_types,
            up_block_types=up_block_types, block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            act_fn=act_fn, latent_channels=latent_channels, norm_num_groups=norm_num_groups, sample_size=sample_size,
            scaling_factor=scaling_factor, shift_factor=shift_factor, latents_mean=latents_mean,
            latents_std=latents_std, force_upcast=force_upcast, use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv, mid_block_add_attention=mid_block_add_attention,
        )
        levels = len(block_out_channels)
        if decoder_type == "tiny":
            self.decoder = TinyDecoder(latent_channels, out_channels, tiny_channels, tiny_blocks,
                                       upsample=2 ** (levels - 1), latent_scale=scaling_factor)
        elif decoder_type == "pruned":
            widths = tuple(decoder_block_out_channels or block_out_channels)
            groups = decoder_norm_num_groups or norm_num_groups
            if len(widths) != levels or any(w < 1 or w % groups for w in widths):
                raise SpecError(f"decoder_block_out_channels {list(widths)}: need {levels} widths (one per level, "
                                f"as block_out_channels), each a multiple of the decoder's GroupNorm groups {groups}")
            if widths != tuple(block_out_channels) or groups != norm_num_groups:
                self.decoder = Decoder(
                    in_channels=latent_channels, out_channels=out_channels, up_block_types=up_block_types,
                    block_out_channels=widths, layers_per_block=layers_per_block, norm_num_groups=groups,
                    act_fn=act_fn, mid_block_add_attention=mid_block_add_attention,
                )
        else:
            raise SpecError(f"decoder_type {decoder_type!r}: choose one of {', '.join(DECODER_TYPES)}")


# --------------------------------------------------------------------------------------------- sizes


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def decoder_widths(vae: AutoencoderKL) -> list[int]:
    """The decoder's per-level widths in `block_out_channels` order (encoder order: narrowest first), read from the
    modules themselves (so it also works on a decoder pruned in place). [] for a TinyDecoder."""
    dec = vae.decoder if hasattr(vae, "decoder") else vae
    if not hasattr(dec, "up_blocks"):
        return []
    return [block.resnets[-1].conv2.out_channels for block in dec.up_blocks][::-1]


def decoder_param_count(config: dict, **decoder: object) -> int:
    """Params of the decode path (post_quant_conv + decoder) of `SlimAutoencoderKL(**config, **decoder)`, counted on
    the meta device: no weights are allocated, so SD-size models cost milliseconds."""
    cfg = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    cfg.update(decoder)
    with torch.device("meta"):
        vae = SlimAutoencoderKL(**cfg)
    return param_count(vae.decoder) + (param_count(vae.post_quant_conv) if vae.post_quant_conv is not None else 0)


# --------------------------------------------------------------------------------------------- loading


def vae_class(path: str | Path) -> type[AutoencoderKL]:
    """The class to load a VAE directory with: `SlimAutoencoderKL` if its config.json says so, else AutoencoderKL
    (also when there is no readable config: then AutoencoderKL's own error applies)."""
    try:
        name = json.loads((Path(path) / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return AutoencoderKL
    return SlimAutoencoderKL if name == SlimAutoencoderKL.__name__ else AutoencoderKL


def load_vae_dir(path: str | Path) -> AutoencoderKL:
    """A VAE directory (or a model directory with vae/) -> AutoencoderKL or SlimAutoencoderKL, checked first:
    errors (ModelDirError, exit 2 from the CLI) say what is missing instead of diffusers' tracebacks."""
    from pocketdiff.loading import check_component_dir, load_component

    path = Path(path)
    if (path / "vae" / "config.json").is_file():
        path = path / "vae"
    kinds = ("AutoencoderKL", SlimAutoencoderKL.__name__)
    check_component_dir(path, "vae/", kinds)
    from safetensors import safe_open

    keys = set()
    for weights in path.glob("*.safetensors"):
        with safe_open(str(weights), "pt") as f:
            keys.update(f.keys())
    if not any(k.startswith("decoder.") for k in keys):
        raise ModelDirError(f"{path}: no decoder weights (no 'decoder.*' tensors): nothing to prune or decode")
    return load_component(path.parent, path.name, kinds, (SlimAutoencoderKL,))


def sd15_vae(seed: int = 0) -> AutoencoderKL:
    """SD-1.5's AutoencoderKL architecture with random weights (no download): for pruning structure and timing."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**SD15_VAE_CONFIG).eval()


def resolve_vae(name: str | Path) -> AutoencoderKL:
    """"sd" (SD-1.5 architecture, random weights), "shapes" (the default model's VAE: $POCKETDIFF_MODEL/vae, else
    the shipped model's, `pocketdiff.resources.default_model_dir`) or a VAE / model directory."""
    if str(name) == "sd":
        return sd15_vae()
    if str(name) == "shapes":
        from pocketdiff.resources import default_model_dir

        root = default_model_dir()
        if not (root / "vae" / "config.json").is_file():
            raise ModelDirError(f"{root / 'vae'}: the shapes VAE is not trained yet (`pocketdiff train vae`)")
        return load_vae_dir(root / "vae")
    return load_vae_dir(name)


# --------------------------------------------------------------------------------------------- pruning


def make_importance(name: str):
    """"l1" | "l2": group filter-norm importance (`MagnitudeImportance(p)`); "random": `RandomImportance`."""
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "random":
        return tp.importance.RandomImportance()
    raise PruningError(f"importance {name!r}: choose one of {', '.join(IMPORTANCES)}")


def _out_dim(m: torch.nn.Module) -> int | None:
    if isinstance(m, torch.nn.Conv2d):
        return m.out_channels
    if isinstance(m, torch.nn.Linear):
        return m.out_features
    if isinstance(m, torch.nn.GroupNorm):
        return m.num_channels
    return None


def check_prunable(vae: object, ratio: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 < float(ratio) < 1.0:
        raise PruningError(f"ratio must be in (0, 1) (the fraction of channels removed), got {ratio!r}")
    if not isinstance(vae, AutoencoderKL):
        raise PruningError(f"expected a diffusers AutoencoderKL, got {type(vae).__name__}")
    if not isinstance(getattr(vae, "decoder", None), Decoder):
        raise PruningError(f"{type(vae).__name__} has no diffusers Decoder to prune "
                           f"(decoder: {type(getattr(vae, 'decoder', None)).__name__})")


def prune_decoder(vae: AutoencoderKL, ratio: float = 0.5, importance: str = "l1", seed: int = 0,
                  regroup: bool = False) -> SlimAutoencoderKL:
    """Remove `ratio` of the channels of every prunable layer group of `vae.decoder`, keeping the most important by
    `importance`; return a new SlimAutoencoderKL with `vae`'s encoder, quant convs and config (input untouched).

    `regroup`: afterwards, cut the decoder's GroupNorm group count by the same ratio, so every group keeps as many
    channels as before (the pruned weights are unchanged; the normalisation then differs from the pruned network's,
    so use it with distillation). Why: Torch-Pruning keeps the group count, and a small decoder can drop to one
    channel per group, i.e. instance norm, which erases each channel's mean, the flat colour of a region; the
    shapes-world decoder (16, 32, 64 with 8 groups) pruned at 0.5 distilled to only 23.4 dB that way (1,000 steps)."""
    import torch_pruning as tp

    check_prunable(vae, ratio)
    imp = make_importance(importance)
    # a copy with grads on: Torch-Pruning traces the autograd graph, and a frozen decoder would trace to nothing
    dec = copy.deepcopy(vae.decoder).float().cpu().eval().requires_grad_(True)
    example = torch.zeros(1, vae.config.latent_channels, 2, 2)  # tracing only: the graph, not the values, matters

    # GroupNorm keeps its group count, so a width with fewer than 1 / (1 - ratio) channels per group cannot shrink:
    # its layers are left out (the level keeps its width) rather than losing every channel
    groups = vae.config.norm_num_groups
    fixed = sorted({c for c in decoder_widths(dec) if int(c // groups * (1 - ratio)) < 1})
    if len(fixed) == len(set(decoder_widths(dec))):
        raise PruningError(f"ratio {ratio} would remove every channel of every GroupNorm group (widths "
                           f"{decoder_widths(dec)}, norm_num_groups={groups}): use a smaller ratio")
    if fixed:
        warnings.warn(f"decoder widths {fixed} have too few channels per GroupNorm group (norm_num_groups={groups}) "
                      f"to prune at ratio {ratio}; they are kept", stacklevel=2)
    ignored = [dec.conv_out] + [m for m in dec.modules() if _out_dim(m) in fixed]
    # Torch-Pruning traces the autograd graph (grad on, even if the caller is under no_grad); RandomImportance
    # draws from torch's RNG (forked: the caller's stream does not move)
    with torch.enable_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pruner = tp.pruner.MetaPruner(dec, example, importance=imp, pruning_ratio=float(ratio),
                                      ignored_layers=ignored)
        pruner.step()

    # rebuild as a SlimAutoencoderKL with the pruned widths, then load (strict): non-uniform widths fail here
    widths = decoder_widths(dec)
    if widths == decoder_widths(vae):
        raise PruningError(f"nothing was pruned (widths {widths}, ratio {ratio}): the dependency graph found no "
                           "prunable channel groups")
    config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    config.update(decoder_type="pruned", decoder_block_out_channels=tuple(widths))
    if regroup:
        new_groups = max(1, round(groups * (1 - ratio)))
        while any(w % new_groups for w in widths):
            new_groups -= 1
        config.update(decoder_norm_num_groups=new_groups)
    with torch.device("meta"):
        slim = SlimAutoencoderKL(**config)
    state = {k: v.detach().clone() for k, v in vae.state_dict().items() if not k.startswith("decoder.")}
    state.update({f"decoder.{k}": v.to(vae.dtype) for k, v in dec.state_dict().items()})
    try:
        slim.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:3])
        hint = (" (two adjacent levels now have equal widths, so diffusers' Decoder has no shortcut conv "
                "between them)" if "conv_shortcut" in detail else "")
        raise PruningError(f"ratio {ratio} gives decoder widths {widths} that no Decoder config describes{hint}: "
                           f"choose another ratio ({detail[:300]})") from None
    return slim.eval()


def pruning_report(before: AutoencoderKL, after: AutoencoderKL, **extra: object) -> dict:
    """Widths and parameter counts before/after (written beside the weights as pruning.json)."""
    def decode_params(v):
        return param_count(v.decoder) + (param_count(v.post_quant_conv) if v.post_quant_conv is not None else 0)

    b, a = decode_params(before), decode_params(after)
    return {**extra, "decoder_widths_before": decoder_widths(before), "decoder_widths_after": decoder_widths(after),
            "decoder_params_before": b, "decoder_params_after": a, "decoder_params_ratio": a / b,
            "encoder_params": param_count(after.encoder), "latent_channels": after.config.latent_channels,
            "scaling_factor": after.config.scaling_factor}


def save_vae(vae: AutoencoderKL, out: str | Path, report: dict | None = None) -> Path:
    """save_pretrained into `out.tmp`, then rename over `out` (a crash never leaves half a model); + pruning.json."""
    from pocketdiff.io import atomic_dir

    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file())):
        raise ModelDirError(f"{out} exists and is not a model directory: choose a new --out (it would be replaced)")
    with atomic_dir(out) as tmp:
        vae.save_pretrained(str(tmp), safe_serialization=True)
        if report is not None:
            (tmp / "pruning.json").write_text(json.dumps(report, indent=1))
    return out


__all__ = ["IMPORTANCES", "SD15_VAE_CONFIG", "PruningError", "SlimAutoencoderKL", "check_prunable",
           "decoder_param_count", "decoder_widths", "load_vae_dir", "make_importance", "param_count", "prune_decoder",
           "pruning_report", "resolve_vae", "save_vae", "sd15_vae", "vae_class"]
