"""Stage `teacher`: the latent diffusion UNet (a scaled-down `sd15` preset), as SD trains its UNet.

Frozen text encoder and VAE (from `model_dir`), v-prediction (Salimans & Ho 2022: v = alpha_t eps - sigma_t x0),
MSE on v, classifier-free-guidance dropout (captions replaced by "" with probability `cfg_dropout`), EMA.
Exports `unet/` (FlexUNet) and `scheduler/` into `model_dir` and writes `model_index.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from pocketdiff.io import atomic_dir
from pocketdiff.training.loop import Stage, make_grid

SAMPLE_PROMPTS = ["a red circle on the left", "a large blue square", "a small green triangle at the top",
                  "a yellow circle left of a purple square", "a red square above a green circle",
                  "a blue triangle right of a yellow square", "", "an orange circle at the bottom"]


def noise_schedule(o) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=o.num_train_timesteps, beta_schedule=o.beta_schedule,
                         prediction_type=o.prediction_type, clip_sample=False,
                         timestep_spacing="trailing")  # trailing: few-step samplers start at t = T - 1


class TeacherStage(Stage):
    name = "teacher"

    @dataclass
    class Options:
        model_dir: str = "models/shapes"  # tokenizer/, text_encoder/, vae/ are read from here; unet/ goes here
        arch: str = "sd15"  # a preset name or a spec file
        width: float = 0.125
        depth: float = 1.0
        head_dim: int | None = None  # override every transformer's head width (None: the preset's heads)
        init_unet: str | None = None  # warm start: a saved FlexUNet directory of the same spec (e.g. to train on)
        prediction_type: str = "v_prediction"
        beta_schedule: str = "squaredcos_cap_v2"  # cosine (Nichol & Dhariwal): SD's scaled_linear is for 64x64 latents
        num_train_timesteps: int = 1000
        cfg_dropout: float = 0.1
        # Training timesteps: uniform (DDPM, SD) or logit-normal (SD3, Esser et al. 2024, eq. 19); logit_mean > 0
        # puts more of the training on high noise, where composition (shape, colour, layout) is decided.
        timestep_density: Literal["uniform", "logit_normal"] = "uniform"
        logit_mean: float = 0.0
        logit_std: float = 1.0
        # Loss weighting over timesteps: none (plain MSE on the target, SD) or min-SNR-gamma (Hang et al. 2023, eq. 7:
        # w_t = min(SNR_t, gamma) / SNR_t for eps, / (SNR_t + 1) for v), which caps the weight of low-noise steps
        # that dominate the gradient; the paper reports ~3x faster convergence. gamma 5 as the paper.
        loss_weighting: Literal["none", "min_snr"] = "none"
        snr_gamma: float = 5.0
        latent_sample: bool = True  # VAE posterior samples (SD); False: means (measured worse: encode_latents)
        two_object_fraction: float = 0.5
        data: str = "shapes"
        eval_prompts: int = 48  # held-out prompts judged at each evaluation (half single, half two objects)
        eval_steps: int = 20
        eval_guidance: float = 3.0
        sample_prompts: list[str] = field(default_factory=lambda: list(SAMPLE_PROMPTS))

    # ------------------------------------------------------------------ setup
    def _spec(self, sample_size: int, context_dim: int):
        from pocketdiff.arch import ArchSpec, get_spec

        o = self.opts
        if Path(o.arch).is_file():
            spec = ArchSpec.load(o.arch).replace(sample_size=sample_size, cross_attention_dim=context_dim)
        else:
            spec = get_spec(o.arch, width=o.width, depth=o.depth, sample_size=sample_size, cross_attention_dim=context_dim)
        if o.head_dim:
            d = spec.to_dict()
            fix = lambda b: {**b, "heads": None, "head_dim": o.head_dim} if isinstance(b, dict) else (
                {"kind": "tf", "heads": None, "head_dim": o.head_dim} if b == "tf" else b)
            d.update(down=[[fix(b) for b in lv] for lv in d["down"]], mid=[fix(b) for b in d["mid"]],
                     up=[[fix(b) for b in lv] for lv in d["up"]])
            spec = ArchSpec.from_dict(d)
        return spec

    def build_frozen(self):
        if getattr(self, "_frozen", None) is not None:
            return self._frozen
        from transformers import CLIPTextModel

        from pocketdiff.text.tokenizer import load_tokenizer
        from pocketdiff.training.stages.vae import load_vae

        root = Path(self.opts.model_dir)
        self.tokenizer = load_tokenizer(root / "tokenizer")
        self._frozen = {"vae": load_vae(root / "vae"), "text_encoder": CLIPTextModel.from_pretrained(str(root / "text_encoder"))}
        return self._frozen

    def build(self):
        from pocketdiff.arch import FlexUNet

        frozen = self.build_frozen()
        vae, te = frozen["vae"], frozen["text_encoder"]
        latent = vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)
        spec = self._spec(latent, te.config.hidden_size).replace(in_channels=vae.config.latent_channels,
                                                                 out_channels=vae.config.latent_channels)
        self.scheduler = noise_schedule(self.opts)
        from pocketdiff.training.stages.vae import open_dataset

        self.dataset = open_dataset(self.opts.data)
        unet = FlexUNet.from_spec(spec)
        if self.opts.init_unet:
            unet.load_weights(FlexUNet.from_pretrained(self.opts.init_unet).state_dict())
        return {"unet": unet}

    # ------------------------------------------------------------------ training
    def get_batch(self, rng):
        from pocketdiff.training.stages.vae import image_batch

        b = image_batch(self.opts.data, rng, self.cfg.batch_size, self.opts.two_object_fraction, self.dataset)
        captions = ["" if rng.random() < self.opts.cfg_dropout else c for c in b["caption"]]
        t = sample_timesteps(rng, len(captions), self.opts.num_train_timesteps, self.opts.timestep_density,
                             self.opts.logit_mean, self.opts.logit_std)
        # noise and the VAE posterior sample are drawn from this seed (so resume is exact without a torch RNG)
        return {"pixel_values": b["pixel_values"], "caption": captions, "t": torch.from_numpy(t),
                "noise_seed": int(rng.integers(2**62))}

    def compute_loss(self, models, frozen, batch):
        from pocketdiff.text.clip import encode_prompts

        unet = models["unet"]
        x0, noise, t, z_t = noised_latents(self.scheduler, frozen["vae"], batch, self.opts.latent_sample)
        with torch.no_grad():
            ctx = encode_prompts(self.tokenizer, frozen["text_encoder"], batch["caption"])
        target = self.scheduler.get_velocity(x0, noise, t) if self.opts.prediction_type == "v_prediction" else noise
        pred = unet(z_t, t, ctx).sample
        if self.opts.loss_weighting == "none":
            return F.mse_loss(pred.float(), target.float()), {}
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        w = min_snr_weight(self.scheduler, t, self.opts.snr_gamma, self.opts.prediction_type)
        return (w * per_sample).mean(), {}

    # ------------------------------------------------------------------ monitoring
    def sample(self, models, frozen, rng):
        pipe = monitor_pipeline(models["unet"], frozen, self.tokenizer, self.scheduler.config)
        return sample_grid(pipe, self.opts.sample_prompts, self.opts.eval_steps, self.opts.eval_guidance)

    def evaluate(self, models, frozen):
        pipe = monitor_pipeline(models["unet"], frozen, self.tokenizer, self.scheduler.config)
        return heldout_accuracy(pipe, self.opts.eval_prompts, self.opts.eval_steps, self.opts.eval_guidance)

    def export(self, models, frozen, export_dir):
        from pocketdiff.sampling.pipeline import write_model_index

        root = Path(self.opts.model_dir)
        save_unet(models["unet"], export_dir)
        self.scheduler.save_pretrained(root / "scheduler")
        write_model_index(root)


# ---------------------------------------------------------------------- shared by the diffusion stages

def sample_timesteps(rng: np.random.Generator, n: int, num_train_timesteps: int, density: str = "uniform",
                     logit_mean: float = 0.0, logit_std: float = 1.0) -> np.ndarray:
    """n training timesteps in [0, T): uniform, or t / T = sigmoid(N(logit_mean, logit_std^2)) (SD3's logit-normal)."""
    if density == "uniform":
        return rng.integers(0, num_train_timesteps, size=n)
    u = 1.0 / (1.0 + np.exp(-rng.normal(logit_mean, logit_std, size=n)))
    return np.minimum((u * num_train_timesteps).astype(np.int64), num_train_timesteps - 1)


def min_snr_weight(scheduler, t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023, eq. 7), SNR_t = alpha_t^2 / sigma_t^2 (diffusers' `compute_snr`).

    The paper weights the x0-MSE by min(SNR, gamma). Since x0 - x0_hat = sigma (v_hat - v) = (sigma / alpha)
    (eps_hat - eps), that is min(SNR, gamma) / (SNR + 1) on the v-MSE and min(SNR, gamma) / SNR on the eps-MSE."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, t)
    capped = snr.clamp(max=gamma)
    return capped / (snr + 1) if prediction_type == "v_prediction" else capped / snr


def noised_latents(scheduler, vae, batch: dict, latent_sample: bool = True):
    """(x0, eps, t, z_t): the batch's images as VAE latents, noise drawn from the batch's seed (exact resume without
    a torch RNG), z_t = alpha_t x0 + sigma_t eps (the forward process, `scheduler.add_noise`)."""
    from pocketdiff.training.stages.vae import encode_latents

    with torch.no_grad():
        x0 = encode_latents(vae, batch["pixel_values"], sample=latent_sample,
                            generator=torch.Generator().manual_seed(batch["noise_seed"])).float()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(batch["noise_seed"] + 1)).to(x0)
    t = batch["t"].to(x0.device)
    return x0, noise, t, scheduler.add_noise(x0, noise, t)


def save_unet(unet, export_dir, extra_json: dict[str, dict] | None = None) -> None:
    """`save_pretrained` into a temporary directory, then swap it in: readers never see half a model."""
    import json

    with atomic_dir(export_dir) as tmp:
        unet.save_pretrained(str(tmp), safe_serialization=True)
        for name, data in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(data, indent=1))


