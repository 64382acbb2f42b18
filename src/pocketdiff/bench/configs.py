"""Named end-to-end configurations of `pocketdiff bench` (one line each, like the arch presets).

A configuration is the talk's latency table row: text encoder + steps x UNet + decoder, for one image.
`cfg=True` runs the UNet at batch 2 per image (conditional + unconditional, as diffusers does) and encodes two
prompts (the prompt and the empty one). `dtype`/`backend` are the defaults of the row; `pocketdiff bench --dtype /
--backend` override them for every row except the baseline, which stays SD-1.5 as shipped (fp32 eager).

Decoders: "sd" = SD-1.5's VAE decoder (49.5M), "pruned" = SnapFusion's efficient decoder (SD's decoder 50% channel
pruned, widths 64/128/256/256, 12.4M; pruning/decoder.py), "tiny" = the TAESD-class TinyDecoder (pruning/
tiny_decoder.py, 64 channels, 1.2M) at SD's latent interface. A suffix names the decoder when it is not the
configuration's default (`-sdvae`, `-tiny`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..errors import UnknownPresetError

DECODERS = ("sd", "pruned", "tiny")
TEXT_ENCODERS = ("clip-l",)
BASELINE = "sd15-50-cfg"


@dataclass(frozen=True)
class BenchConfig:
    name: str
    unet: str  # an arch preset (pocketdiff arch list)
    steps: int  # UNet evaluations per image (x2 batch with CFG)
    cfg: bool  # classifier-free guidance: UNet at batch 2, two prompts encoded
    decoder: str  # one of DECODERS
    text_encoder: str = "clip-l"  # CLIP ViT-L/14's text tower (123M), 77 tokens
    dtype: str = "auto"  # fp32 | bf16 | auto (bf16 where the CPU has it natively)
    backend: str = "eager"  # a name in bench.backends
    note: str = ""

    @property
    def unet_batch(self) -> int:
        return 2 if self.cfg else 1

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **kw) -> "BenchConfig":
        return replace(self, **kw)


_REGISTRY: dict[str, BenchConfig] = {}


def _line(name: str, unet: str, steps: int, cfg: bool, decoder: str, **kw) -> None:
    _REGISTRY[name] = BenchConfig(name, unet, steps, cfg, decoder, **kw)


# name                       UNet preset            steps  CFG    decoder
_line(BASELINE,               "sd15",                50,    True,  "sd", dtype="fp32", backend="eager",
      note="SD-1.5 as shipped (50 DDIM steps, guidance, fp32 eager): the baseline")
_line("snapfusion-8",         "snapfusion",          8,     True,  "pruned", note="SnapFusion: 8 distilled steps, CFG")
_line("snapfusion-8-sdvae",   "snapfusion",          8,     True,  "sd")
_line("snapfusion-8-tiny",    "snapfusion",          8,     True,  "tiny")
_line("mobilediffusion-8",    "mobilediffusion",     8,     True,  "pruned", note="MobileDiffusion, 8 steps, CFG")
_line("mobilediffusion-8-sdvae", "mobilediffusion",  8,     True,  "sd")
_line("mobilediffusion-8-tiny", "mobilediffusion",   8,     True,  "tiny")
_line("mobilediffusion-1",    "mobilediffusion",     1,     False, "pruned", note="MobileDiffusion, 1 step (UFOGen)")
_line("mobilediffusion-1-sdvae", "mobilediffusion",  1,     False, "sd")
_line("mobilediffusion-1-tiny", "mobilediffusion",   1,     False, "tiny")
_line("mobilediffusion-lite-1", "mobilediffusion-lite", 1,  False, "pruned", note="MD-Lite, 1 step")
_line("mobilediffusion-lite-1-sdvae", "mobilediffusion-lite", 1, False, "sd")
_line("mobilediffusion-lite-1-tiny", "mobilediffusion-lite", 1, False, "tiny")

# what `pocketdiff bench` runs without --config: the baseline and each UNet with its default decoder and the tiny one
DEFAULT_RUN = (BASELINE, "snapfusion-8", "mobilediffusion-8", "mobilediffusion-1", "mobilediffusion-1-tiny",
               "mobilediffusion-lite-1", "mobilediffusion-lite-1-tiny")


def list_configs() -> list[str]:
    return list(_REGISTRY)


def get_config(name: str) -> BenchConfig:
    if name not in _REGISTRY:
        raise UnknownPresetError(f"unknown bench configuration {name!r}; known: {', '.join(_REGISTRY)} "
                                 "(pocketdiff bench --list)")
    return _REGISTRY[name]


def register_config(config: BenchConfig) -> BenchConfig:
    """Add a configuration (e.g. from a plug-in); a name already taken is an error."""
    if config.name in _REGISTRY:
        raise UnknownPresetError(f"bench configuration {config.name!r} exists already")
    _REGISTRY[config.name] = config
    return config


__all__ = ["BASELINE", "DECODERS", "DEFAULT_RUN", "TEXT_ENCODERS", "BenchConfig", "get_config", "list_configs",
           "register_config"]
