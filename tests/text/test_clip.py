"""Tiny CLIP: text encoder API (transformers 5), image tower, contrastive loss, stage, and the shipped model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pocketdiff.data.shapes import VOCABULARY
from pocketdiff.text.clip import CLIPImageTower, build_text_encoder, contrastive_loss, encode_prompts, load_clip
from pocketdiff.text.tokenizer import build_tokenizer

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "shapes"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tok = build_tokenizer(VOCABULARY)
    return tok, build_text_encoder(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64).eval()


def test_encode_prompts_shapes_and_unconditional(tiny):
    tok, enc = tiny
    assert not hasattr(enc, "text_model")  # transformers 5 layout
    with torch.no_grad():
        h = encode_prompts(tok, enc, ["a red circle on the left", "", "a blue square above a red cross"])
        uncond = encode_prompts(tok, enc, "")
    assert h.shape == (3, 24, 32)
    torch.testing.assert_close(h[1:2], uncond)
    assert not torch.allclose(h[0], h[2])


def test_text_encoder_config_matches_tokenizer(tiny):
    tok, enc = tiny
    c = enc.config
    assert c.vocab_size == len(tok) and c.max_position_embeddings == tok.model_max_length
    assert (c.pad_token_id, c.bos_token_id, c.eos_token_id) == (0, 2, 3)


def test_image_tower_and_loss():
    tower = CLIPImageTower(block_out_channels=(8, 8, 8, 8), hidden_dim=16, text_hidden_size=32, embed_dim=8)
    img = tower.encode_image(torch.rand(4, 3, 64, 64) * 2 - 1)
    txt = tower.encode_text(torch.randn(4, 24, 32))
    assert img.shape == txt.shape == (4, 8)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(4))
    e = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    assert contrastive_loss(e, e, torch.tensor(4.6)) < contrastive_loss(e, e.roll(1, 0), torch.tensor(4.6))


def test_clip_stage_quick_exports_loadable_model(tmp_path):
    from pocketdiff.training.run import run_stage

    run_stage("tokenizer", "tokenizer", "quick", out=tmp_path / "r_tok",
              overrides={"export_dir": str(tmp_path / "m" / "tokenizer")})
    summary = run_stage("clip", "clip", "quick", out=tmp_path / "r_clip",
                        overrides={"export_dir": str(tmp_path / "m" / "text_encoder"),
                                   "options": {"tokenizer_dir": str(tmp_path / "m" / "tokenizer")}})
    assert summary["step"] == 5 and 0 <= summary["eval_i2t_top1"] <= 1
    tok, enc, tower = load_clip(tmp_path / "m")
    assert enc.config.hidden_size == 32 and tower.config.text_hidden_size == 32
    with torch.no_grad():
        assert encode_prompts(tok, enc, ["a red circle"]).shape == (1, 24, 32)


@pytest.mark.skipif(not (SHIPPED / "clip_image").is_dir(), reason="shipped CLIP not trained yet")
def test_shipped_clip_tells_captions_apart():
    from pocketdiff.training.stages.clip import evaluate_clip

    tok, enc, tower = load_clip(SHIPPED)
    m = evaluate_clip(tok, enc, tower, n=64, n_attr=160)
    assert m["eval_i2t_top1"] >= 0.5 and m["eval_i2t_top1_train"] >= 0.7
    assert m["eval_attr_acc"] >= 0.85 and m["eval_attr_cos"] < 0.98
    with torch.no_grad():
        h = encode_prompts(tok, enc, ["a large red circle on the left", "a large blue circle on the left"])
    assert (h[0] - h[1]).norm() > 0.1 * h[0].norm()
