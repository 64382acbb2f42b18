"""Stage `ufogen`: UFOGen's diffusion-GAN fine-tune (Xu et al. 2023), a pretrained UNet made a one-step generator.

    pocketdiff train ufogen --config ufogen                        # from the 8-step student
    pocketdiff train ufogen --set options.init_unet=models/shapes/unet --set export_dir=runs/ufogen_teacher/unet

Each step (x0: a batch's VAE latents, c: its captions, T: the training schedule's length):

    t ~ U{1, ..., T-1},  s = max(t - T / n_gap, 0)                (the reference code's t and t_minus, n_gap = 4)
                         (t_last_fraction > 0: that share of the batch at t = T-1, the one-step sampler's t)
    x_t = q(x_t | x0),   x0' = G(x_t, t, c)                        (G predicts v; x0' = alpha_t x_t - sigma_t v)
    real = q(x_s | x0),  fake = q(x_s | x0')                       (both *forward*-noised: UFOGen eq. 8-9)
    L_D  = BCE(D(real, s, c), 1) + BCE(D(fake.detach(), s, c), 0)   every `d_every` steps
    L_G  = w_adv BCE(D(fake, s, c), 1) + w_rec ||v_G - v||^2       (adversarial + the standard diffusion loss)
    (d_loss: hinge:  L_D = relu(1 - D(real)) + relu(1 + D(fake)),  L_G = w_adv (-D(fake)) + w_rec ||v_G - v||^2)
    (d_warmup_steps > 0: the first steps train D alone, every step, on a frozen G's fakes)

The discriminator is the pretrained UNet's time embedding, stem, down path and mid block (copied: text-conditioned
through their cross-attention, timestep-conditioned through the ResNets' time embedding) with a new head: GroupNorm,
SiLU and a zero-initialised 1x1 conv giving one logit per position of the mid feature map (`d_head: patch`) or one
per image from the spatial mean (`d_head: pooled`), or a 3x3 conv, GroupNorm and SiLU more before the 1x1 conv
(`d_head: deep`). Zero-initialised, it starts at logit 0 for every input.

Reference hyper-parameters (papers.md, the authors' reference code) are the defaults: Adam lr 1e-4, betas (0.9,
0.999) for G and (0, 0.999) for D (`optimizer_groups`), EMA 0.99, D updated every 2 steps, BCE on clamped logits
(D: fake logits clamped below at -`logit_clamp`, real above at +`logit_clamp`; G: fake above at +`logit_clamp`, 0.5),
gradient clipping at 1 for each network on its own. Choices where the papers are silent: G and D update in the same
optimiser step from one batch (the reference code draws a second batch for D first); the reconstruction loss is
v-MSE (the parent's own training loss: ||x0 - x0'||^2 / sigma_t^2); captions are dropped to "" with `cfg_dropout`
(0.1, as the parent was trained) so that classifier-free guidance still works at sampling.

Monitoring: l_adv, l_rec, l_d, the discriminator's accuracy on real and fake (logit > 0 / < 0), `diversity` (the
mean pairwise distance of G's x0' across the batch over that of the real x0: spread across prompts) and
`seed_diversity`: G's one-step x0' = G(x_T, T) for `collapse_seeds` noise draws of each of the batch's first
`collapse_prompts` captions, the mean pairwise distance among a caption's draws over the real batch spread (spread
across seeds of one prompt: what a one-step generator that gives one picture per prompt lacks, while its spread across
prompts stays high). Collapse detection (`collapse_*`) stops the run with `TrainingCollapsedError` when, averaged over
`collapse_window` steps, the seed diversity falls below `collapse_min_diversity` (checked from `collapse_grace_steps`
after D's warm-up: G starts as a diffusion model, whose one-step x0' is the caption's conditional mean, the same for
every seed), D classifies both real and fake above `collapse_d_acc` (D has won; G's adversarial gradient is
saturated), or a loss is not finite. Sample with the UFOGen
scheduler (`pocketdiff.sampling.ufogen`, `--scheduler ufogen`): 1 step x0 = G(x_T, T), or predict-x0-and-re-noise
at 2 and 4 steps.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pocketdiff.errors import PocketDiffError
from pocketdiff.training.config import ConfigError
from pocketdiff.training.loop import Stage
from pocketdiff.data.batches import image_stream, open_dataset
from pocketdiff.diffusion import noised_latents, seeded_randn
from pocketdiff.models import load_teacher, save_unet
from pocketdiff.resources import default_model_path
from pocketdiff.training.monitor import SAMPLE_PROMPTS, heldout_accuracy


class TrainingCollapsedError(PocketDiffError):
    """The GAN fine-tune collapsed; the message names the signal, the step and what to change."""


class UNetDiscriminator(nn.Module):
    """The pretrained UNet's down path and mid block (with its time embedding and stem) and a new zero-init head."""

    def __init__(self, unet, head: str = "patch"):
        super().__init__()
        self.spec = unet.spec
        self.time_proj = copy.deepcopy(unet.time_proj)
        self.time_embedding = copy.deepcopy(unet.time_embedding)
        self.conv_in = copy.deepcopy(unet.conv_in)
        self.down_levels = copy.deepcopy(unet.down_levels)
        self.mid_blocks = copy.deepcopy(unet.mid_blocks)
        ch = self.spec.channels[-1]
        self.head_kind = head
        groups = self.spec.norm_groups
        if head == "deep":  # a higher-capacity head: one more 3x3 conv on the mid map before the logits
            self.head = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                      nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, 1, 1))
        else:
            self.head = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(),
                                      nn.Conv2d(ch, 1, 1) if head == "patch" else nn.Identity())
        self.proj = nn.Linear(ch, 1) if head == "pooled" else None
        last = self.proj if head == "pooled" else self.head[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Logits: [B, h*w] (patch, deep: one per position of the mid map) or [B, 1] (pooled)."""
        from pocketdiff.arch.blocks import ResBlock

        temb = self.time_embedding(self.time_proj(t.reshape(-1).expand(x.shape[0])).to(x.dtype))
        h = self.conv_in(x)
        for level in self.down_levels:
            for mod in level.blocks:
                h = mod(h, temb) if isinstance(mod, ResBlock) else mod(h, ctx)
            if level.sampler is not None:
                h = level.sampler(h)
        for mod in self.mid_blocks:
            h = mod(h, temb) if isinstance(mod, ResBlock) else mod(h, ctx)
        h = self.head(h)
        if self.proj is not None:
            return self.proj(h.mean(dim=(2, 3)))
        return h.flatten(1)


def pairwise_spread(x: torch.Tensor) -> torch.Tensor:
    """Mean pairwise L2 distance between the samples of a batch (0 when every sample is the same)."""
    flat = x.flatten(1).float()
    n = flat.shape[0]
    if n < 2:
        return torch.zeros((), device=x.device)
    return torch.pdist(flat).mean()


class UFOGenStage(Stage):
    """UFOGen: fine-tune a pretrained UNet into a one-step text-to-image generator (diffusion-GAN)."""

    name = "ufogen"
    find_unused_parameters = True  # the discriminator takes a gradient only every d_every steps

    @dataclass
    class Options:
        model_dir: str = field(default_factory=default_model_path)  # tokenizer/, text_encoder/, vae/, scheduler/ (default: the default model)
        init_unet: str = field(default_factory=lambda: default_model_path("unet_s8"))  # G and D start here (the 8-step student)
        n_gap: int = 4  # real and fake are noised to s = t - T / n_gap (the reference code's num_times)
        t_last_fraction: float = 0.0  # share of each batch at t = T-1, the one-step sampler's t (ours; 0: uniform)
        w_adv: float = 1.0  # generator: adversarial weight
        w_rec: float = 1.0  # generator: reconstruction (v-MSE) weight
        d_every: int = 2  # the discriminator is updated every d_every steps (reference: 2)
        d_betas: tuple[float, float] = (0.0, 0.999)  # Adam betas of D (G uses the config's `betas`)
        d_lr_scale: float = 1.0  # D's learning rate / G's (reference: both 1e-4)
        d_head: str = "patch"  # patch: a logit per mid-map position | pooled: one per image | deep: patch + a 3x3 conv
        d_loss: str = "bce"  # bce (reference, on clamped logits) | hinge (D: relu(1 - real) + relu(1 + fake); G: -fake)
        logit_clamp: float = 0.5  # BCE on clamped logits (reference: 0.5)
        d_warmup_steps: int = 0  # the first steps train D alone (every step; G frozen, no G loss); 0: none
        cfg_dropout: float = 0.1
        latent_sample: bool = True
        two_object_fraction: float = 0.75
        data: str = "shapes"
        # collapse detection (averages over the last collapse_window steps)
        collapse_check: bool = True
        collapse_window: int = 50
        collapse_min_diversity: float = 0.2  # seed diversity (spread across seeds of a prompt / real batch spread)
        collapse_prompts: int = 2  # captions per step for the seed diversity (one-step x0' at t = T-1) ...
        collapse_seeds: int = 4  # ... and noise draws per caption (1: not measured)
        collapse_grace_steps: int = 200  # G steps (after D's warm-up) before the seed diversity is checked
        collapse_d_acc: float = 0.995
        # monitoring (1-step samples, held-out accuracy; 0 prompts: no evaluation)
        eval_prompts: int = 48
        eval_steps: int = 1
        eval_guidance: float = 1.0
        sample_prompts: list[str] = field(default_factory=lambda: list(SAMPLE_PROMPTS))

        def __post_init__(self) -> None:
            self.d_betas = tuple(self.d_betas)
            if self.n_gap < 1:
                raise ConfigError(f"n_gap: {self.n_gap} must be >= 1")
            if self.d_every < 1:
                raise ConfigError(f"d_every: {self.d_every} must be >= 1")
            if self.d_head not in ("patch", "pooled", "deep"):
                raise ConfigError(f"d_head: {self.d_head!r} must be 'patch', 'pooled' or 'deep'")
            if self.d_loss not in ("bce", "hinge"):
                raise ConfigError(f"d_loss: {self.d_loss!r} must be 'bce' or 'hinge'")
            if self.d_warmup_steps < 0:
                raise ConfigError(f"d_warmup_steps: {self.d_warmup_steps} must be >= 0")
            for name in ("w_adv", "w_rec", "d_lr_scale", "logit_clamp"):
                if getattr(self, name) < 0:
                    raise ConfigError(f"{name}: {getattr(self, name)} must be >= 0")
            if not 0 <= self.t_last_fraction <= 1:
                raise ConfigError(f"t_last_fraction: {self.t_last_fraction} must be in [0, 1]")
            if not 0 <= self.cfg_dropout < 1:
                raise ConfigError(f"cfg_dropout: {self.cfg_dropout} must be in [0, 1)")
            if len(self.d_betas) != 2 or not all(0 <= b < 1 for b in self.d_betas):
                raise ConfigError(f"d_betas: {self.d_betas} must be two numbers in [0, 1)")
            for name in ("collapse_window", "collapse_prompts", "collapse_seeds"):
                if getattr(self, name) < 1:
                    raise ConfigError(f"{name}: {getattr(self, name)} must be >= 1")
            if self.collapse_grace_steps < 0:
                raise ConfigError(f"collapse_grace_steps: {self.collapse_grace_steps} must be >= 0")

    # ------------------------------------------------------------------ setup
    def build_frozen(self):
        if getattr(self, "_frozen", None) is not None:
            return self._frozen
        from diffusers import DDPMScheduler

        self.sched_config, self.tokenizer, frozen = load_teacher(self.opts.model_dir, self.opts.init_unet)
        self._init_unet = frozen.pop("teacher")  # G and D are trainable copies; nothing frozen needs it
        self._frozen = frozen
        self.scheduler = DDPMScheduler.from_config(self.sched_config)
        self.dataset_source = open_dataset(self.opts.data)
        self._recent: deque = deque(maxlen=self.opts.collapse_window)
        return self._frozen

    def build(self):
        self.build_frozen()
        g = copy.deepcopy(self._init_unet).train().requires_grad_(True)
        d = UNetDiscriminator(self._init_unet, self.opts.d_head).train().requires_grad_(True)
        return {"generator": g, "discriminator": d}

    def optimizer_groups(self):
        return {"generator": {}, "discriminator": {"betas": self.opts.d_betas, "lr_scale": self.opts.d_lr_scale}}

    # ------------------------------------------------------------------ training
    def dataset(self):
        return image_stream(self.opts.data, self.dataset_source, self.cfg.seed, self.opts.two_object_fraction,
                            self.example)

    def example(self, ex, rng):
        o = self.opts
        T = self.scheduler.config.num_train_timesteps
        t = int(rng.integers(1, T))
        if o.t_last_fraction and rng.random() < o.t_last_fraction:
            t = T - 1
        return {"pixel_values": ex["pixel_values"], "caption": "" if rng.random() < o.cfg_dropout else ex["caption"],
                "t": t, "noise_seed": int(rng.integers(2**62)), "renoise_seed": int(rng.integers(2**62))}

    def _prev_t(self, t: torch.Tensor) -> torch.Tensor:
        T = self.scheduler.config.num_train_timesteps
        return (t - T // self.opts.n_gap).clamp(min=0)

    def compute_loss(self, models, frozen, batch):
        from pocketdiff.text.clip import encode_prompts

        o = self.opts
        models = getattr(models, "module", models)
        G, D = models["generator"], models["discriminator"]
        x0, noise, t, x_t = noised_latents(self.scheduler, frozen["vae"], batch, o.latent_sample)
        with torch.no_grad():
            ctx = encode_prompts(self.tokenizer, frozen["text_encoder"], batch["caption"])
        v_target = self.scheduler.get_velocity(x0, noise, t)

        # G: v -> x0' (v-parameterisation: x0 = alpha_t x_t - sigma_t v); during D's warm-up G is frozen
        warmup = self.step < o.d_warmup_steps
        with torch.set_grad_enabled(not warmup):
            v = G(x_t, t, ctx).sample.float()
        a = self.scheduler.alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1)
        x0_fake = a.sqrt() * x_t - (1 - a).sqrt() * v

        # real and fake both forward-noised to s = t - T / n_gap (fresh noise for each)
        s = self._prev_t(t)
        e_real, e_fake = seeded_randn(batch["renoise_seed"], (2, *x0.shape[1:])).to(x0).unbind(1)
        real = self.scheduler.add_noise(x0, e_real, s)
        fake = self.scheduler.add_noise(x0_fake, e_fake, s)

        # generator loss: D's weights take no gradient from it (none at all during D's warm-up)
        c = o.logit_clamp
        l_rec = F.mse_loss(v, v_target.float())
        if warmup:
            l_adv, loss = torch.zeros(()), torch.zeros((), device=x0.device)
        else:
            D.requires_grad_(False)
            try:
                logits_g = D(fake, s, ctx).float()
            finally:
                D.requires_grad_(True)
            l_adv = (-logits_g.mean() if o.d_loss == "hinge" else
                     F.binary_cross_entropy_with_logits(logits_g.clamp(max=c), torch.ones_like(logits_g)))
            loss = o.w_adv * l_adv + o.w_rec * l_rec

        # discriminator loss, every d_every steps (every step during the warm-up; real and fake in one batch)
        logs = {"l_adv": l_adv.item(), "l_rec": l_rec.item()}
        if warmup or self.step % o.d_every == 0:
            logits = D(torch.cat([fake.detach(), real]), torch.cat([s, s]), torch.cat([ctx, ctx])).float()
            l_fake, l_real = logits.chunk(2)
            if o.d_loss == "hinge":
                l_d = F.relu(1 + l_fake).mean() + F.relu(1 - l_real).mean()
            else:
                l_d = (F.binary_cross_entropy_with_logits(l_fake.clamp(min=-c), torch.zeros_like(l_fake))
                       + F.binary_cross_entropy_with_logits(l_real.clamp(max=c), torch.ones_like(l_real)))
            loss = loss + l_d
            logs.update(l_d=l_d.item(), d_acc_real=(l_real > 0).float().mean().item(),
                        d_acc_fake=(l_fake < 0).float().mean().item())
        with torch.no_grad():
            real_spread = pairwise_spread(x0).clamp(min=1e-8)
            logs["diversity"] = (pairwise_spread(x0_fake) / real_spread).item()
            if o.collapse_seeds > 1 and not warmup:
                logs["seed_diversity"] = (self.seed_spread(G, ctx, x0.shape[1:], int(batch["noise_seed"][0]))
                                          / real_spread).item()
        self._check_collapse(logs, loss)
        return loss, logs

    def seed_spread(self, G, ctx: torch.Tensor, shape, seed: int) -> torch.Tensor:
        """Mean over the first `collapse_prompts` captions of the pairwise distance among G's one-step x0' for
        `collapse_seeds` noise draws each (x_T at t = T-1, as the one-step sampler runs it)."""
        o = self.opts
        k, n = min(o.collapse_prompts, ctx.shape[0]), o.collapse_seeds
        T = self.scheduler.config.num_train_timesteps
        z = seeded_randn(torch.arange(k * n) + seed, tuple(shape)).to(ctx)
        t = torch.full((k * n,), T - 1, device=ctx.device, dtype=torch.long)
        v = G(z, t, ctx[:k].repeat_interleave(n, 0)).sample.float()
        a = self.scheduler.alphas_cumprod.to(ctx.device)[T - 1]
        x0 = (a.sqrt() * z.float() - (1 - a).sqrt() * v).view(k, n, -1)
        return torch.stack([pairwise_spread(x) for x in x0]).mean()

    def _check_collapse(self, logs: dict, loss: torch.Tensor) -> None:
        o = self.opts
        if not o.collapse_check:
            return
        if not math.isfinite(loss.item()):
            raise TrainingCollapsedError(
                f"ufogen: the loss is {loss.item()} at step {self.step} (l_adv {logs['l_adv']:.4g}, l_rec "
                f"{logs['l_rec']:.4g}); resume from the last checkpoint with a lower lr (--set lr=...) or a larger "
                "options.w_rec")
        if self.step < o.d_warmup_steps:
            return  # G is frozen during D's warm-up: nothing of G's to collapse, and D is meant to win there
        self._recent.append(logs)
        if len(self._recent) < o.collapse_window:
            return
        mean = lambda k: sum(r[k] for r in self._recent if k in r) / max(1, sum(k in r for r in self._recent))  # noqa: E731
        div = mean("seed_diversity")
        if (self.step >= o.d_warmup_steps + o.collapse_grace_steps and any("seed_diversity" in r for r in self._recent)
                and div < o.collapse_min_diversity):
            raise TrainingCollapsedError(
                f"ufogen: mode collapse at step {self.step}: G's one-step images of one prompt differ across seeds "
                f"{div:.3f}x as much as real latents differ across a batch, over the last {o.collapse_window} steps "
                f"(limit {o.collapse_min_diversity}): one picture per prompt, the conditional mean that the "
                "reconstruction loss pulls to. Lower options.w_rec or raise options.w_adv, or lower the lr and resume "
                "from an earlier checkpoint (or set options.collapse_check=false to train on)")
        acc_r, acc_f = mean("d_acc_real"), mean("d_acc_fake")
        if any("d_acc_real" in r for r in self._recent) and min(acc_r, acc_f) > o.collapse_d_acc:
            raise TrainingCollapsedError(
                f"ufogen: the discriminator has won at step {self.step}: it classifies {100 * acc_r:.1f}% of real "
                f"and {100 * acc_f:.1f}% of fake samples correctly over the last {o.collapse_window} steps (limit "
                f"{100 * o.collapse_d_acc:.1f}%), so G's adversarial gradient is saturated; raise options.d_every or "
                "lower options.d_lr_scale, and resume from an earlier checkpoint")

    # ------------------------------------------------------------------ monitoring
    def _pipe(self, models, frozen):
        from pocketdiff.sampling.pipeline import TextToImagePipeline, make_scheduler

        models = getattr(models, "module", models)
        return TextToImagePipeline(unet=models["generator"], vae=frozen["vae"], text_encoder=frozen["text_encoder"],
                                   tokenizer=self.tokenizer, scheduler=make_scheduler("ufogen", self.sched_config))

    def sample(self, models, frozen, rng):
        from pocketdiff.training.loop import make_grid

        pipe, o = self._pipe(models, frozen), self.opts
        rows = [pipe(o.sample_prompts, num_inference_steps=n, guidance_scale=o.eval_guidance, seed=0).images
                for n in (1, 2, 4)]
        import numpy as np

        return make_grid(np.concatenate(rows), cols=len(o.sample_prompts))

    def evaluate(self, models, frozen):
        return heldout_accuracy(self._pipe(models, frozen), self.opts.eval_prompts, self.opts.eval_steps,
                                self.opts.eval_guidance)

    def export(self, models, frozen, export_dir):
        models = getattr(models, "module", models)
        save_unet(models["generator"], export_dir,
                  {"ufogen.json": {"method": "ufogen", "scheduler": "ufogen", **asdict(self.opts)}})
