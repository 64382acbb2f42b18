"""Monitoring a diffusion UNet while it trains (teacher, distill, student stages; the evolving search): a DDIM
pipeline around the UNet and the stage's frozen VAE and text encoder, a sample grid, held-out judged accuracy."""

from __future__ import annotations

from pocketdiff.training.loop import make_grid

SAMPLE_PROMPTS = ["a red circle on the left", "a large blue square", "a small green triangle at the top",
                  "a yellow circle left of a purple square", "a red square above a green circle",
                  "a blue triangle right of a yellow square", "", "an orange circle at the bottom"]


def monitor_pipeline(unet, frozen: dict, tokenizer, scheduler_config):
    """A DDIM pipeline around a UNet being trained and the stage's frozen VAE and text encoder."""
    from pocketdiff.sampling.pipeline import TextToImagePipeline, make_scheduler

    return TextToImagePipeline(unet=unet, vae=frozen["vae"], text_encoder=frozen["text_encoder"],
                               tokenizer=tokenizer, scheduler=make_scheduler("ddim", scheduler_config))


def sample_grid(pipe, prompts: list[str], steps: int, guidance: float):
    return make_grid(pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, seed=0).images,
                     cols=len(prompts))


def heldout_accuracy(pipe, n_prompts: int, steps: int, guidance: float) -> dict[str, float]:
    """Judged accuracy on the first n_prompts/2 prompts of each held-out set (fixed seeds): acc_single, acc_two."""
    if not n_prompts:
        return {}
    from pocketdiff.data.shapes import heldout_prompts
    from pocketdiff.evaluation.judge import evaluate as judge

    out = {}
    for name in ("heldout-single", "heldout-two"):
        prompts = [p for p, _ in heldout_prompts(name)[: n_prompts // 2]]
        images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, seed=0).images
        out[f"acc_{name.split('-')[1]}"] = judge(list(images), prompts)["accuracy"]
    return out

