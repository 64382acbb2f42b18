"""One text-to-image pipeline for both worlds: the shipped shapes-world model and a local Stable Diffusion 1.5 directory.

A model directory has diffusers' layout (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/`,
`scheduler/`); the UNet may be a `FlexUNet` or a diffusers `UNet2DConditionModel`. The sampling loop is classifier-free
guidance (Ho & Salimans 2022): eps_or_v = u + w (c - u), with diffusers' schedulers doing the solver step.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler

from ..errors import DataError, ModelDirError
from ..io import write_text_atomic
from ..profiling.latency import synced_clock

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SCHEDULERS = ("ddim", "dpm", "dpm++", "ufogen")


def make_scheduler(name: str, config: dict):
    """diffusers' solvers, configured from the model's training schedule (we write no solver of our own)."""
    if name == "ddim":
        # clip_sample=False: with v-prediction in latent space clipping x0 made CFG drift (shared/reference/measured.md)
        return DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False)
    if name in ("dpm", "dpm++"):
        # DPM-Solver (Lu et al. 2022) and DPM-Solver++ (2nd order multistep); plain DPM-Solver cannot end on sigma=0
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver" if name == "dpm" else "dpmsolver++", solver_order=2,
            final_sigmas_type="sigma_min" if name == "dpm" else "zero")
    if name == "ufogen":
        # UFOGen's one-step / re-noising sampler, for a UNet fine-tuned by `pocketdiff train ufogen`
        from .ufogen import UFOGenScheduler

        known = set(inspect.signature(UFOGenScheduler.__init__).parameters)  # the schedule's keys, not DDIM's options
        return UFOGenScheduler.from_config({k: v for k, v in config.items() if k in known or k.startswith("_")})
    raise DataError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


class NonFiniteError(DataError):
    """Sampling produced NaN / inf: nothing is written."""


def check_sampling_options(steps, guidance: float, train_steps: int = 1000) -> None:
    """The sampler's domain, checked before any work: 1 <= steps <= the schedule's training steps, guidance a finite
    number >= 0 (w in u + w (c - u): 0 is unconditional, 1 is no guidance)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= train_steps:
        raise DataError(f"--steps {steps}: must be an integer from 1 to {train_steps} (the scheduler's training steps)")
    if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not math.isfinite(guidance) \
            or guidance < 0:
        raise DataError(f"--guidance {guidance}: must be a finite number >= 0 (1 = no guidance; typical 2-8)")


@dataclass
class Timings:
    """Wall-clock milliseconds per component (the talk's table)."""
    text_encoder: float = 0.0
    unet_total: float = 0.0
    decoder: float = 0.0
    unet_calls: int = 0

    @property
    def total(self) -> float:
        return self.text_encoder + self.unet_total + self.decoder

    def as_dict(self) -> dict:
        return {"text_encoder": self.text_encoder, "unet_total": self.unet_total, "decoder": self.decoder,
                "total": self.total}


@dataclass
class Generation:
    images: np.ndarray  # [N, H, W, 3] uint8
    timings: Timings = field(default_factory=Timings)


class TextToImagePipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    # --------------------------------------------------------------- text
    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token states the UNet cross-attends to ([B, L, D], SD's `last_hidden_state`). "" is unconditional."""
        from ..text.tokenizer import tokenize_prompts

        ids = tokenize_prompts(self.tokenizer, list(prompts))  # word-level (warns on unknown words) or CLIP BPE
        return self.text_encoder(input_ids=ids.to(self.device)).last_hidden_state

    # --------------------------------------------------------------- sampling
    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 seed: int | Sequence[int] = 0, scheduler: str | None = None, latents: torch.Tensor | None = None,
                 decode: bool = True) -> Generation:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
        if len(seeds) != len(prompts):
            raise DataError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        sched = make_scheduler(scheduler, self.scheduler.config) if scheduler else self.scheduler
        check_sampling_options(num_inference_steps, guidance_scale, sched.config.num_train_timesteps)
        t_ = Timings()
        cfg = guidance_scale != 1.0

        # 1. text: conditional and (for CFG) unconditional embeddings
        t0 = synced_clock(self.device)
        ctx = self.encode(prompts + ([""] * len(prompts) if cfg else []))
        t_.text_encoder = 1e3 * (synced_clock(self.device) - t0)

        # 2. initial noise, one generator per image: the same seed gives the same image in any batch
        shape = (self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        if latents is None:
            latents = torch.stack([torch.randn(shape, generator=g) for g in generators])
        # a stochastic step (UFOGen's re-noising) draws from the same per-image generators (diffusers' convention:
        # pass `generator` when the scheduler's step takes it; DDIM with eta 0 and DPM-Solver++ draw nothing)
        step_kwargs = {"generator": generators} if "generator" in inspect.signature(sched.step).parameters else {}
        # the latents and the scheduler's arithmetic stay fp32; only the networks run in their dtype (bf16 fast path)
        latents = latents.to(self.device, torch.float32) * sched.init_noise_sigma
        sched.set_timesteps(num_inference_steps)

        # 3. denoise: v (or eps) = u + w (c - u)
        t0 = synced_clock(self.device)
        for t in sched.timesteps:
            x = torch.cat([latents, latents]) if cfg else latents
            x = sched.scale_model_input(x, t)
            out = self.unet(x.to(self.unet.dtype), t, encoder_hidden_states=ctx.to(self.unet.dtype)).sample.float()
            t_.unet_calls += 1
            if cfg:
                cond, uncond = out.chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            latents = sched.step(out, t, latents, **step_kwargs).prev_sample
        t_.unet_total = 1e3 * (synced_clock(self.device) - t0)
        if not torch.isfinite(latents).all():  # NaN guidance or corrupt weights: refuse, never a black image
            raise NonFiniteError(f"the denoised latents are non-finite (NaN/inf) after {num_inference_steps} steps at "
                                 f"guidance {guidance_scale:g}: the UNet or text-encoder weights are corrupt; "
                                 "no image was written")
        if not decode:
            return Generation(images=latents.float().cpu().numpy(), timings=t_)

        # 4. decode
        t0 = synced_clock(self.device)
        images = self.decode_latents(latents)
        t_.decoder = 1e3 * (synced_clock(self.device) - t0)
        return Generation(images=images, timings=t_)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        from ..data.shapes import to_uint8

        pixels = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        if not torch.isfinite(pixels).all():  # would be written as a black image
            raise NonFiniteError("the decoder produced non-finite pixels: the VAE weights are corrupt (NaN/inf); "
                                 "no image was written")
        return to_uint8(pixels)


def load_pipeline(model_dir: str | Path, unet_dir: str | Path | None = None, vae_dir: str | Path | None = None,
                  scheduler: str = "ddim", dtype: str = "fp32") -> TextToImagePipeline:
    """Load a model directory (shapes world or Stable Diffusion 1.5, diffusers layout). `unet_dir`/`vae_dir`
    swap in another UNet (e.g. a distilled student) or decoder. `dtype` "fp32" or "bf16" ("auto": resolve it first,
    `pocketdiff.precision.resolve_dtype`): the networks' weights and activations; latents and the scheduler stay
    fp32. Errors name the missing component."""
    from ..precision import to_dtype

    torch_dtype = to_dtype(dtype)
    from ..arch.unet import FlexUNet
    from ..loading import load_component, load_tokenizer_dir, read_scheduler_config
    from ..pruning.decoder import SlimAutoencoderKL

    root = Path(model_dir)
    if not root.is_dir():
        raise ModelDirError(f"model directory {root} does not exist")
    missing = [c for c in COMPONENTS if not (root / c).is_dir()]
    if missing:
        raise ModelDirError(f"{root} is missing component(s) {missing}: a model directory needs {list(COMPONENTS)}")

    # every component through from_pretrained(subfolder=...), strictly (pocketdiff.loading): errors name the file
    sched_cfg = read_scheduler_config(root)
    unet_path, vae_path = Path(unet_dir or root / "unet"), Path(vae_dir or root / "vae")
    unet = load_component(unet_path.parent, unet_path.name, ("FlexUNet", "UNet2DConditionModel"), (FlexUNet,))
    vae = load_component(vae_path.parent, vae_path.name, ("AutoencoderKL", "SlimAutoencoderKL"), (SlimAutoencoderKL,))
    text_encoder = load_component(root, "text_encoder", ("CLIPTextModel",))
    tokenizer = load_tokenizer_dir(root, "tokenizer")
    pipe = TextToImagePipeline(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                               scheduler=make_scheduler(scheduler, sched_cfg))
    if torch_dtype != torch.float32:
        for m in (pipe.unet, pipe.vae, pipe.text_encoder):
            torch.nn.Module.to(m, torch_dtype)  # (ModelMixin.to would warn about fp32-kept modules these lack)
    return pipe


def write_model_index(root: str | Path, unet_class: tuple[str, str] = ("pocketdiff.arch", "FlexUNet")) -> None:
    """model_index.json, so that the directory is a diffusers pipeline (`TextToImagePipeline.from_pretrained`)."""
    import diffusers

    index = {
        "_class_name": "TextToImagePipeline", "_diffusers_version": diffusers.__version__,
        "unet": list(unet_class), "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    path = Path(root) / "model_index.json"
    write_text_atomic(path, json.dumps(index, indent=2))
