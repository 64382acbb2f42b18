"""Stage `ufogen` (diffusion-GAN one-step fine-tune) on the tiny untrained shapes model: the discriminator is the
UNet's down path + mid block with a zero head, gradients go where they should, collapse stops the run with a clear
message, and the CLI trains, logs both losses and D's accuracy, exports and resumes."""

import json

import pytest
import torch
from typer.testing import CliRunner

from pocketdiff.training.config import ConfigError
from pocketdiff.training.run import load_config
from pocketdiff.training.stages.ufogen import TrainingCollapsedError, UFOGenStage


def quick_stage(model_dir, **options):
    cfg = load_config("ufogen", "quick",
                      {"options": {"model_dir": str(model_dir), "init_unet": str(model_dir / "unet"), **options}})
    return UFOGenStage(cfg)


def test_discriminator_is_the_unets_down_path_and_mid_block_with_a_zero_head(quick_model_dir):
    stage = quick_stage(quick_model_dir)
    models = stage.build()
    G, D = models["generator"], models["discriminator"]
    unet = stage._init_unet
    for name, p in D.state_dict().items():
        if not name.startswith(("head", "proj")):
            torch.testing.assert_close(p, unet.state_dict()[name])
    assert not any(k.startswith(("up_levels", "conv_out")) for k in D.state_dict())
    for name, p in G.state_dict().items():
        torch.testing.assert_close(p, unet.state_dict()[name])
    x, ctx = torch.randn(3, 4, 16, 16), torch.randn(3, 16, unet.config.cross_attention_dim)
    logits = D(x, torch.tensor([10, 500, 900]), ctx)
    assert logits.shape[0] == 3 and torch.count_nonzero(logits) == 0  # zero-initialised head


@pytest.mark.parametrize("step", [0, 1])
def test_g_loss_never_trains_d_and_d_trains_every_d_every_steps(quick_model_dir, step):
    stage = quick_stage(quick_model_dir, w_rec=0.0)
    models = torch.nn.ModuleDict(stage.build())
    torch.nn.init.normal_(models["discriminator"].head[-1].weight)  # a non-zero head: G gets an adversarial signal
    frozen = stage.build_frozen()
    stage.step = step
    loss, logs = stage.compute_loss(models, frozen, stage.batch_at(0))
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in models["generator"].parameters())
    d_grads = [p.grad for p in models["discriminator"].parameters()]
    if step % stage.opts.d_every == 0:
        assert "l_d" in logs and 0 <= logs["d_acc_real"] <= 1 and 0 <= logs["d_acc_fake"] <= 1
        assert any(g is not None for g in d_grads)
    else:
        assert "l_d" not in logs and all(g is None for g in d_grads)
    assert logs["l_adv"] > 0 and logs["diversity"] > 0
    assert all(p.grad is None for m in frozen.values() for p in m.parameters())


def test_d_warmup_trains_d_alone_every_step_then_g_joins(quick_model_dir):
    stage = quick_stage(quick_model_dir, d_warmup_steps=3, d_every=2)
    models = torch.nn.ModuleDict(stage.build())
    frozen = stage.build_frozen()
    for step, warm in [(1, True), (2, True), (3, False)]:
        models.zero_grad(set_to_none=True)
        stage.step = step
        loss, logs = stage.compute_loss(models, frozen, stage.batch_at(step * stage.cfg.batch_size))
        loss.backward()
        g_grads = [p.grad for p in models["generator"].parameters()]
        d_trained = any(p.grad is not None for p in models["discriminator"].parameters())
        if warm:  # D every step (step 1 is off the d_every schedule), G untouched, no adversarial loss
            assert all(g is None for g in g_grads) and d_trained and "l_d" in logs and logs["l_adv"] == 0
        else:  # after the warm-up: G trains, D back on its d_every schedule (step 3: off)
            assert any(g is not None for g in g_grads) and not d_trained and "l_d" not in logs


@pytest.mark.parametrize("head", ["patch", "pooled", "deep"])
def test_hinge_loss_and_every_head_start_at_zero_logits(quick_model_dir, head):
    stage = quick_stage(quick_model_dir, d_head=head, d_loss="hinge", w_rec=0.0)
    models = torch.nn.ModuleDict(stage.build())
    frozen = stage.build_frozen()
    stage.step = 0
    loss, logs = stage.compute_loss(models, frozen, stage.batch_at(0))
    # zero logits: L_G = -mean(D(fake)) = 0 and L_D = relu(1 - 0) + relu(1 + 0) = 2
    assert logs["l_adv"] == 0 and logs["l_d"] == pytest.approx(2.0)
    loss.backward()
    head_params = list(models["discriminator"].head.parameters()) + list(
        models["discriminator"].proj.parameters() if models["discriminator"].proj is not None else [])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head_params)


