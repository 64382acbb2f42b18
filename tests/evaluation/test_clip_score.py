"""Domain CLIP score: inputs, errors, and (with the shipped CLIP) matching prompts score higher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pocketdiff.errors import DataError, ModelDirError
from pocketdiff.evaluation.clip_score import clip_score, clip_scores

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "shapes"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from pocketdiff.data.shapes import VOCABULARY
    from pocketdiff.text.clip import CLIPImageTower, build_text_encoder
    from pocketdiff.text.tokenizer import build_tokenizer

    d = tmp_path_factory.mktemp("clip")
    tok = build_tokenizer(VOCABULARY)
    tok.save_pretrained(str(d / "tokenizer"))
    build_text_encoder(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64).save_pretrained(
        str(d / "text_encoder"))
    CLIPImageTower(block_out_channels=(8, 8, 8, 8), hidden_dim=16, text_hidden_size=32, embed_dim=8).save_pretrained(
        str(d / "clip_image"))
    return d


def test_inputs_and_range(model_dir):
    rng = np.random.default_rng(0)
    uint8 = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    prompts = ["a red circle on the left", "a blue square", "a green cross above a red circle"]
    s = clip_score(uint8, prompts, model_dir)
    assert isinstance(s, float) and 0 <= s <= 100
    tensor = torch.from_numpy(uint8).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert clip_score(tensor, prompts, model_dir) == pytest.approx(s, abs=1e-4)
    assert clip_scores(list(uint8), prompts, model_dir).shape == (3,)
    big = np.repeat(np.repeat(uint8, 2, axis=1), 2, axis=2)  # 128x128: resized to the tower's 64x64
    assert 0 <= clip_score(big, prompts, model_dir) <= 100


def test_errors(model_dir, tmp_path):
    imgs = np.zeros((2, 64, 64, 3), np.uint8)
    with pytest.raises(DataError, match="2 images but 1 prompts"):
        clip_score(imgs, ["a red circle"], model_dir)
    with pytest.raises(DataError):
        clip_score(np.zeros((2, 64, 64, 3), np.float32), ["a", "b"], model_dir)
    with pytest.raises(ModelDirError):
        clip_score(imgs, ["a", "b"], tmp_path)


@pytest.mark.skipif(not (SHIPPED / "clip_image").is_dir(), reason="shipped CLIP not trained yet")
def test_shipped_clip_score_prefers_matching_prompts():
    from pocketdiff.data.shapes import caption, render, sample_scene

    rng = np.random.default_rng(5)
    scenes = [sample_scene(rng) for _ in range(32)]
    images = np.stack([render(s, 64, rng) for s in scenes])
    prompts = [caption(s, rng) for s in scenes]
    matched = clip_scores(images, prompts, SHIPPED)
    for k in (1, 2, 3):  # each image against another scene's caption: its own must score higher, pair by pair
        mismatched = clip_scores(images, prompts[k:] + prompts[:k], SHIPPED)
        assert (matched > mismatched).float().mean() >= 0.95  # 1.0 today (64 images, 3 shifts)
        assert matched.mean() > mismatched.mean() + 10
