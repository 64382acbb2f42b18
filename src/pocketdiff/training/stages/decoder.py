"""Stage `decoder`: distil a smaller VAE decoder from the original one (SnapFusion's efficient decoder).

    loss = || D_student(z) - D_teacher(z) ||^2          (MSE between the two decoders' images, per SnapFusion)
         + edge_weight * sum_{x, y} || d(D_student(z)) - d(D_teacher(z)) ||^2      (ours, off by default)

The edge term (`edge_weight`, d = finite difference along x or y) is our addition: SnapFusion uses MSE only. On the
shapes world the MSE-trained decoder's error sits on object outlines, which is what the judge's shape call reads: at
the same PSNR it flips 3x more verdicts than random noise does (docs/benchmarks.md).

No paired text-image data is needed: the latents z come from the teacher text-to-image pipeline (`latents:
pipeline`: prompts -> `sampling_steps` DDIM steps with the teacher UNet and CFG; a bank of `bank_size` latents is
generated once at start, with fixed seeds, and batches are drawn from it; a list of step counts makes one bank per
count, the same prompts and seeds, so that the decoder sees the latents of every sampler it will decode, e.g. the
8-step default and the 50-step teacher: an earlier shipped decoder, trained on 20-step latents, measured 37.3 dB
on 50-step and 35.4 dB on 8-step single-object latents) or from encoding images with the teacher
encoder (`latents: encoder`, drawn fresh per batch). Only the decode path (post_quant_conv + decoder) is trained;
the encoder, quant_conv, latent channels and scaling_factor are the teacher's, copied and frozen, so the exported
`SlimAutoencoderKL` is a drop-in VAE (`pocketdiff generate --vae DIR`).

Students (`student`): "pruned" = the teacher's decoder pruned by `pocketdiff.pruning.decoder.prune_decoder`
(`ratio`, `importance`), or loaded from `student_dir` (the output of `pocketdiff prune decoder`); "tiny" = the
TAESD-style `TinyDecoder` (`tiny_channels`, `tiny_blocks`; x4 or x8 as the teacher's encoder downsamples), random
init, or loaded from `student_dir`.

Evaluation: PSNR (dB) of the student's images against the teacher decoder's images, both clamped to [-1, 1], on
`eval_latents` held-out latents (pipeline: the held-out prompts of the shapes world with seeds no training latent
uses; encoder: held-out scenes), mean and 5th percentile; plus the decode-path parameter counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from pocketdiff.data.batches import image_stream, open_dataset, random_batch
from pocketdiff.data.shapes import heldout_images, to_uint8
from pocketdiff.diffusion import encode_latents
from pocketdiff.errors import DataError, ModelDirError
from pocketdiff.io import atomic_path
from pocketdiff.resources import default_model_path
from pocketdiff.evaluation.reconstruction import psnr
from pocketdiff.training.loop import Stage, call_method, make_grid

BANK_SEED = 30_000  # training latents: prompts and initial noise
EVAL_SEED = 40_000  # held-out latents: seeds no training latent uses


def edge_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the images' finite differences along x and along y (summed): large where outlines differ."""
    return sum(F.mse_loss(pred.diff(dim=d), target.diff(dim=d)) for d in (-1, -2))