def test_collapse_stops_the_run_with_a_clear_message(quick_model_dir):
    stage = quick_stage(quick_model_dir, collapse_window=3)
    stage.build_frozen()
    ok = {"l_adv": 0.7, "l_rec": 0.1, "diversity": 0.9, "seed_diversity": 0.9, "d_acc_real": 0.6, "d_acc_fake": 0.6}
    stage.step = stage.opts.collapse_grace_steps
    for _ in range(5):
        stage._check_collapse(ok, torch.tensor(1.0))
    with pytest.raises(TrainingCollapsedError, match="mode collapse.*w_rec"):
        for _ in range(3):
            stage._check_collapse({**ok, "seed_diversity": 0.01}, torch.tensor(1.0))
    stage = quick_stage(quick_model_dir, collapse_window=3)
    stage.build_frozen()
    with pytest.raises(TrainingCollapsedError, match="discriminator has won"):
        for _ in range(3):
            stage._check_collapse({**ok, "d_acc_real": 1.0, "d_acc_fake": 1.0}, torch.tensor(1.0))
    with pytest.raises(TrainingCollapsedError, match="nan"):
        stage._check_collapse(ok, torch.tensor(float("nan")))


def test_collapse_is_spread_across_seeds_of_a_prompt_not_across_prompts(quick_model_dir):
    # a one-step generator that ignores its noise gives one picture per prompt: its outputs still differ across the
    # batch's prompts (the spread the check used to measure), but not across seeds of one prompt
    class NoiseBlind(torch.nn.Module):
        def __init__(self, g):
            super().__init__()
            self.g = g

        def forward(self, x, t, ctx):
            return self.g(torch.zeros_like(x), t, ctx)

    stage = quick_stage(quick_model_dir, collapse_window=2, collapse_grace_steps=2, cfg_dropout=0.0)
    models = torch.nn.ModuleDict(stage.build())
    frozen = stage.build_frozen()
    blind = torch.nn.ModuleDict({"generator": NoiseBlind(models["generator"]),
                                 "discriminator": models["discriminator"]})
    logs = []
    with pytest.raises(TrainingCollapsedError, match="differ across seeds"):
        for step in range(4):
            stage.step = step
            logs.append(stage.compute_loss(blind, frozen, stage.batch_at(step))[1])
    assert len(logs) == 2  # steps 0 and 1 pass (grace); it fires at step 2 with a full window
    assert all(r["seed_diversity"] < 1e-3 < stage.opts.collapse_min_diversity < r["diversity"] for r in logs)
    stage = quick_stage(quick_model_dir, collapse_window=2, collapse_grace_steps=0)
    models = torch.nn.ModuleDict(stage.build())
    for step in range(3):  # the generator itself (noise in, x0' out) spreads across seeds: no collapse
        stage.step = step
        assert stage.compute_loss(models, frozen, stage.batch_at(step))[1]["seed_diversity"] > 0


def test_bad_options_are_clear_errors(quick_model_dir):
    with pytest.raises(ConfigError, match="d_head"):
        quick_stage(quick_model_dir, d_head="conv")
    with pytest.raises(ConfigError, match="d_loss"):
        quick_stage(quick_model_dir, d_loss="wasserstein")
    with pytest.raises(ConfigError, match="d_warmup_steps"):
        quick_stage(quick_model_dir, d_warmup_steps=-1)
    with pytest.raises(ConfigError, match="d_betas"):
        quick_stage(quick_model_dir, d_betas=[0.0, 1.5])


def test_cli_trains_logs_both_losses_exports_and_resumes(quick_model_dir, tmp_path):
    from pocketdiff.arch import FlexUNet
    from pocketdiff.cli import build_app
    from pocketdiff.sampling.pipeline import load_pipeline

    run, export = tmp_path / "run", tmp_path / "g"
    args = ["train", "ufogen", "--preset", "quick", "--out", str(run), "--set", f"export_dir={export}",
            "--set", f"options.model_dir={quick_model_dir}", "--set", f"options.init_unet={quick_model_dir / 'unet'}"]
    r = CliRunner().invoke(build_app(), args + ["--set", "max_steps=2"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    r = CliRunner().invoke(build_app(), args + ["--resume"])  # continues from step 2 to the preset's 3
    assert r.exit_code == 0, r.output + repr(r.exception)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "loss" in row]
    assert [row["step"] for row in steps] == [1, 2, 3]
    assert all("l_adv" in row and "l_rec" in row and "grad_norm_generator" in row for row in steps)
    assert "d_acc_real" in steps[0] and "d_acc_fake" in steps[0] and "l_d" not in steps[1]  # D every 2 steps
    FlexUNet.from_pretrained(export)
    assert json.loads((export / "ufogen.json").read_text())["scheduler"] == "ufogen"
    gen = load_pipeline(quick_model_dir, unet_dir=export, scheduler="ufogen")("a red circle", num_inference_steps=1,
                                                                              guidance_scale=1.0)
    assert gen.images.shape == (1, 64, 64, 3) and gen.timings.unet_calls == 1


def test_cpu_preset_is_the_documented_run():
    cfg = load_config("ufogen", "cpu", {})
    o = UFOGenStage(cfg).opts
    assert (cfg.batch_size, o.n_gap, o.d_warmup_steps, o.t_last_fraction) == (16, 2, 100, 0.5)
    assert (o.d_loss, o.d_head, o.d_lr_scale) == ("bce", "patch", 1.0)  # the rest stays the reference
