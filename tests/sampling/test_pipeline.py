import json
import shutil

import numpy as np
import pytest
import torch

from pocketdiff.errors import DataError, ModelDirError
from pocketdiff.sampling.pipeline import TextToImagePipeline, load_pipeline


def test_same_seed_same_image(quick_model_dir):
    pipe = load_pipeline(quick_model_dir)
    a = pipe(["a red circle", "a blue square"], num_inference_steps=3, guidance_scale=3.0, seed=[7, 8]).images
    assert a.shape == (2, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, pipe(["a red circle", "a blue square"], num_inference_steps=3, guidance_scale=3.0,
                                  seed=[7, 8]).images)
    # in another batch the noise is the same; only batch-size-dependent float rounding may move a pixel by 1
    b = pipe(["a blue square"], num_inference_steps=3, guidance_scale=3.0, seed=8).images
    assert np.abs(a[1].astype(int) - b[0]).max() <= 1
    c = pipe(["a blue square"], num_inference_steps=3, guidance_scale=3.0, seed=9).images
    assert not np.array_equal(b, c)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm", "dpm++"])
def test_schedulers_run(quick_model_dir, scheduler):
    gen = load_pipeline(quick_model_dir, scheduler=scheduler)("a red circle", num_inference_steps=4, guidance_scale=2.0)
    assert gen.images.shape == (1, 64, 64, 3)
    assert gen.timings.unet_calls == 4 and gen.timings.total > 0


def test_empty_prompt_is_unconditional(quick_model_dir):
    """"" is what training drops captions to (CFG dropout), so it must be CFG's unconditional branch: the empty prompt
    without guidance (w 1) makes the same image as any prompt at w 0 (u + 0 (c - u) = u)."""
    pipe = load_pipeline(quick_model_dir)
    with torch.no_grad():
        empty, prompt = pipe.encode([""]), pipe.encode(["a red circle"])
    assert empty.shape == prompt.shape and not torch.allclose(empty, prompt)
    alone = pipe("", num_inference_steps=2, guidance_scale=1.0, seed=3).images.astype(int)
    unconditional = pipe("a red circle", num_inference_steps=2, guidance_scale=0.0, seed=3).images.astype(int)
    assert np.abs(alone - unconditional).max() <= 1  # uint8; batch 1 against the CFG batch of 2 may round apart


def test_unknown_words_and_long_prompts_warn(quick_model_dir):
    pipe = load_pipeline(quick_model_dir)
    with pytest.warns(UserWarning, match="zebra"):
        pipe.encode(["a red zebra"])
    with pytest.warns(UserWarning, match="truncated"):
        pipe.encode([" ".join(["red circle"] * 40)])


def test_missing_component_is_a_clear_error(quick_model_dir, tmp_path):
    broken = tmp_path / "m"
    shutil.copytree(quick_model_dir, broken, ignore=shutil.ignore_patterns("runs"))
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelDirError, match="vae"):
        load_pipeline(broken)
    with pytest.raises(ModelDirError, match="does not exist"):
        load_pipeline(tmp_path / "nothing")


def test_is_a_diffusers_pipeline_directory(quick_model_dir):
    index = json.loads((quick_model_dir / "model_index.json").read_text())
    assert index["unet"] == ["pocketdiff.arch", "FlexUNet"]
    pipe = TextToImagePipeline.from_pretrained(quick_model_dir)  # diffusers' own loader
    assert type(pipe.unet).__name__ == "FlexUNet"


def test_bad_steps(quick_model_dir):
    with pytest.raises(DataError):
        load_pipeline(quick_model_dir)("a red circle", num_inference_steps=0)


def test_bf16_pipeline_runs_the_networks_in_bf16_and_keeps_latents_fp32(quick_model_dir):
    pipe = load_pipeline(quick_model_dir, dtype="bf16")
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.bfloat16}
    gen = pipe(["a red circle"], num_inference_steps=2, guidance_scale=2.0, seed=1, decode=False)
    assert gen.images.dtype == np.float32 and np.isfinite(gen.images).all()
    img = pipe(["a red circle"], num_inference_steps=2, guidance_scale=2.0, seed=1).images
    assert img.shape == (1, 64, 64, 3) and img.dtype == np.uint8


def test_unknown_dtype_is_a_clear_error(quick_model_dir):
    from pocketdiff.precision import DTypeError

    with pytest.raises(DTypeError, match="fp32"):
        load_pipeline(quick_model_dir, dtype="fp16")
