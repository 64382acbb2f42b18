"""UFOGen's sampler as a diffusers scheduler: one step, or predict x0 and re-noise (Xu et al. 2023, sec. 4).

    sched = UFOGenScheduler.from_config(model_scheduler_config)      # the model's training schedule
    sched.set_timesteps(1)   # [999]:                x0 = G(x_T, T)
    sched.set_timesteps(4)   # [999, 749, 499, 249]: x0' = G(x_t, t); x_s ~ q(x_s | x0') (a fresh draw); repeat; x0'

The grid is the authors' reference sampler's: t_i = floor((i + 1) / n * (T - 1)), i = n-1 .. 0; each step re-noises
the predicted x0 forward to the next point of the grid (`q(x_s | x0) = N(sqrt(abar_s) x0, (1 - abar_s) I)`) and the
last returns the predicted x0 itself. A UFOGen generator is trained for exactly this (`training.stages.ufogen`); any
other UNet can be run through it too (it is then a crude sampler). The re-noising draws from `generator` (a list of
per-image generators from the pipeline, diffusers' convention for stochastic steps), so an image depends only on its
own seed. The noise schedule (alphas_cumprod) is diffusers' DDPMScheduler's for the same config.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler, DDPMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ..errors import DataError


class UFOGenScheduler(SchedulerMixin, ConfigMixin):
    order = 1
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 rescale_betas_zero_snr: bool = False):
        ddpm = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                             beta_schedule=beta_schedule, trained_betas=trained_betas, prediction_type=prediction_type,
                             rescale_betas_zero_snr=rescale_betas_zero_snr)
        self.alphas_cumprod = ddpm.alphas_cumprod
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise DataError(f"UFOGenScheduler: prediction_type {prediction_type!r} is not epsilon, v_prediction "
                            "or sample")
        self.num_inference_steps = None
        self.timesteps = torch.tensor([num_train_timesteps - 1])

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        T = self.config.num_train_timesteps
        if not 1 <= num_inference_steps <= T - 1:
            raise DataError(f"UFOGenScheduler: steps must be in [1, {T - 1}], got {num_inference_steps}")
        self.num_inference_steps = num_inference_steps
        grid = [int((i + 1) / num_inference_steps * (T - 1)) for i in reversed(range(num_inference_steps))]
        self.timesteps = torch.tensor(grid, dtype=torch.long, device=device)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def _x0(self, model_output: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].to(sample.device, sample.dtype)
        kind = self.config.prediction_type
        if kind == "v_prediction":  # x0 = sqrt(abar) x_t - sqrt(1 - abar) v
            return a.sqrt() * sample - (1 - a).sqrt() * model_output
        if kind == "epsilon":  # x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)
            return (sample - (1 - a).sqrt() * model_output) / a.sqrt()
        return model_output

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        """x0' from the model output at `timestep`; then q(x_s | x0') at the grid's next point, or x0' at the end."""
        t = int(timestep)
        grid = self.timesteps.tolist()
        if t not in grid:
            raise DataError(f"UFOGenScheduler.step: timestep {t} is not on the grid {grid} (call set_timesteps)")
        x0 = self._x0(model_output, t, sample)
        i = grid.index(t)
        if i + 1 == len(grid):
            prev = x0
        else:
            a = self.alphas_cumprod[grid[i + 1]].to(sample.device, sample.dtype)
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            prev = a.sqrt() * x0 + (1 - a).sqrt() * noise
        if not return_dict:
            return (prev, x0)
        return DDPMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(original_samples.device, original_samples.dtype)[timesteps.long()]
        a = a.view(-1, *[1] * (original_samples.dim() - 1))
        return a.sqrt() * original_samples + (1 - a).sqrt() * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps
