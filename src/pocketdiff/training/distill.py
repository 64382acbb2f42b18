"""SnapFusion's CFG-aware step distillation (Li et al. 2023, Sec. 4), as small functions that read like the paper.

Notation (v-prediction, Salimans & Ho 2022; variance preserving, alpha_t^2 + sigma_t^2 = 1):
    z_t = alpha_t x + sigma_t eps,   v = alpha_t eps - sigma_t x,
    x_hat = alpha_t z_t - sigma_t v_hat,   eps_hat = sigma_t z_t + alpha_t v_hat.
The teacher takes two DDIM steps t -> t' -> t'' (k >= 2 steps as an option); the student one step t -> t''. The
student's target is the x that makes its single DDIM step land where the teacher's steps landed
(`distillation_target`); the loss is in x-space with the truncated SNR weight. The CFG variant replaces every UNet
output (the teacher's and the student's) by the guided v~ = w v(c) - (w - 1) v(empty), w ~ U[w_min, w_max].
Training mixes the two with probability p and adds the student's original v-prediction loss: L = L_dstl + gamma L_ori.

Timesteps are the DDPM scheduler's integer steps 0..T-1 (the paper's continuous t in [0, 1] is (t + 1) / T); t = -1
is the end of sampling, where diffusers' DDIM (`set_alpha_to_one=False`, our `make_scheduler("ddim")`) lands:
alpha_bar_0. The stage is `pocketdiff.training.stages.distill`.
"""

from __future__ import annotations

from typing import Callable

import torch

