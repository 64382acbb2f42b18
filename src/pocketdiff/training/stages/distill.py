"""Stage `distill`: SnapFusion's CFG-aware step distillation, one halving per run (teacher_steps = 2 x student_steps;
a larger multiple makes the teacher take k DDIM steps per student step, for the 16- vs 32-step teacher ablation).

    pocketdiff train distill                                                  # 32-step teacher -> 16-step student
    pocketdiff train distill --teacher models/shapes --student-steps 8 --student models/shapes/unet_s16

Frozen: the teacher UNet (v-prediction), text encoder and VAE from `teacher_dir` (`teacher_unet` swaps in another
teacher UNet, e.g. the distilled 16-step student that teaches the 8-step one). Trained: the student UNet, initialised
as a copy of the teacher (`student: null`), from a UNet directory (the previous halving's student), or from a preset
name / spec file (another architecture, initialised block by block with `pocketdiff.arch.init_from_teacher`).

Each micro-batch: shapes-world images -> VAE latents x, noise eps, a student step t of its DDIM grid with the teacher's
two steps t -> t' -> t'' (`distillation_grid`), z_t = alpha_t x + sigma_t eps, then (pocketdiff.training.distill)

    L = L_dstl + gamma L_ori,  L_dstl = CFG loss (prob. p, w ~ U[w_range]) else vanilla,  L_ori = ||v_S(c) - v||^2.

Choices where SnapFusion is silent (all options): the CFG/vanilla draw is per batch (`mix: batch`; `mix: sample` draws
per sample with w = 1 for the vanilla ones, which makes the CFG loss exactly the vanilla one); captions are dropped to
"" with `cfg_dropout` as in the teacher's training, so the student's unconditional v, which CFG sampling needs, keeps
being taught; gamma 'auto' is L_dstl / L_ori of the current batch (detached); L_ori's v(c) is the student's forward
pass of the distillation loss (no extra UNet call); the student's t is a point of its own DDIM grid, t = -1 (the end)
is alpha_bar_0 as diffusers' DDIM with set_alpha_to_one=False. (diffusers' DDIM steps to t - T // n, which can be one
train step off the trailing grid's next point; we train on the grid.)

Progressive schedule (64 -> 32 -> 16 -> 8) is a chain of runs, each one halving: run k's `student` is run k-1's export
dir, and its `teacher_unet` is either the original teacher (SnapFusion's "direct" 16 -> 8 beat progressive) or the
previous student. Exports the student (EMA) as a FlexUNet directory to `export_dir`, with `distillation.json` beside
its weights (default `{teacher_dir}/unet_s{student_steps}`: `export_dir` may name options in braces); sample with
`load_pipeline(teacher_dir, unet_dir=export_dir)` at `student_steps` DDIM steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from pocketdiff.data.batches import image_fields, image_stream, open_dataset
from pocketdiff.diffusion import batch_latents, seeded_randn
from pocketdiff.errors import ConfigError
from pocketdiff.models import init_student, load_teacher, save_unet
from pocketdiff.resources import default_model_path
from pocketdiff.training.distill import (alpha_sigma, auto_gamma, distillation_grid, step_distillation_loss,
                                         v_prediction_loss)
from pocketdiff.training.loop import Stage
from pocketdiff.training.monitor import SAMPLE_PROMPTS, heldout_accuracy, monitor_pipeline, sample_grid



class DistillStage(Stage):
    """SnapFusion's CFG-aware step distillation: a student UNet taking one DDIM step for the teacher's two."""

    name = "distill"
    fsdp = True  # one UNet, every parameter used every step: Accelerate's FSDP2 can shard it

    @dataclass
    class Options:
        teacher_dir: str = field(default_factory=default_model_path)  # tokenizer/, text_encoder/, vae/, scheduler/, unet/ (default: the default model)
        teacher_unet: str | None = None  # another teacher UNet dir (e.g. the 16-step student teaching the 8-step one)
        student: str | None = None  # None: a copy of the teacher | a UNet dir | a preset name or spec file
        student_depth: float = 1.0  # for a preset student (its width follows the teacher's channels)
        teacher_steps: int = 32  # a multiple k >= 2 of student_steps; k = 2 is SnapFusion's (one halving per run)
        student_steps: int = 16
        p: float = 0.1  # probability of the CFG loss (else the vanilla loss)
        w_range: tuple[float, float] = (2.0, 14.0)  # guidance w ~ U[w_min, w_max] in the CFG loss
        gamma: float | str = "auto"  # weight of L_ori: "auto" (L_dstl / L_ori per batch) or a number (0.2)
        mix: Literal["batch", "sample"] = "batch"  # draw CFG-vs-vanilla once per batch or per sample
        cfg_dropout: float = 0.1  # captions -> "" (keeps the student's unconditional v taught)
        latent_sample: bool = True  # VAE posterior samples (False: means), as the teacher was trained
        two_object_fraction: float = 0.5
        data: str = "shapes"
        resolution: int | None = None  # image size of a data folder; None: the VAE's sample_size (512 for SD-1.5)
        eval_prompts: int = 48  # held-out prompts judged at each evaluation (half single, half two objects)
        eval_guidance: float = 3.0  # the student is evaluated at student_steps DDIM steps
        sample_prompts: list[str] = field(default_factory=lambda: list(SAMPLE_PROMPTS))

        def __post_init__(self) -> None:
            w_min, w_max = self.w_range
            checks = {"p": 0 <= self.p <= 1, "w_range": 1 <= w_min <= w_max, "cfg_dropout": 0 <= self.cfg_dropout <= 1,
                      "student_steps": self.student_steps >= 1,
                      "teacher_steps": self.teacher_steps >= 2 * self.student_steps
                                       and self.teacher_steps % self.student_steps == 0,
                      "gamma": self.gamma == "auto" or (not isinstance(self.gamma, str) and self.gamma >= 0)}
            for name, ok in checks.items():
                if not ok:
                    hint = {"teacher_steps": " (a multiple >= 2 of student_steps; SnapFusion: 2, one halving per run)",
                            "gamma": " ('auto' or a number >= 0)", "w_range": " (1 <= w_min <= w_max)"}.get(name, "")
                    raise ConfigError(f"{name}: invalid value {getattr(self, name)!r}{hint}")

    def __init__(self, cfg):
        super().__init__(cfg)
        # export_dir may name the run's options: "{teacher_dir}/unet_s{student_steps}" (so halvings never collide)
        cfg.export_dir = cfg.export_dir.format(**{k: v for k, v in vars(self.opts).items() if isinstance(v, str | int)})

    # ------------------------------------------------------------------ setup
    def build_frozen(self):
        if getattr(self, "_frozen", None) is not None:
            return self._frozen
        o = self.opts
        self.sched_config, self.tokenizer, self._frozen = load_teacher(o.teacher_dir, o.teacher_unet)
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(self.sched_config)
        try:
            self.grid = distillation_grid(self.sched_config, o.teacher_steps, o.student_steps)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.dataset_source = open_dataset(o.data, o.resolution or self._frozen["vae"].config.sample_size)
        return self._frozen

    def build(self):
        student = init_student(self.build_frozen()["teacher"], self.opts.student, self.opts.student_depth)
        return {"unet": student.train().requires_grad_(True)}

    # ------------------------------------------------------------------ training
    def dataset(self):
        return image_stream(self.opts.data, self.dataset_source, self.cfg.seed, self.opts.two_object_fraction,
                            self.example)

    def example(self, ex, rng):
        o = self.opts
        j = int(rng.integers(0, o.student_steps))  # which student step: (t, t', t'') = grid[j]
        w = float(rng.uniform(*o.w_range))
        use_cfg = bool(rng.random() < o.p)  # mix "batch": the micro-batch's first example decides (collate)
        return {**image_fields(ex), "caption": "" if rng.random() < o.cfg_dropout else ex["caption"],
                "t": self.grid[j], "w": w, "cfg": use_cfg, "noise_seed": int(rng.integers(2**62))}

    def collate(self, examples):
        batch = super().collate(examples)
        cfg = batch["cfg"] if self.opts.mix == "sample" else batch["cfg"][:1].expand(len(examples))
        # the CFG loss with w = 1 is the vanilla loss: per-sample mixing sets w = 1 where the draw says vanilla
        batch["w"] = torch.where(cfg, batch["w"], torch.ones_like(batch["w"])).float()
        batch["cfg"] = bool(cfg.any())
        return batch

    def compute_loss(self, models, frozen, batch):
        from pocketdiff.text.clip import encode_prompts

        vae, te = frozen["vae"], frozen["text_encoder"]
        with torch.no_grad():
            x = batch_latents(vae, batch, self.opts.latent_sample)
            cond = encode_prompts(self.tokenizer, te, batch["caption"])
            uncond = encode_prompts(self.tokenizer, te, [""] * len(x)) if batch["cfg"] else None
        eps = seeded_randn(batch["noise_seed"] + 1, x.shape[1:]).to(x)
        path = batch["t"].to(x.device)  # (t, t', ..., t''): the teacher's DDIM points over one student step
        t, t_mid, t_end = path[:, 0], path[:, 1:-1], path[:, -1]
        a_t, s_t = alpha_sigma(self.scheduler, t, x.ndim)
        z_t = a_t * x + s_t * eps

        def as_v(unet):
            return lambda z, tt, ctx: unet(z, tt, ctx).sample

        l_dstl, v_cond = step_distillation_loss(as_v(models["unet"]), as_v(frozen["teacher"]), z_t, t, t_mid, t_end,
                                                self.scheduler, cond, uncond, batch["w"] if batch["cfg"] else None)
        l_dstl, l_ori = l_dstl.mean(), v_prediction_loss(v_cond, x, eps, a_t, s_t).mean()
        gamma = auto_gamma(l_dstl, l_ori) if self.opts.gamma == "auto" else float(self.opts.gamma)
        loss = l_dstl + gamma * l_ori  # L = L_dstl + gamma L_ori
        return loss, {"l_dstl": l_dstl.item(), "l_ori": l_ori.item(), "gamma": float(gamma),
                      "cfg": float(batch["cfg"])}

    # ------------------------------------------------------------------ monitoring
    def sample(self, models, frozen, rng):
        pipe = monitor_pipeline(models["unet"], frozen, self.tokenizer, self.sched_config)
        return sample_grid(pipe, self.opts.sample_prompts, self.opts.student_steps, self.opts.eval_guidance)

    def evaluate(self, models, frozen):
        pipe = monitor_pipeline(models["unet"], frozen, self.tokenizer, self.sched_config)
        return heldout_accuracy(pipe, self.opts.eval_prompts, self.opts.student_steps, self.opts.eval_guidance)

    def export(self, models, frozen, export_dir):
        save_unet(models["unet"], export_dir, {"distillation.json": {
            "method": "snapfusion-cfg-aware-step-distillation", **asdict(self.opts)}})
