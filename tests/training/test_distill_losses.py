"""SnapFusion's step distillation losses against hand-computed cases (pocketdiff.training.distill)."""

from types import SimpleNamespace

import pytest
import torch

from pocketdiff.training.distill import (alpha_sigma, auto_gamma, ddim_step, distillation_grid, distillation_target,
                                         guided, step_distillation_loss, truncated_snr_weight, v_prediction_loss)

# alpha_bar with exact (alpha, sigma) pairs: t=0 (1, 0), t=1 (0.96, 0.28), t=2 (0.8, 0.6), t=3 (0.6, 0.8)
SCHED = SimpleNamespace(alphas_cumprod=torch.tensor([1.0, 0.9216, 0.64, 0.36], dtype=torch.float64))
AS = {0: (1.0, 0.0), 1: (0.96, 0.28), 2: (0.8, 0.6), 3: (0.6, 0.8)}


def linear(k_of_ctx):
    """A known "UNet": v = k z, the slope k given by the context tensor (one scalar per sample)."""
    return lambda z, t, ctx: ctx.reshape(-1, 1, 1, 1) * z * k_of_ctx


def hand_loss(z, k_teacher, k_student, t, t1, t2):
    """The paper's recipe in scalar arithmetic: two teacher DDIM steps, the x-space target, the weighted error."""
    (a, s), (a1, s1), (a2, s2) = AS[t], AS[t1], AS[t2]
    v = k_teacher * z
    x, e = a * z - s * v, s * z + a * v
    z1 = a1 * x + s1 * e
    v = k_teacher * z1
    x, e = a1 * z1 - s1 * v, s1 * z1 + a1 * v
    z2 = a2 * x + s2 * e
    target = (z2 - s2 / s * z) / (a2 - s2 / s * a)
    x_student = a * z - s * k_student * z
    return max(a * a / (s * s), 1.0) * (x_student - target) ** 2, target


def z_and_ts():
    z = torch.ones(2, 1, 1, 1)
    return z, torch.tensor([3, 2]), torch.tensor([2, 1]), torch.tensor([1, 0])


def test_hand_computed_case_with_written_out_numbers():
    # t=3 -> 2 -> 1, z=1, v_T = 0.5 z: z' = 0.8*0.2 + 0.6*1.1 = 0.82, z'' = 0.96*0.41 + 0.28*0.82 = 0.6232
    # target = (0.6232 - 0.35) / (0.96 - 0.21);  student v = 0.25 z: x_hat = 0.6 - 0.2 = 0.4;  weight 1
    loss, target = hand_loss(1.0, 0.5, 0.25, 3, 2, 1)
    assert target == pytest.approx(0.2732 / 0.75)
    assert loss == pytest.approx((0.4 - 0.2732 / 0.75) ** 2)
    # t=2 -> 1 -> 0 (sigma_t'' = 0: target = z''), weight max(0.64/0.36, 1) = 16/9
    loss, target = hand_loss(1.0, 0.5, 0.25, 2, 1, 0)
    assert target == pytest.approx(0.6232) and loss == pytest.approx(16 / 9 * (0.65 - 0.6232) ** 2)


def test_vanilla_loss_matches_the_hand_computation():
    z, t, t1, t2 = z_and_ts()
    cond = torch.ones(2)
    loss, v_cond = step_distillation_loss(linear(0.25), linear(0.5), z, t, t1, t2, SCHED, cond)
    expected = [hand_loss(1.0, 0.5, 0.25, *ts)[0] for ts in ((3, 2, 1), (2, 1, 0))]
    assert torch.allclose(loss, torch.tensor(expected), rtol=1e-5)
    assert torch.allclose(v_cond, 0.25 * z)  # the student's v(c), reused by L_ori


def test_a_k_step_teacher_chains_its_ddim_steps():
    # a teacher taking 3 DDIM steps 3 -> 2 -> 1 -> 0 for the student's one step 3 -> 0
    z, k_t = 1.0, 0.5
    z_end = z
    for u, n in ((3, 2), (2, 1), (1, 0)):
        (a, s), (a1, s1) = AS[u], AS[n]
        v = k_t * z_end
        z_end = a1 * (a * z_end - s * v) + s1 * (s * z_end + a * v)
    (a, s), (a2, s2) = AS[3], AS[0]
    target = (z_end - s2 / s * z) / (a2 - s2 / s * a)  # sigma_0 = 0 here: the target is z_end itself
    x_student = a * z - s * 0.25 * z
    loss, _ = step_distillation_loss(linear(0.25), linear(k_t), torch.ones(1, 1, 1, 1), torch.tensor([3]),
                                     torch.tensor([[2, 1]]), torch.tensor([0]), SCHED, torch.ones(1))
    assert loss.item() == pytest.approx(max(a * a / (s * s), 1.0) * (x_student - target) ** 2, rel=1e-5)


def test_cfg_loss_guides_every_unet_output():
    # v(c) = k_c z and v(empty) = k_u z: the guided v~ = (w k_c - (w-1) k_u) z, a linear model again
    z, t, t1, t2 = z_and_ts()
    cond, uncond, w = torch.full((2,), 0.5), torch.full((2,), 0.25), torch.tensor([3.0, 5.0])
    teacher, student = linear(1.0), linear(0.4)
    loss, v_cond = step_distillation_loss(student, teacher, z, t, t1, t2, SCHED, cond, uncond, w)
    expected = []
    for wi, ts in zip(w.tolist(), ((3, 2, 1), (2, 1, 0))):
        k_teacher, k_student = wi * 0.5 - (wi - 1) * 0.25, wi * 0.2 - (wi - 1) * 0.1
        expected.append(hand_loss(1.0, k_teacher, k_student, *ts)[0])
    assert torch.allclose(loss, torch.tensor(expected), rtol=1e-5)
    assert torch.allclose(v_cond, 0.2 * z)


