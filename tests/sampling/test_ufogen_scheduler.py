"""The UFOGen scheduler: the reference sampler's grid, x0 from v, forward re-noising with per-image generators, and
its use through the pipeline (1 step = one UNet call)."""

import numpy as np
import pytest
import torch

from pocketdiff.errors import DataError
from pocketdiff.sampling.pipeline import load_pipeline, make_scheduler
from pocketdiff.sampling.ufogen import UFOGenScheduler

CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"}


@pytest.mark.parametrize("n, grid", [(1, [999]), (2, [999, 499]), (4, [999, 749, 499, 249])])
def test_grid_is_the_reference_samplers(n, grid):
    s = UFOGenScheduler.from_config(CONFIG)
    s.set_timesteps(n)
    assert s.timesteps.tolist() == grid


def test_last_step_returns_x0_and_earlier_steps_renoise_it_forward():
    s = UFOGenScheduler.from_config(CONFIG)
    s.set_timesteps(2)
    a = s.alphas_cumprod
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = 999
    x_t = a[t].sqrt() * x0 + (1 - a[t]).sqrt() * eps
    v = a[t].sqrt() * eps - (1 - a[t]).sqrt() * x0  # the exact v of (x0, eps) at t
    out = s.step(v, t, x_t, generator=[torch.Generator().manual_seed(i) for i in (5, 6)])
    torch.testing.assert_close(out.pred_original_sample, x0, atol=1e-4, rtol=1e-4)
    noise = torch.stack([torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(i))[0] for i in (5, 6)])
    torch.testing.assert_close(out.prev_sample, a[499].sqrt() * out.pred_original_sample + (1 - a[499]).sqrt() * noise)
    t = 499
    x_t = a[t].sqrt() * x0 + (1 - a[t]).sqrt() * eps
    v = a[t].sqrt() * eps - (1 - a[t]).sqrt() * x0
    torch.testing.assert_close(s.step(v, t, x_t).prev_sample, x0, atol=1e-4, rtol=1e-4)


def test_bad_steps_and_off_grid_timesteps_are_clear_errors():
    s = make_scheduler("ufogen", CONFIG)
    with pytest.raises(DataError, match="steps"):
        s.set_timesteps(0)
    s.set_timesteps(2)
    with pytest.raises(DataError, match="grid"):
        s.step(torch.zeros(1, 4, 2, 2), 500, torch.zeros(1, 4, 2, 2))


def test_through_the_pipeline_one_step_is_one_unet_call_and_images_depend_only_on_their_seed(quick_model_dir):
    pipe = load_pipeline(quick_model_dir, scheduler="ufogen")
    gen = pipe(["a red circle", "a blue square"], num_inference_steps=1, guidance_scale=1.0, seed=[3, 4])
    assert gen.timings.unet_calls == 1 and gen.images.shape == (2, 64, 64, 3)
    two = pipe(["a red circle", "a blue square"], num_inference_steps=2, guidance_scale=1.0, seed=[3, 4]).images
    alone = pipe(["a blue square"], num_inference_steps=2, guidance_scale=1.0, seed=4).images
    assert np.abs(two[1].astype(int) - alone[0]).max() <= 1  # the re-noising draws from the image's own generator
    other = pipe(["a blue square"], num_inference_steps=2, guidance_scale=1.0, seed=5).images
    assert not np.array_equal(alone, other)
