"""VAE stage: quick run through the CLI, exported AutoencoderKL with its scaling factor, held-out PSNR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from pocketdiff.data.shapes import heldout_images
from pocketdiff.evaluation.reconstruction import evaluate_vae, psnr
from pocketdiff.models import build_vae, load_vae

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "shapes" / "vae"


def test_vae_layout():
    vae = build_vae((8, 8, 16), norm_num_groups=8)
    with torch.no_grad():
        z = vae.encode(torch.zeros(2, 3, 64, 64)).latent_dist.mode()
        assert z.shape == (2, 4, 16, 16)
        assert vae.decode(z).sample.shape == (2, 3, 64, 64)


def test_psnr_and_heldout_images():
    x = heldout_images(4)
    assert x.shape == (4, 3, 64, 64) and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(heldout_images(4), x)  # fixed seed: the same every time
    assert psnr(x, x).min() > 90
    assert abs(psnr(x + 0.02, x).mean().item() - 10 * torch.log10(torch.tensor(4 / 4e-4)).item()) < 0.5


def test_vae_stage_quick_cli(tmp_path):
    from typer.testing import CliRunner

    from pocketdiff.cli.train import app

    out, export = tmp_path / "run", tmp_path / "vae"
    result = CliRunner().invoke(app, [
        "vae", "--config", "vae", "--preset", "quick", "--out", str(out),
        "--set", f"export_dir={export}", "--set", "options.latent_std=0.6", "--json", str(tmp_path / "summary.json")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == 5 and "eval_psnr" in summary
    assert (out / "samples" / "step_000005.png").is_file() and (out / "log.jsonl").is_file()
    vae = AutoencoderKL.from_pretrained(str(export))
    assert vae.config.latent_channels == 4 and vae.config.scaling_factor != 0.18215 and vae.config.scaling_factor > 0
    assert set(evaluate_vae(export, n=4)) == {"eval_psnr", "eval_psnr_p05", "eval_judged_single", "eval_judged_two"}
    # scaling_factor puts the latents at latent_std (0.6 here), not at SD's unit std
    from pocketdiff.data.shapes import make_batch

    x = make_batch(np.random.default_rng(1), 64)["pixel_values"]
    with torch.no_grad():
        z = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor
    assert abs(z.std().item() / 0.6 - 1) < 0.25


def test_kl_weight_is_relative_to_summed_reconstruction():
    """SD's convention: loss = sum_pixels(recon) + w * sum_latent(KL), here divided by the pixel count."""
    from pocketdiff.training.run import load_config
    from pocketdiff.training.stages.vae import VAEStage

    cfg = load_config("vae", preset="quick")
    stage = VAEStage(cfg)
    models = stage.build()
    x = heldout_images(2)
    torch.manual_seed(0)
    weight = stage.opts.kl_weight
    loss0, logs = stage.compute_loss(models, {}, {"pixel_values": x})
    stage.opts.kl_weight = 1.0
    torch.manual_seed(0)
    loss1, _ = stage.compute_loss(models, {}, {"pixel_values": x})
    assert loss1.item() - loss0.item() == pytest.approx((1.0 - weight) * logs["kl"] / x[0].numel(), rel=1e-3)


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="shipped VAE not trained yet")
def test_shipped_vae_meets_psnr_target():
    vae = load_vae(SHIPPED)
    assert evaluate_vae(vae, n=100)["eval_psnr"] >= 30.0
    assert 0.05 < vae.config.scaling_factor < 20
    assert sum(p.numel() for p in vae.parameters()) * 4 / 2**20 < 12  # MB, fp32
