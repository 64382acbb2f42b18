"""Stage `teacher`: the latent diffusion UNet (a scaled-down `sd15` preset), as SD trains its UNet.

Frozen text encoder and VAE (from `model_dir`), v-prediction (Salimans & Ho 2022: v = alpha_t eps - sigma_t x0),
MSE on v, classifier-free-guidance dropout (captions replaced by "" with probability `cfg_dropout`), EMA.
Exports `unet/` (FlexUNet) and `scheduler/` into `model_dir` and writes `model_index.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from pocketdiff.data.batches import image_stream, open_dataset
from pocketdiff.diffusion import min_snr_weight, noise_schedule, noised_latents, sample_timesteps
from pocketdiff.models import load_vae, save_unet
from pocketdiff.resources import default_model_path
from pocketdiff.training.loop import Stage
from pocketdiff.training.monitor import SAMPLE_PROMPTS, heldout_accuracy, monitor_pipeline, sample_grid


class TeacherStage(Stage):
    name = "teacher"
    fsdp = True  # one UNet, every parameter used every step: Accelerate's FSDP2 can shard it

    @dataclass
    class Options:
        model_dir: str = field(default_factory=default_model_path)  # tokenizer/, text_encoder/, vae/ (default: the default model)
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
        from pocketdiff.loading import load_component
        from pocketdiff.text.tokenizer import load_tokenizer

        root = Path(self.opts.model_dir)
        self.tokenizer = load_tokenizer(root / "tokenizer")
        self._frozen = {"vae": load_vae(root / "vae"), "text_encoder": load_component(root, "text_encoder", "CLIPTextModel")}
        return self._frozen

    def build(self):
        from pocketdiff.arch import FlexUNet

        frozen = self.build_frozen()
        vae, te = frozen["vae"], frozen["text_encoder"]
        latent = vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)
        spec = self._spec(latent, te.config.hidden_size).replace(in_channels=vae.config.latent_channels,
                                                                 out_channels=vae.config.latent_channels)
        self.scheduler = noise_schedule(self.opts)
        self.dataset_source = open_dataset(self.opts.data)
        unet = FlexUNet.from_spec(spec)
        if self.opts.init_unet:
            from pocketdiff.loading import load_component_dir

            unet.load_weights(load_component_dir(self.opts.init_unet, "unet", "FlexUNet", (FlexUNet,)).state_dict())
        return {"unet": unet}

    # ------------------------------------------------------------------ training
    def dataset(self):
        return image_stream(self.opts.data, self.dataset_source, self.cfg.seed, self.opts.two_object_fraction,
                            self.example)

    def example(self, ex, rng):
        o = self.opts
        t = sample_timesteps(rng, 1, o.num_train_timesteps, o.timestep_density, o.logit_mean, o.logit_std)
        # noise and the VAE posterior sample are drawn from this seed (so resume is exact without a torch RNG)
        return {"pixel_values": ex["pixel_values"], "caption": "" if rng.random() < o.cfg_dropout else ex["caption"],
                "t": int(t[0]), "noise_seed": int(rng.integers(2**62))}

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
        if Path(export_dir).resolve().parent == root.resolve():  # exported into the model directory: complete it
            self.scheduler.save_pretrained(root / "scheduler")
            write_model_index(root)
        else:  # a run's own export: the scheduler goes beside the UNet, the model directory is left as it was
            self.scheduler.save_pretrained(Path(export_dir).parent / "scheduler")


# ---------------------------------------------------------------------- shared by the diffusion stages



# ---------------------------------------------------------------------- monitoring shared by the diffusion stages