def test_cfg_loss_with_w_1_is_the_vanilla_loss():
    torch.manual_seed(0)
    z = torch.randn(3, 2, 4, 4)
    t, t1, t2 = torch.tensor([3, 2, 3]), torch.tensor([2, 1, 2]), torch.tensor([1, 0, 1])
    cond, uncond = torch.randn(3), torch.randn(3)
    teacher = lambda z, t, c: torch.tanh(c.reshape(-1, 1, 1, 1) * z) + 0.1 * t.reshape(-1, 1, 1, 1)  # noqa: E731
    student = lambda z, t, c: 0.5 * c.reshape(-1, 1, 1, 1) * z ** 2  # noqa: E731
    vanilla, _ = step_distillation_loss(student, teacher, z, t, t1, t2, SCHED, cond)
    cfg, _ = step_distillation_loss(student, teacher, z, t, t1, t2, SCHED, cond, uncond, torch.ones(3))
    assert torch.allclose(cfg, vanilla, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(step_distillation_loss(student, teacher, z, t, t1, t2, SCHED, cond, uncond, 4.0)[0],
                              vanilla)


def test_student_gradient_only():
    z, t, t1, t2 = z_and_ts()
    k = torch.tensor(0.25, requires_grad=True)
    teacher_k = torch.tensor(0.5, requires_grad=True)
    loss, _ = step_distillation_loss(linear(k), linear(teacher_k), z, t, t1, t2, SCHED, torch.ones(2))
    loss.sum().backward()
    assert k.grad is not None and teacher_k.grad is None  # the teacher's steps run without grad


def test_target_makes_the_students_ddim_step_land_on_the_teachers_point():
    torch.manual_seed(1)
    z_t, z_tpp = torch.randn(5, 4), torch.randn(5, 4)
    a_t, s_t, a_s, s_s = 0.6, 0.8, 0.96, 0.28
    x = distillation_target(z_t, z_tpp, a_t, s_t, a_s, s_s)
    v = (a_t * z_t - x) / s_t  # the v whose x_hat is the target
    assert torch.allclose(ddim_step(z_t, v, a_t, s_t, a_s, s_s), z_tpp, atol=1e-5)


def test_ddim_step_with_the_true_v_is_the_exact_q_sample():
    from pocketdiff.diffusion import noise_schedule

    sched = noise_schedule(SimpleNamespace(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                           prediction_type="v_prediction"))
    torch.manual_seed(2)
    x, eps = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    (a_t, s_t), (a_s, s_s) = alpha_sigma(sched, torch.tensor([999, 700, 300, 31])), alpha_sigma(
        sched, torch.tensor([968, 500, 0, -1]))
    z_t, v = a_t * x + s_t * eps, a_t * eps - s_t * x
    assert torch.allclose(ddim_step(z_t, v, a_t, s_t, a_s, s_s), a_s * x + s_s * eps, atol=1e-5)
    assert torch.allclose(a_t**2 + s_t**2, torch.ones(1)) and a_t.shape == (4, 1, 1, 1)
    assert v_prediction_loss(v, x, eps, a_t, s_t).abs().max() < 1e-10  # L_ori is zero for the true v


def test_alpha_sigma_end_of_sampling_is_alpha_bar_0():
    a, s = alpha_sigma(SCHED, torch.tensor([-1, 0, 2]), ndim=1)
    assert a.tolist() == pytest.approx([1.0, 1.0, 0.8]) and s.tolist() == pytest.approx([0.0, 0.0, 0.6])


def test_truncated_snr_weight():
    a, s = torch.tensor([0.6, 0.8, 0.96, 1e-3]), torch.tensor([0.8, 0.6, 0.28, 1.0])
    assert truncated_snr_weight(a, s).tolist() == pytest.approx([1.0, 16 / 9, 0.9216 / 0.0784, 1.0])


def test_guided():
    c, u = torch.tensor([2.0]), torch.tensor([1.0])
    assert guided(c, u, 1.0).item() == 2.0 and guided(c, u, 3.0).item() == 4.0  # 3*2 - 2*1
    assert guided(c, c, 7.5).item() == pytest.approx(2.0)


def test_auto_gamma_matches_magnitudes_without_gradient():
    l_dstl, l_ori = torch.tensor(0.3, requires_grad=True), torch.tensor(1.2, requires_grad=True)
    g = auto_gamma(l_dstl, l_ori)
    assert (g * l_ori).item() == pytest.approx(0.3) and not g.requires_grad


def test_distillation_grid_halves_the_teachers_ddim_grid():
    from pocketdiff.diffusion import noise_schedule

    cfg = dict(noise_schedule(SimpleNamespace(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                              prediction_type="v_prediction")).config)
    grid = distillation_grid(cfg, 32, 16)
    assert grid.shape == (16, 3) and grid[0].tolist() == [999, 968, 937] and grid[-1].tolist() == [61, 30, -1]
    assert (grid[1:, 0] == grid[:-1, 2]).all() and (grid[:, 0] > grid[:, 1]).all() and (grid[:, 1] > grid[:, 2]).all()
    four = distillation_grid(cfg, 32, 8)  # a 32-step teacher for an 8-step student: 4 teacher steps per student step
    assert four.shape == (8, 5)  # row i: the 16-step grid's rows 2i and 2i + 1, joined
    assert (four == torch.cat([grid[0::2], grid[1::2, 1:]], 1)).all()
    with pytest.raises(ValueError, match="multiple >= 2"):
        distillation_grid(cfg, 24, 16)