# a UNet as the losses see it: (z, t, context) -> v
VFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def alpha_sigma(scheduler, t: torch.Tensor, ndim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t) from the DDPM schedule's `alphas_cumprod`.

    `t`: integer steps [B] in -1..T-1 (-1: the end of sampling, alpha_bar_0 as diffusers' DDIM). Returned shaped
    [B, 1, ...] (`ndim` dims) to broadcast against latents; float32 (float64 schedules are cast)."""
    abar = scheduler.alphas_cumprod.to(torch.float32)[t.long().cpu().clamp(min=0)].to(t.device)
    shape = (-1,) + (1,) * (ndim - 1)
    return abar.sqrt().reshape(shape), (1.0 - abar).sqrt().reshape(shape)


def ddim_step(z_t, v, a_t, s_t, a_s, s_s):
    """One deterministic DDIM step t -> s with a v-prediction (the teacher's step in SnapFusion):
        z_s = alpha_s (alpha_t z_t - sigma_t v) + sigma_s (sigma_t z_t + alpha_t v)   [= alpha_s x_hat + sigma_s eps_hat]
    """
    return a_s * (a_t * z_t - s_t * v) + s_s * (s_t * z_t + a_t * v)


def guided(v_cond, v_uncond, w):
    """Classifier-free guidance on v (Ho & Salimans 2022):  v~ = w v(c) - (w - 1) v(empty).  w = 1: v(c) exactly."""
    return w * v_cond - (w - 1) * v_uncond


def distillation_target(z_t, z_tpp, a_t, s_t, a_tpp, s_tpp):
    """The x-space target of the student's single step t -> t'' (Salimans & Ho 2022, Algorithm 2; SnapFusion):
        x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)
    i.e. the x for which the DDIM step from z_t lands exactly on the teacher's z_t''."""
    r = s_tpp / s_t
    return (z_tpp - r * z_t) / (a_tpp - r * a_t)


def truncated_snr_weight(a_t, s_t):
    """Truncated SNR weighting (Salimans & Ho 2022):  w(lambda_t) = max(alpha_t^2 / sigma_t^2, 1)."""
    return torch.clamp(a_t**2 / s_t**2, min=1.0)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: ||.||^2 per sample, normalised by its size."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def v_prediction_loss(v_hat, x, eps, a_t, s_t):
    """SnapFusion's L_ori, the v-prediction loss:  || v_hat(t, z_t, c) - v ||^2,  v = alpha_t eps - sigma_t x.  [B]"""
    return mean_flat((v_hat - (a_t * eps - s_t * x)) ** 2)


def predict_v(unet: VFn, z, t, cond, uncond=None, w=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A UNet's v for the distillation losses: v(c) (vanilla, `w` None) or the guided v~ (CFG; `w` [B] or scalar).
    Returns (v used by the loss, the conditional v(c)), float32; the CFG pair runs as one batch of 2B."""
    if w is None:
        v = unet(z, t, cond).float()
        return v, v
    v_c, v_u = unet(torch.cat([z, z]), torch.cat([t, t]), torch.cat([cond, uncond])).float().chunk(2)
    w = torch.as_tensor(w, dtype=v_c.dtype, device=v_c.device).reshape((-1,) + (1,) * (v_c.ndim - 1))
    return guided(v_c, v_u, w), v_c


def step_distillation_loss(student: VFn, teacher: VFn, z_t, t, t_mid, t_end, scheduler, cond, uncond=None, w=None):
    """SnapFusion's step distillation loss, per sample [B] (vanilla: `w` None; CFG-aware: `w` given).

        teacher:  z_t'  = DDIM(z_t,  v_T(t,  z_t))          z_t'' = DDIM(z_t', v_T(t', z_t'))
        student:  x_hat = alpha_t z_t - sigma_t v_S(t, z_t)
        loss:     max(alpha_t^2 / sigma_t^2, 1) || x_hat - (z_t'' - (sigma_t''/sigma_t) z_t)
                                                          / (alpha_t'' - (sigma_t''/sigma_t) alpha_t) ||^2
    where in the CFG loss every v (the teacher's, the student's one) is v~ = w v(c) - (w - 1) v(empty).
    `student`, `teacher`: (z, t, context) -> v; `t`, `t_end`: integer steps [B] (t_end may be -1); `t_mid`: the
    teacher's intermediate point t' [B] (SnapFusion's two teacher steps), or [B, k - 1] points for a teacher taking
    k DDIM steps per student step (a 32-step teacher for an 8-step student: k = 4; our extension, for the ablation).
    Returns (loss [B], the student's conditional v(c) [B, ...]) so that L_ori reuses the student's forward pass.
    """
    a_t, s_t = alpha_sigma(scheduler, t, z_t.ndim)
    with torch.no_grad():
        z, u, a_u, s_u = z_t, t, a_t, s_t
        for u_next in (*t_mid.reshape(len(t), -1).unbind(1), t_end):  # teacher steps t -> t' (-> ...) -> t''
            v_T, _ = predict_v(teacher, z, u, cond, uncond, w)
            a_n, s_n = alpha_sigma(scheduler, u_next, z_t.ndim)
            z, u, a_u, s_u = ddim_step(z, v_T, a_u, s_u, a_n, s_n), u_next, a_n, s_n
        x_tilde = distillation_target(z_t, z, a_t, s_t, a_u, s_u)
    v_S, v_S_cond = predict_v(student, z_t, t, cond, uncond, w)
    x_hat = a_t * z_t - s_t * v_S  # the student's one step, in x-space
    return truncated_snr_weight(a_t, s_t).flatten() * mean_flat((x_hat - x_tilde) ** 2), v_S_cond


def auto_gamma(l_dstl: torch.Tensor, l_ori: torch.Tensor) -> torch.Tensor:
    """gamma 'auto': scale L_ori to L_dstl's magnitude (SnapFusion: "gamma scaled so that L_ori matches L_dstl"),
    gamma = L_dstl / L_ori of the current batch, detached (a weight, not a path for gradients)."""
    return (l_dstl.detach() / l_ori.detach().clamp(min=1e-12)).to(l_ori.dtype)


def distillation_grid(scheduler_config: dict, teacher_steps: int, student_steps: int) -> torch.Tensor:
    """The teacher's path over each student step, [student_steps, k + 1] int64 with k = teacher_steps / student_steps
    (SnapFusion: k = 2, rows (t, t', t'')).

    t runs over the student's own DDIM grid (what `make_scheduler("ddim")` samples it with at `student_steps`), the
    last column is the next student step (-1 after the last), the columns between are the teacher's DDIM grid points
    in between: every k-th point of the teacher's grid must be a student step (true for "trailing" spacing, our noise
    schedule's, when T / student_steps divides evenly enough; an error otherwise)."""
    from diffusers import DDIMScheduler

    k = teacher_steps // student_steps
    if k < 2 or k * student_steps != teacher_steps:
        raise ValueError(f"teacher_steps ({teacher_steps}) must be a multiple >= 2 of student_steps ({student_steps}): "
                         "each student step spans k teacher DDIM steps (SnapFusion: k = 2, one halving per run)")

    def grid(n: int) -> list[int]:
        s = DDIMScheduler.from_config(scheduler_config)
        s.set_timesteps(n)
        return [int(x) for x in s.timesteps]

    teacher = grid(teacher_steps) + [-1]
    student = grid(student_steps)
    if teacher[0::k][:-1] != student:
        raise ValueError(f"the {student_steps}-step DDIM grid {student[:4]}... is not every {k}-th point of the "
                         f"{teacher_steps}-step grid {teacher[:4]}... (timestep_spacing="
                         f"{scheduler_config.get('timestep_spacing')!r}; use 'trailing')")
    return torch.tensor([teacher[i * k:i * k + k + 1] for i in range(student_steps)], dtype=torch.long)


__all__ = ["alpha_sigma", "auto_gamma", "ddim_step", "distillation_grid", "distillation_target", "guided", "mean_flat",
           "predict_v", "step_distillation_loss", "truncated_snr_weight", "v_prediction_loss"]
