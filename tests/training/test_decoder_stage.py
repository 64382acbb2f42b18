"""Decoder stage: quick runs on the quick model dir (tiny student on pipeline latents, pruned student on encoder
latents); the export is a drop-in VAE for load_pipeline with the teacher's encoder."""

from __future__ import annotations

import json

import pytest
import torch

from pocketdiff.errors import DataError
from pocketdiff.pruning.decoder import SlimAutoencoderKL, decoder_widths, load_vae_dir
from pocketdiff.pruning.tiny_decoder import TinyDecoder
from pocketdiff.models import build_vae

CONFIG = "decoder"


def _same_encoder(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if k.startswith(("encoder.", "quant_conv."))]
    return bool(keys) and all(torch.equal(sa[k], sb[k]) for k in keys)


def test_decoder_stage_quick_cli(quick_model_dir, tmp_path):
    from typer.testing import CliRunner

    from pocketdiff.cli.train import app
    from pocketdiff.sampling.pipeline import load_pipeline

    out, export = tmp_path / "run", tmp_path / "vae_tiny"
    result = CliRunner().invoke(app, [
        "decoder", "--config", str(CONFIG), "--preset", "quick", "--out", str(out),
        "--set", f"export_dir={export}", "--set", f"options.model_dir={quick_model_dir}",
        "--json", str(tmp_path / "summary.json")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == 3 and summary["eval_psnr"] > 0
    assert summary["student_decoder_params"] < summary["teacher_decoder_params"]
    assert (out / "samples" / "step_000003.png").is_file()

    student, teacher = load_vae_dir(export), load_vae_dir(quick_model_dir / "vae")
    assert isinstance(student, SlimAutoencoderKL) and isinstance(student.decoder, TinyDecoder)
    assert student.config.scaling_factor == teacher.config.scaling_factor and _same_encoder(student, teacher)
    assert json.loads((export / "pruning.json").read_text())["student"] == "tiny"
    pipe = load_pipeline(quick_model_dir, vae_dir=export)  # drops in: same latent interface
    assert isinstance(pipe.vae, SlimAutoencoderKL)
    assert pipe("a red circle", num_inference_steps=1, guidance_scale=1.0).images.shape == (1, 64, 64, 3)


def test_decoder_stage_pruned_encoder_latents(quick_model_dir, tmp_path):
    from pocketdiff.training.run import run_stage

    torch.manual_seed(0)
    build_vae((16, 16, 32), norm_num_groups=8).save_pretrained(str(tmp_path / "teacher"))  # prunable: 2-4 ch/group
    opts = {"model_dir": str(quick_model_dir), "teacher_vae": str(tmp_path / "teacher"), "student": "pruned",
            "latents": "encoder", "edge_weight": 1.0}
    summary = run_stage("decoder", CONFIG, "quick", tmp_path / "run",
                        overrides={"export_dir": str(tmp_path / "pruned"), "max_steps": 2, "sample_every": 0,
                                   "options": opts})
    assert summary["step"] == 2 and "eval_psnr" in summary
    student = load_vae_dir(tmp_path / "pruned")
    assert decoder_widths(student) == [8, 8, 16] and _same_encoder(student, load_vae_dir(tmp_path / "teacher"))

    # student_dir must hold the student kind asked for
    with pytest.raises(DataError, match="student_dir"):
        run_stage("decoder", CONFIG, "quick", tmp_path / "run2", overrides={
            "export_dir": str(tmp_path / "x"),
            "options": {**opts, "student": "tiny", "student_dir": str(tmp_path / "pruned")}})


def test_pipeline_latents_are_cached_once_and_reused(quick_model_dir, tmp_path):
    from pocketdiff.training.run import load_config
    from pocketdiff.training.stages.decoder import DecoderStage

    overrides = {"options": {"model_dir": str(quick_model_dir), "latent_cache": str(tmp_path / "cache")}}
    first = DecoderStage(load_config(CONFIG, "quick", overrides))
    first.build()
    files = list((tmp_path / "cache").glob("latents-*.safetensors"))
    assert len(files) == 1
    second = DecoderStage(load_config(CONFIG, "quick", overrides))
    second._pipeline_latents = None  # must not be called: the cache answers
    second.build()
    assert torch.equal(first.bank, second.bank) and torch.equal(first.eval_z, second.eval_z)
    other = DecoderStage(load_config(CONFIG, "quick", {"options": {**overrides["options"], "sampling_steps": 1}}))
    other.build()
    assert len(list((tmp_path / "cache").glob("latents-*.safetensors"))) == 2  # another key, another file
    both = DecoderStage(load_config(CONFIG, "quick", {"options": {**overrides["options"], "sampling_steps": [2, 1]}}))
    both._pipeline_latents = None  # one bank per step count, both cached above
    both.build()
    assert torch.equal(both.bank, torch.cat([first.bank, other.bank]))
    assert torch.equal(both.eval_z, torch.cat([first.eval_z, other.eval_z]))


def test_pipeline_latents_come_from_the_unet_option(quick_model_dir, tmp_path):
    """options.unet (e.g. the 8-step student) makes the bank instead of model_dir/unet, under its own cache key."""
    from pocketdiff.arch.unet import FlexUNet
    from pocketdiff.training.run import load_config
    from pocketdiff.training.stages.decoder import DecoderStage

    unet = FlexUNet.from_pretrained(quick_model_dir / "unet")
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    unet.save_pretrained(tmp_path / "other_unet")
    opts = {"model_dir": str(quick_model_dir), "latent_cache": str(tmp_path / "cache")}
    own = DecoderStage(load_config(CONFIG, "quick", {"options": opts}))
    own.build()
    other = DecoderStage(load_config(CONFIG, "quick", {"options": {**opts, "unet": str(tmp_path / "other_unet")}}))
    other.build()
    assert len(list((tmp_path / "cache").glob("latents-*.safetensors"))) == 2
    assert not torch.allclose(own.bank, other.bank)


def test_edge_loss_weighs_outlines_not_flat_offsets():
    from pocketdiff.training.stages.decoder import edge_loss

    square = torch.zeros(1, 3, 16, 16)
    square[..., 4:12, 4:12] = 1.0
    assert edge_loss(square, square).item() == 0.0
    assert edge_loss(square + 0.5, square).item() == 0.0  # a flat offset moves no outline
    shifted = torch.roll(square, 1, dims=-1)  # the same square one pixel right: the outline moved
    # along x, each of the 8 rows' two steps moved by one: 4 differences of 1 per row, of 3 x 16 x 15 values;
    # along y, the top and bottom edges each differ at their two end columns: 4 per channel, of 3 x 15 x 16
    expected_x = 3 * 8 * 4 / (3 * 16 * 15)
    expected_y = 3 * 4 / (3 * 15 * 16)
    assert edge_loss(shifted, square).item() == pytest.approx(expected_x + expected_y)


@pytest.mark.parametrize("bad", [{"edge_weight": -1}, {"sampling_steps": 0}, {"sampling_steps": []},
                                 {"sampling_steps": [8, 0]}])
def test_decoder_stage_rejects_bad_options(quick_model_dir, tmp_path, bad):
    from pocketdiff.training.run import run_stage

    with pytest.raises(DataError, match=next(iter(bad))):
        run_stage("decoder", CONFIG, "quick", tmp_path / "run", overrides={
            "export_dir": str(tmp_path / "x"), "options": {"model_dir": str(quick_model_dir), **bad}})