# ---------------------------------------------------------------------- monitoring shared by the diffusion stages

def monitor_pipeline(unet, frozen: dict, tokenizer, scheduler_config):
    """A DDIM pipeline around a UNet being trained and the stage's frozen VAE and text encoder."""
    from pocketdiff.sampling.pipeline import TextToImagePipeline, make_scheduler

    return TextToImagePipeline(unet=unet, vae=frozen["vae"], text_encoder=frozen["text_encoder"],
                               tokenizer=tokenizer, scheduler=make_scheduler("ddim", scheduler_config))


def sample_grid(pipe, prompts: list[str], steps: int, guidance: float):
    return make_grid(pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, seed=0).images,
                     cols=len(prompts))


def heldout_accuracy(pipe, n_prompts: int, steps: int, guidance: float) -> dict[str, float]:
    """Judged accuracy on the first n_prompts/2 prompts of each held-out set (fixed seeds): acc_single, acc_two."""
    if not n_prompts:
        return {}
    from pocketdiff.data.shapes import heldout_prompts
    from pocketdiff.evaluation.judge import evaluate as judge

    out = {}
    for name in ("heldout-single", "heldout-two"):
        prompts = [p for p, _ in heldout_prompts(name)[: n_prompts // 2]]
        images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, seed=0).images
        out[f"acc_{name.split('-')[1]}"] = judge(list(images), prompts)["accuracy"]
    return out
