"""Stage `distill` and `pocketdiff train distill` on the tiny untrained shapes model (seconds)."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pocketdiff.training.config import ConfigError
from pocketdiff.training.run import load_config
from pocketdiff.training.stages.distill import DistillStage


def quick_stage(model_dir, **options):
    cfg = load_config("distill", "quick", {"options": {"teacher_dir": str(model_dir), **options}})
    return DistillStage(cfg)


def test_cli_quick_run_exports_a_loadable_student(quick_model_dir, tmp_path):
    from pocketdiff.cli import build_app
    from pocketdiff.sampling.pipeline import load_pipeline

    run, export = tmp_path / "run", tmp_path / "unet_s2"
    r = CliRunner().invoke(build_app(), [
        "train", "distill", "--teacher", str(quick_model_dir), "--student-steps", "2", "--p", "0.5",
        "--w-range", "2", "4", "--gamma", "0.2", "--preset", "quick", "--out", str(run), "--export", str(export)])
    assert r.exit_code == 0, r.output + repr(r.exception)
    cfg = (run / "config.yaml").read_text()
    assert "teacher_steps: 4" in cfg and "gamma: 0.2" in cfg and "- 4.0" in cfg
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 3 and np.isfinite(losses).all()
    assert all(row["gamma"] == pytest.approx(0.2) for row in rows if "gamma" in row)
    assert json.loads((export / "distillation.json").read_text())["student_steps"] == 2
    pipe = load_pipeline(quick_model_dir, unet_dir=export)
    gen = pipe(["a red circle"], num_inference_steps=2, guidance_scale=3.0)
    assert gen.images.shape[0] == 1 and gen.images.dtype == np.uint8


def test_batches_depend_only_on_the_sample_numbers_and_the_loss_is_deterministic(quick_model_dir):
    stage = quick_stage(quick_model_dir, p=1.0, mix="sample")
    models = torch.nn.ModuleDict(stage.build())
    frozen = stage.build_frozen()
    torch.manual_seed(1)
    a = stage.batch_at(7)
    torch.manual_seed(2)  # the torch stream must not matter
    b = stage.batch_at(7)
    assert a["caption"] == b["caption"] and a["cfg"] == b["cfg"]
    for k in ("pixel_values", "t", "w", "noise_seed"):
        assert torch.equal(a[k], b[k])
    assert a["cfg"] and ((a["w"] >= 2) & (a["w"] <= 14)).all()
    assert set(a["t"][:, 0].tolist()) <= set(stage.grid[:, 0].tolist())
    torch.manual_seed(3)
    la, logs = stage.compute_loss(models, frozen, a)
    torch.manual_seed(4)
    lb, _ = stage.compute_loss(models, frozen, b)
    assert torch.isfinite(la) and la.item() == lb.item()
    assert logs["gamma"] * logs["l_ori"] == pytest.approx(logs["l_dstl"], rel=1e-4)  # gamma auto
    la.backward()
    assert all(p.grad is None for p in frozen["teacher"].parameters())


def test_p_0_is_vanilla_everywhere(quick_model_dir):
    stage = quick_stage(quick_model_dir, p=0.0, mix="sample")
    stage.build()
    stage.cfg.batch_size = 6
    batch = stage.batch_at(0)
    assert not batch["cfg"] and torch.equal(batch["w"], torch.ones(6))


def test_student_from_a_preset_is_initialised_from_the_teacher(quick_model_dir):
    stage = quick_stage(quick_model_dir, student="snapfusion")
    student, teacher = stage.build()["unet"], stage.build_frozen()["teacher"]
    assert student.spec.name.startswith("snapfusion") and student.spec.channels == teacher.spec.channels
    assert torch.equal(student.conv_in.weight, teacher.conv_in.weight)
    z = torch.randn(1, 4, teacher.spec.sample_size, teacher.spec.sample_size)
    assert student(z, torch.tensor([10]), torch.randn(1, 8, teacher.spec.cross_attention_dim)).sample.shape == z.shape


def test_options_are_checked():
    with pytest.raises(ConfigError, match="teacher_steps"):
        load_config("distill", None, {"options": {"teacher_steps": 24, "student_steps": 16}})
    with pytest.raises(ConfigError, match="gamma"):
        load_config("distill", None, {"options": {"gamma": "big"}})
    cfg = load_config("distill", None, {"options": {"gamma": 0.2, "w_range": [1, 3]}})
    assert cfg.options.gamma == 0.2 and cfg.options.w_range == (1.0, 3.0)
    DistillStage(cfg)  # export_dir names options in braces: each halving exports beside the teacher
    assert cfg.export_dir == f"{cfg.options.teacher_dir}/unet_s8"


def test_cli_without_a_trained_teacher_says_so(tmp_path):
    from pocketdiff.cli import build_app

    r = CliRunner().invoke(build_app(), ["train", "distill", "--teacher", str(tmp_path), "--preset", "quick",
                                         "--out", str(tmp_path / "run")])
    assert isinstance(r.exception, ConfigError) and "scheduler" in str(r.exception)
