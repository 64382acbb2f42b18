"""Stage `student` (KD + robust training) on the tiny untrained shapes model: blocks really are dropped, features
are distilled, the CLI runs and resumes."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pocketdiff.training.config import ConfigError
from pocketdiff.training.run import load_config
from pocketdiff.training.stages.student import StudentStage, sample_dropped


def quick_stage(model_dir, **options):
    cfg = load_config("student", "quick", {"options": {"teacher_dir": str(model_dir), **options}})
    return StudentStage(cfg)


def test_robust_training_drops_only_droppable_blocks_at_the_given_rate(quick_model_dir):
    stage = quick_stage(quick_model_dir)
    unet = stage.build()["unet"]
    droppable = set(unet.droppable())
    counts = {k: 0 for k in droppable}
    rng = np.random.default_rng(0)
    for _ in range(400):
        for k in sample_dropped(unet, rng, 0.3, 0.1):
            counts[k] += 1
    from pocketdiff.arch.blocks import TransformerBlock

    tf = [k for k in droppable if isinstance(unet.block(k), TransformerBlock)]
    res = [k for k in droppable if k not in tf]
    assert tf and res
    assert np.mean([counts[k] for k in tf]) / 400 == pytest.approx(0.3, abs=0.05)
    assert np.mean([counts[k] for k in res]) / 400 == pytest.approx(0.1, abs=0.04)
    assert sample_dropped(unet, rng, 0.0, 0.0) == set()


def test_dropped_blocks_get_no_gradient_and_the_loss_has_all_three_terms(quick_model_dir):
    stage = quick_stage(quick_model_dir, p_drop_tf=0.9, p_drop_res=0.9)
    models = torch.nn.ModuleDict(stage.build())
    frozen = stage.build_frozen()
    batch = stage.batch_at(3)
    dropped = sample_dropped(models["unet"], np.random.default_rng(int(batch["drop_seed"][0])), 0.9, 0.9)
    assert dropped
    loss, logs = stage.compute_loss(models, frozen, batch)
    assert logs["dropped"] == len(dropped) and models["unet"].skipped == set()
    assert logs["l_task"] > 0 and logs["l_out"] > 0 and logs["l_feat"] > 0
    loss.backward()
    for key in dropped:
        assert all(p.grad is None for p in models["unet"].block(key).parameters())
    kept = next(k for k in models["unet"].droppable() if k not in dropped) if len(dropped) < len(
        models["unet"].droppable()) else None
    if kept is not None:
        assert any(p.grad is not None for p in models["unet"].block(kept).parameters())
    assert all(p.grad is None for p in frozen["teacher"].parameters())


def test_a_copy_of_the_teacher_without_dropping_has_zero_distillation_loss(quick_model_dir):
    stage = quick_stage(quick_model_dir, p_drop_tf=0.0, p_drop_res=0.0)
    models = torch.nn.ModuleDict(stage.build())
    _, logs = stage.compute_loss(models, stage.build_frozen(), stage.batch_at(0))
    assert logs["l_out"] == pytest.approx(0, abs=1e-10) and logs["l_feat"] == pytest.approx(0, abs=1e-10)


def test_attention_option_converts_the_student_keeping_every_weight(quick_model_dir):
    from pocketdiff.arch.blocks import Attention

    stage = quick_stage(quick_model_dir, attention="relu")
    student, teacher = stage.build()["unet"], stage.build_frozen()["teacher"]
    kinds = {m.kind for m in student.modules() if isinstance(m, Attention)}
    assert kinds == {"relu"} and {m.kind for m in teacher.modules() if isinstance(m, Attention)} == {"softmax"}
    t_sd = teacher.state_dict()
    assert all(torch.equal(p, t_sd[n]) for n, p in student.state_dict().items())
    with pytest.raises(ConfigError, match="attention"):
        quick_stage(quick_model_dir, attention="linear")


def test_bad_drop_probability_is_a_clear_error(quick_model_dir):
    with pytest.raises(ConfigError, match="p_drop_tf"):
        quick_stage(quick_model_dir, p_drop_tf=1.5)


def test_cli_trains_a_preset_student_and_resumes(quick_model_dir, tmp_path):
    from pocketdiff.arch import FlexUNet
    from pocketdiff.cli import build_app

    run, export = tmp_path / "run", tmp_path / "student"
    args = ["train", "student", "--teacher", str(quick_model_dir), "--arch", "mobilediffusion", "--preset", "quick",
            "--out", str(run), "--export", str(export)]
    r = CliRunner().invoke(build_app(), args + ["--set", "max_steps=2"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    r = CliRunner().invoke(build_app(), args + ["--resume"])  # continues from step 2 to the preset's 3
    assert r.exit_code == 0, r.output + repr(r.exception)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3]
    student = FlexUNet.from_pretrained(export)
    assert student.spec.counts()["transformers"] != FlexUNet.from_pretrained(quick_model_dir / "unet").spec.counts()["transformers"]
    assert json.loads((export / "student.json").read_text())["arch"] == "mobilediffusion"
