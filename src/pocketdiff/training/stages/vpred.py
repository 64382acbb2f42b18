"""Stage `vpred`: fine-tune an epsilon-prediction teacher (SD-1.5) to predict v, SnapFusion's first step.

    pocketdiff train vpred --teacher sd15-dir --data my-images/ --export sd15-v --set max_steps=10000

SnapFusion (Li et al. 2023, sec. 4.1) distils every student from a v-prediction teacher ("we first fine-tune SD-v1.5
with v-prediction"); the students and step distillation here train on v (`load_teacher` refuses an epsilon teacher).
The UNet keeps the teacher's noise schedule and its weights as the starting point, and learns the v target
(Salimans & Ho 2022): v = alpha_t eps - sigma_t x0, MSE on v, captions dropped with probability `cfg_dropout` for
classifier-free guidance, as SD trains. The teacher's own tokenizer, text encoder and VAE stay frozen.

Export: a complete model directory (`--export DIR`): unet/ (the fine-tuned UNet as a FlexUNet), scheduler/ (the
teacher's, with prediction_type v_prediction and trailing timesteps), and tokenizer/, text_encoder/, vae/ hard-linked (copied where
links cannot be made) from the teacher, so DIR is the `--teacher` of `train student` and `train distill`.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pocketdiff.data.batches import image_fields, image_stream, open_dataset
from pocketdiff.diffusion import noised_latents
from pocketdiff.errors import ConfigError
from pocketdiff.training.loop import Stage

FROZEN_COMPONENTS = ("tokenizer", "text_encoder", "vae")


def link_tree(src: Path, dst: Path) -> None:
    """Copy a directory tree as hard links (no extra disk for SD-1.5's 600 MB of frozen components), or as copies
    where the file system cannot link."""
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)


class VPredStage(Stage):
    """Fine-tune an epsilon-prediction teacher (SD-1.5) to predict v (SnapFusion's first step)."""

    name = "vpred"
    fsdp = True  # one UNet, every parameter used every step: Accelerate's FSDP2 can shard it

    @dataclass
    class Options:
        teacher_dir: str = ""  # an epsilon-prediction model directory (SD-1.5 layout)
        data: str = "shapes"  # a folder of captioned images (or the shapes world, for the tiny fixture)
        resolution: int | None = None  # training image size; None: the VAE's sample_size (512 for SD-1.5)
        cfg_dropout: float = 0.1
        latent_sample: bool = True
        two_object_fraction: float = 0.5

        def __post_init__(self) -> None:
            if not 0 <= self.cfg_dropout < 1:
                raise ConfigError(f"cfg_dropout: {self.cfg_dropout} must be in [0, 1)")
            if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
                raise ConfigError(f"resolution: {self.resolution} must be a multiple of 8 (the VAE's downsampling)")

    def build_frozen(self):
        if getattr(self, "_frozen", None) is not None:
            return self._frozen
        from diffusers import DDPMScheduler

        from pocketdiff.loading import read_scheduler_config
        from pocketdiff.models import load_text_and_vae

        root = Path(self.opts.teacher_dir)
        if not self.opts.teacher_dir or not root.is_dir():
            raise ConfigError(f"--teacher {self.opts.teacher_dir!r}: not a model directory (an SD-1.5 layout: "
                              "tokenizer/, text_encoder/, vae/, unet/, scheduler/)")
        self.sched_config = read_scheduler_config(root)
        if self.sched_config.get("prediction_type", "epsilon") == "v_prediction":
            warnings.warn(f"{root} already predicts v (its scheduler says so): this run only fine-tunes it on the "
                          "data; it is a --teacher of `train student` / `train distill` as it is", stacklevel=2)
        # the teacher's schedule (SD: scaled_linear, 1000 steps), its target switched to v
        self.scheduler = DDPMScheduler.from_config(self.sched_config, prediction_type="v_prediction")
        self.tokenizer, self._frozen = load_text_and_vae(root)
        vae = self._frozen["vae"]
        self.resolution = self.opts.resolution or vae.config.sample_size
        self.dataset_source = open_dataset(self.opts.data, self.resolution)
        return self._frozen

    def build(self):
        from pocketdiff.models import load_flexunet

        self.build_frozen()
        return {"unet": load_flexunet(Path(self.opts.teacher_dir) / "unet").train().requires_grad_(True)}

    def dataset(self):
        return image_stream(self.opts.data, self.dataset_source, self.cfg.seed, self.opts.two_object_fraction,
                            self.example, size=self.resolution)

    def example(self, ex, rng):
        o = self.opts
        return {**image_fields(ex), "caption": "" if rng.random() < o.cfg_dropout else ex["caption"],
                "t": int(rng.integers(0, self.scheduler.config.num_train_timesteps)),
                "noise_seed": int(rng.integers(2**62))}

    def compute_loss(self, models, frozen, batch):
        from pocketdiff.text.clip import encode_prompts

        x0, noise, t, z_t = noised_latents(self.scheduler, frozen["vae"], batch, self.opts.latent_sample)
        with torch.no_grad():
            ctx = encode_prompts(self.tokenizer, frozen["text_encoder"], batch["caption"])
        v = self.scheduler.get_velocity(x0, noise, t)  # alpha_t eps - sigma_t x0
        return F.mse_loss(models["unet"](z_t, t, ctx).sample.float(), v.float()), {}

    def export(self, models, frozen, export_dir):
        from pocketdiff.io import atomic_dir
        from pocketdiff.loading import read_json

        src = Path(self.opts.teacher_dir)
        with atomic_dir(export_dir) as tmp:
            models["unet"].save_pretrained(str(tmp / "unet"), safe_serialization=True)
            (tmp / "scheduler").mkdir()
            # trailing timesteps (as the project's own schedule): few-step samplers and the step-distillation grids
            # start at t = T - 1 (SD-1.5's "leading" + steps_offset 1 starts 20 steps early at 50 steps, and its
            # N-step grid is not every 2nd point of its 2N-step grid, which `train distill` needs)
            config = {**self.sched_config, "prediction_type": "v_prediction", "timestep_spacing": "trailing",
                      "steps_offset": 0}
            (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=1))
            for name in FROZEN_COMPONENTS:
                link_tree(src / name, tmp / name)
            index = read_json(src / "model_index.json") if (src / "model_index.json").is_file() else {}
            index.update({"unet": ["pocketdiff.arch", "FlexUNet"]})
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
            (tmp / "vpred.json").write_text(json.dumps({"method": "v-prediction fine-tune", "teacher": str(src),
                                                        "resolution": self.resolution}, indent=1))
