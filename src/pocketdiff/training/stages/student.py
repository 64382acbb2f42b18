"""Stage `student`: an efficient UNet distilled from the teacher (BK-SDM's losses) with SnapFusion's robust training.

    pocketdiff train student --teacher models/shapes --arch mobilediffusion      # any preset, spec file or UNet dir
    pocketdiff train student --teacher models/shapes --p-drop-tf 0.1 --p-drop-res 0.05   # robust training
    pocketdiff train student --teacher models/shapes --teacher-unet models/shapes/unet_s8 \
        --arch models/shapes/unet_s8 --attention relu --p-drop-tf 0 --p-drop-res 0      # ReLU attention fine-tune

The student is initialised from the teacher's blocks (`init_from_teacher`: kept blocks copied, added ones
duplicated) or continues a saved FlexUNet directory (`arch: DIR`, e.g. a round of `pocketdiff evolve`). Each step

    L = w_task ||v_S - v||^2 + w_out ||v_S - v_T||^2 + w_feat mean_s ||f_S,s - f_T,s||^2

(BK-SDM, Kim et al. 2023, eq. 1-3: task loss, output distillation, feature distillation), with the stage outputs f_s
matched by name: each down level's output, the mid output, each up level's output (`FlexUNet.capture`). Stages whose
shapes differ between student and teacher (other channel widths) are left out of the feature loss.

Robust training (SnapFusion sec. 3.2, "stochastic forward propagation"): at every step each droppable transformer
block of the student is replaced by identity with probability `p_drop_tf` and each droppable ResNet with
`p_drop_res` (`FlexUNet.droppable()`: ResNets that change the width or merge a skip are never dropped; in SD-1.5's
topology those are the first ResNet of down levels 1-2 and every up-path ResNet). SnapFusion gives no value; the
default 0.1 / 0.05 is our choice (docs/evolving.md has the sweep). The teacher always runs whole.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from pocketdiff.data.batches import image_fields, image_stream, open_dataset
from pocketdiff.diffusion import noised_latents
from pocketdiff.errors import ConfigError
from pocketdiff.models import init_student, load_teacher, save_unet
from pocketdiff.resources import default_model_path
from pocketdiff.training.loop import Stage
from pocketdiff.training.monitor import SAMPLE_PROMPTS, heldout_accuracy, monitor_pipeline, sample_grid


def sample_dropped(unet, rng, p_tf: float, p_res: float) -> set:
    """Robust training: the blocks to run as identity this step, each droppable block independently."""
    from pocketdiff.arch.blocks import TransformerBlock

    return {key for key in unet.droppable()
            if rng.random() < (p_tf if isinstance(unet.block(key), TransformerBlock) else p_res)}


class StudentStage(Stage):
    """A student UNet distilled from the teacher (task + output + feature losses), optionally robust-trained."""

    name = "student"
    find_unused_parameters = True  # robust training drops blocks: their parameters get no gradient that step

    @dataclass
    class Options:
        teacher_dir: str = field(default_factory=default_model_path)  # tokenizer/, text_encoder/, vae/, scheduler/, unet/ (default: the default model)
        teacher_unet: str | None = None  # another teacher UNet dir (e.g. a ReLU-attention model's softmax parent)
        arch: str | None = None  # None: the teacher's own spec | preset name | spec file | FlexUNet directory
        student_depth: float = 1.0  # for a preset student (its width follows the teacher's channels)
        partial_init: bool = True  # blocks no teacher block fits start from a sliced teacher block (arch.convert)
        attention: str | None = None  # relu | softmax: switch every transformer of the student, same weights
        w_task: float = 1.0
        w_out: float = 1.0
        w_feat: float = 1.0
        p_drop_tf: float = 0.1  # robust training: P(transformer block -> identity) per step
        p_drop_res: float = 0.05  # ... and for droppable ResNet blocks
        cfg_dropout: float = 0.1
        latent_sample: bool = True  # as the teacher was trained (encode_latents)
        two_object_fraction: float = 0.5
        data: str = "shapes"
        resolution: int | None = None  # image size of a data folder; None: the VAE's sample_size (512 for SD-1.5)
        eval_prompts: int = 48
        eval_steps: int = 20
        eval_guidance: float = 3.0
        sample_prompts: list[str] = field(default_factory=lambda: list(SAMPLE_PROMPTS))

        def __post_init__(self) -> None:
            for name in ("p_drop_tf", "p_drop_res", "cfg_dropout"):
                if not 0 <= getattr(self, name) < 1:
                    raise ConfigError(f"{name}: {getattr(self, name)} must be in [0, 1)")
            for name in ("w_task", "w_out", "w_feat"):
                if getattr(self, name) < 0:
                    raise ConfigError(f"{name}: {getattr(self, name)} must be >= 0")
            if self.attention not in (None, "relu", "softmax"):
                raise ConfigError(f"attention: {self.attention!r} must be relu, softmax or null (keep the student's)")

    def fsdp_refusal(self):
        # FSDP reduces every parameter group on every process alike; robust training drops other blocks on each
        if self.opts.p_drop_tf or self.opts.p_drop_res:
            return ("robust training drops different blocks on different processes; knowledge distillation alone, "
                    "options.p_drop_tf=0 and options.p_drop_res=0, can be sharded")
        return None

    # ------------------------------------------------------------------ setup
    def build_frozen(self):
        if getattr(self, "_frozen", None) is not None:
            return self._frozen
        from diffusers import DDPMScheduler

        self.sched_config, self.tokenizer, self._frozen = load_teacher(self.opts.teacher_dir, self.opts.teacher_unet)
        self.scheduler = DDPMScheduler.from_config(self.sched_config)
        self.dataset_source = open_dataset(self.opts.data, self.opts.resolution or self._frozen["vae"].config.sample_size)
        return self._frozen

    def build(self):
        teacher = self.build_frozen()["teacher"]
        student = init_student(teacher, self.opts.arch, self.opts.student_depth, self.opts.partial_init)
        if self.opts.attention:  # MobileDiffusion's softmax -> ReLU fine-tune: convert, then KD from the parent
            from pocketdiff.arch.convert import with_attention

            student = with_attention(student, self.opts.attention)
        if student.config.in_channels != teacher.config.in_channels:
            raise ConfigError(f"options.arch: the student takes {student.config.in_channels} latent channels, the "
                              f"teacher {teacher.config.in_channels}")
        return {"unet": student.train().requires_grad_(True)}

    # ------------------------------------------------------------------ training
    def dataset(self):
        return image_stream(self.opts.data, self.dataset_source, self.cfg.seed, self.opts.two_object_fraction,
                            self.example)

    def example(self, ex, rng):
        o = self.opts
        return {**image_fields(ex), "caption": "" if rng.random() < o.cfg_dropout else ex["caption"],
                "t": int(rng.integers(0, self.scheduler.config.num_train_timesteps)),
                "noise_seed": int(rng.integers(2**62)), "drop_seed": int(rng.integers(2**62))}

    def compute_loss(self, models, frozen, batch):
        import numpy as np

        from pocketdiff.text.clip import encode_prompts

        wrapped = models["unet"]  # called (DDP: gradients averaged); its attributes are set on the module inside
        student = getattr(wrapped, "module", wrapped)
        teacher = frozen["teacher"]
        x0, noise, t, z_t = noised_latents(self.scheduler, frozen["vae"], batch, self.opts.latent_sample)
        with torch.no_grad():
            ctx = encode_prompts(self.tokenizer, frozen["text_encoder"], batch["caption"])
        target = self.scheduler.get_velocity(x0, noise, t)

        o = self.opts
        feats_t, feats_s = {}, {}
        with torch.no_grad():
            teacher.capture = feats_t if o.w_feat else None
            v_teacher = teacher(z_t, t, ctx).sample
            teacher.capture = None
        # the micro-batch's first example decides which blocks this forward drops
        student.skipped = sample_dropped(student, np.random.default_rng(int(batch["drop_seed"][0])), o.p_drop_tf,
                                         o.p_drop_res)
        n_dropped = len(student.skipped)
        student.capture = feats_s if o.w_feat else None
        try:
            v_student = wrapped(z_t, t, ctx).sample
        finally:
            student.skipped, student.capture = set(), None

        l_task = F.mse_loss(v_student.float(), target.float())
        l_out = F.mse_loss(v_student.float(), v_teacher.float())
        shared = [k for k in feats_s if k in feats_t and feats_s[k].shape == feats_t[k].shape]
        l_feat = (torch.stack([F.mse_loss(feats_s[k].float(), feats_t[k].float()) for k in shared]).mean()
                  if shared else torch.zeros((), device=x0.device))
        loss = o.w_task * l_task + o.w_out * l_out + o.w_feat * l_feat
        return loss, {"l_task": l_task.item(), "l_out": l_out.item(), "l_feat": l_feat.item(),
                      "dropped": float(n_dropped)}

    # ------------------------------------------------------------------ monitoring
    def sample(self, models, frozen, rng):
        pipe = monitor_pipeline(models["unet"], frozen, self.tokenizer, self.sched_config)
        return sample_grid(pipe, self.opts.sample_prompts, self.opts.eval_steps, self.opts.eval_guidance)

    def evaluate(self, models, frozen):
        pipe = monitor_pipeline(models["unet"], frozen, self.tokenizer, self.sched_config)
        return heldout_accuracy(pipe, self.opts.eval_prompts, self.opts.eval_steps, self.opts.eval_guidance)

    def export(self, models, frozen, export_dir):
        save_unet(models["unet"], export_dir, {"student.json": {"method": "kd+robust-training", **asdict(self.opts)}})