class DecoderStage(Stage):
    """Distil a pruned or tiny VAE decoder from the teacher decoder (MSE on images, latents from the teacher)."""

    name = "decoder"

    @dataclass
    class Options:
        model_dir: str = field(default_factory=default_model_path)  # the teacher pipeline (tokenizer, text_encoder, unet, scheduler, vae)
        unet: str | None = None  # the UNet whose latents it learns on (e.g. the student); default model_dir/unet
        teacher_vae: str | None = None  # the decoder to distil; default model_dir/vae
        student: Literal["pruned", "tiny"] = "pruned"
        student_dir: str | None = None  # start from this SlimAutoencoderKL (`pocketdiff prune decoder --out`)
        ratio: float = 0.5  # student=pruned without student_dir: prune the teacher's decoder here
        importance: Literal["l1", "l2", "random"] = "l1"
        regroup: bool = False  # pruned: GroupNorm groups shrink with the widths (prune_decoder's `regroup`)
        tiny_channels: int = 64
        tiny_blocks: int = 3
        latents: Literal["pipeline", "encoder"] = "pipeline"
        bank_size: int = 2048  # pipeline latents generated at start
        sampling_steps: int | list[int] = 20  # DDIM steps per pipeline latent (SnapFusion: 50); a list: one bank each
        guidance_scale: float = 3.0
        generation_batch: int = 32
        data: str = "shapes"  # prompts (pipeline) or images (encoder): the shapes world or an image-caption folder
        two_object_fraction: float = 0.5
        eval_latents: int = 64
        latent_cache: str | None = "runs/decoder_latents"  # reuse pipeline latents across runs (None: regenerate)
        edge_weight: float = 0.0  # weight of the edge term (MSE of the images' x and y finite differences)

    # ------------------------------------------------------------------ setup
    def build_frozen(self):
        if getattr(self, "_frozen", None) is None:
            from pocketdiff.pruning.decoder import load_vae_dir

            o = self.opts
            self.teacher_path = Path(o.teacher_vae) if o.teacher_vae else Path(o.model_dir) / "vae"
            self.unet_path = Path(o.unet) if o.unet else Path(o.model_dir) / "unet"  # whose latents it learns on
            self._frozen = {"teacher": load_vae_dir(self.teacher_path).eval().requires_grad_(False)}
        return self._frozen

    def build(self):
        o = self.opts
        if not 0.0 < o.ratio < 1.0:
            raise DataError(f"options.ratio must be in (0, 1), got {o.ratio}")
        if o.edge_weight < 0:
            raise DataError(f"options.edge_weight must be >= 0, got {o.edge_weight}")
        if min(self._step_counts(), default=0) < 1:
            raise DataError(f"options.sampling_steps must be >= 1 (or a list of such), got {o.sampling_steps}")
        teacher = self.build_frozen()["teacher"]
        self.dataset_source = open_dataset(o.data, teacher.config.sample_size)
        student = self._student(teacher)
        if o.latents == "pipeline":
            banks = [self._cached_pipeline_latents(steps) for steps in self._step_counts()]
            self.bank, self.eval_z = (torch.cat(parts) for parts in zip(*banks))
        else:
            self.eval_z = self._encode_heldout(teacher, o.eval_latents)
        return {"vae": student}

    def _student(self, teacher):
        from pocketdiff.pruning.decoder import SlimAutoencoderKL, load_vae_dir, prune_decoder

        o = self.opts
        if o.student_dir:
            student = load_vae_dir(o.student_dir)
            kind = student.config.get("decoder_type", "pruned")
            if kind != o.student:
                raise DataError(f"options.student_dir {o.student_dir} holds a {kind!r} decoder but options.student "
                                f"is {o.student!r}")
            for key in ("latent_channels", "block_out_channels", "scaling_factor", "use_post_quant_conv"):
                if list(np.atleast_1d(student.config[key])) != list(np.atleast_1d(teacher.config[key])):
                    raise ModelDirError(f"options.student_dir {o.student_dir}: {key} {student.config[key]} differs "
                                        f"from the teacher VAE's {teacher.config[key]} ({self.teacher_path}): not the "
                                        "same latent interface")
        elif o.student == "pruned":
            student = prune_decoder(teacher, o.ratio, o.importance, seed=self.cfg.seed, regroup=o.regroup)
        else:
            cfg = {k: v for k, v in teacher.config.items() if not k.startswith("_")}
            cfg.update(decoder_type="tiny", tiny_channels=o.tiny_channels, tiny_blocks=o.tiny_blocks)
            student = SlimAutoencoderKL(**cfg)
        # the latent interface is the teacher's: its encoder and quant convs (post_quant_conv: the init, trained)
        keep = {k: v.detach().clone() for k, v in teacher.state_dict().items() if not k.startswith("decoder.")}
        missing, unexpected = student.load_state_dict(keep, strict=False)
        if unexpected or any(not k.startswith("decoder.") for k in missing):
            raise ModelDirError(f"the student does not have the teacher's encoder layout "
                                f"({(unexpected or missing)[:3]})")
        student.encoder.requires_grad_(False)
        if student.quant_conv is not None:
            student.quant_conv.requires_grad_(False)
        return student.float()

    # ------------------------------------------------------------------ latents
    def _step_counts(self) -> list[int]:
        steps = self.opts.sampling_steps
        return [steps] if isinstance(steps, int) else list(steps)

    def _prompts(self, rng: np.random.Generator, n: int) -> list[str]:
        if self.dataset_source is not None:
            return list(random_batch(self.dataset_source, rng, n)["caption"])
        from pocketdiff.data.shapes import caption, sample_scene

        return [caption(sample_scene(rng, 2 if rng.random() < self.opts.two_object_fraction else 1), rng)
                for _ in range(n)]

    @staticmethod
    def _heldout_prompts(n: int) -> list[str]:
        from pocketdiff.data.shapes import heldout_prompts

        single, two = ([p for p, _ in heldout_prompts(name)] for name in ("heldout-single", "heldout-two"))
        both = [p for pair in zip(single, two) for p in pair]
        return [both[i % len(both)] for i in range(n)]

    @torch.no_grad()
    def _pipeline_latents(self, prompts: list[str], seed: int, steps: int) -> torch.Tensor:
        """Teacher pipeline, `decode=False`: [N, C, h, w] latents in diffusion scale (x scaling_factor); prompt i with
        seed `seed + i` (`evaluation.suite.sample_prompts`)."""
        from pocketdiff.evaluation.suite import sample_prompts
        from pocketdiff.sampling.pipeline import load_pipeline

        o = self.opts
        pipe = load_pipeline(o.model_dir, unet_dir=self.unet_path, vae_dir=self.teacher_path)
        with torch.random.fork_rng(devices=[]):
            chunks = sample_prompts(pipe, prompts, steps, o.guidance_scale, seed=seed, batch_size=o.generation_batch,
                                    decode=False, desc=f"teacher latents ({len(prompts)}, {steps} steps)")
            return torch.cat([torch.from_numpy(gen.images) for gen in chunks]).float()

    def _cached_pipeline_latents(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(training bank, held-out eval latents) from the teacher pipeline at `steps` DDIM steps; with `latent_cache`,
        stored once as safetensors keyed by everything they depend on (so the pruned and the tiny decoder train on the
        same bank)."""
        import hashlib
        import json

        from safetensors.torch import load_file, save_file

        o = self.opts
        make = lambda: (
            self._pipeline_latents(self._prompts(np.random.default_rng(BANK_SEED), o.bank_size), BANK_SEED, steps),
            self._pipeline_latents(self._heldout_prompts(o.eval_latents), EVAL_SEED, steps))
        if not o.latent_cache:
            return make()
        unet_files = sorted(self.unet_path.glob("*.safetensors"))
        key = json.dumps([str(Path(o.model_dir).resolve()), str(self.unet_path.resolve()),
                          [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in unet_files],
                          str(self.teacher_path.resolve()), o.bank_size, o.eval_latents,
                          steps, o.guidance_scale, o.data, o.two_object_fraction, BANK_SEED, EVAL_SEED])
        path = Path(o.latent_cache) / f"latents-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
        if path.is_file():
            t = load_file(path)
            return t["bank"], t["eval"]
        bank, eval_z = make()
        with atomic_path(path) as tmp:
            save_file({"bank": bank.contiguous(), "eval": eval_z.contiguous()}, tmp, metadata={"key": key})
        return bank, eval_z

    @torch.no_grad()
    def _encode_heldout(self, teacher, n: int) -> torch.Tensor:
        x = heldout_images(n, size=teacher.config.sample_size)
        return torch.cat([teacher.encode(c).latent_dist.mode() for c in x.split(32)]) * teacher.config.scaling_factor

    # ------------------------------------------------------------------ training
    def dataset(self):
        from pocketdiff.data.stream import seeded_stream

        if self.opts.latents == "pipeline":  # the bank, in a fresh permutation each epoch
            return seeded_stream(self.cfg.seed, lambda z, rng: {"latents": z}, self.bank)
        # the posterior sample is drawn from this seed (exact resume without the torch RNG)
        return image_stream(self.opts.data, self.dataset_source, self.cfg.seed, self.opts.two_object_fraction,
                            lambda ex, rng: {"pixel_values": ex["pixel_values"], "noise_seed": int(rng.integers(2**62))})

    def _latents(self, teacher, batch) -> torch.Tensor:
        """Latents in diffusion scale (what the UNet produces; the pipeline divides by scaling_factor to decode)."""
        if "latents" in batch:
            return batch["latents"]
        with torch.no_grad():
            return encode_latents(teacher, batch["pixel_values"], noise_seeds=batch["noise_seed"])

    def compute_loss(self, models, frozen, batch):
        teacher = frozen["teacher"]
        z = self._latents(teacher, batch) / teacher.config.scaling_factor
        with torch.no_grad():
            target = teacher.decode(z.to(teacher.dtype)).sample.float()
        pred = call_method(models["vae"], "decode", z).sample.float()
        mse = F.mse_loss(pred, target)
        logs = {"psnr": 10 * math.log10(4.0 / max(mse.item(), 1e-10))}
        if not self.opts.edge_weight:
            return mse, logs
        edge = edge_loss(pred, target)
        return mse + self.opts.edge_weight * edge, {**logs, "edge": edge.item()}

    # ------------------------------------------------------------------ monitoring
    @torch.no_grad()
    def _decode_both(self, student, teacher, z: torch.Tensor, batch_size: int = 32):
        s, t = [], []
        for chunk in (z / teacher.config.scaling_factor).split(batch_size):
            s.append(student.decode(chunk.to(student.device, student.dtype)).sample.float().clamp(-1, 1).cpu())
            t.append(teacher.decode(chunk.to(teacher.device, teacher.dtype)).sample.float().clamp(-1, 1).cpu())
        return torch.cat(s), torch.cat(t)

    def sample(self, models, frozen, rng):
        """Top row: teacher decoder; bottom row: student, on the first 8 held-out latents."""
        s, t = self._decode_both(models["vae"], frozen["teacher"], self.eval_z[:8])
        both = torch.cat([t, s])
        return make_grid(to_uint8(both), cols=len(t))

    def evaluate(self, models, frozen):
        from pocketdiff.pruning.decoder import param_count

        student, teacher = models["vae"], frozen["teacher"]
        s, t = self._decode_both(student, teacher, self.eval_z)
        score = psnr(s, t)

        def decode_params(v):
            return param_count(v.decoder) + (param_count(v.post_quant_conv) if v.post_quant_conv is not None else 0)

        return {"eval_psnr": score.mean().item(), "eval_psnr_p05": score.quantile(0.05).item(),
                "student_decoder_params": float(decode_params(student)),
                "teacher_decoder_params": float(decode_params(teacher))}

    def export(self, models, frozen, export_dir: Path) -> None:
        from pocketdiff.pruning.decoder import pruning_report, save_vae

        o = self.opts
        report = pruning_report(frozen["teacher"], models["vae"], source=str(self.teacher_path), student=o.student,
                                student_dir=o.student_dir, latents=o.latents)
        if o.student == "pruned" and not o.student_dir:
            report.update(ratio=o.ratio, importance=o.importance, regroup=o.regroup)
        save_vae(models["vae"], export_dir, report)
