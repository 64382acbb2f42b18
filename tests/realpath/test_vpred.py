"""`train vpred`: the epsilon teacher fine-tuned to v, exported as a complete model directory that the v-only
stages take as their teacher."""

import json

import pytest
import torch

from pocketdiff.errors import ConfigError


def test_the_v_only_stages_refuse_the_epsilon_teacher_and_name_vpred(sd15_dir):
    from pocketdiff.models import load_teacher

    with pytest.raises(ConfigError, match="train vpred"):
        load_teacher(sd15_dir)


def test_vpred_exports_a_v_prediction_model_dir(sd15_dir, vpred_dir):
    from pocketdiff.models import load_flexunet, load_teacher

    sched = json.loads((vpred_dir / "scheduler" / "scheduler_config.json").read_text())
    src = json.loads((sd15_dir / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction" and sched["timestep_spacing"] == "trailing"
    assert {k: sched[k] for k in ("beta_start", "beta_end", "beta_schedule")} == \
        {k: src[k] for k in ("beta_start", "beta_end", "beta_schedule")}  # the teacher's noise schedule kept
    for name in ("text_encoder", "vae", "tokenizer"):  # frozen parts are hard links, not copies
        for f in (sd15_dir / name).iterdir():
            assert (vpred_dir / name / f.name).stat().st_ino == f.stat().st_ino
    before, after = load_flexunet(sd15_dir / "unet"), load_flexunet(vpred_dir / "unet")
    assert before.spec == after.spec
    changed = [k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert changed  # it trained
    sched_config, tokenizer, frozen = load_teacher(vpred_dir)  # now a teacher for student / distill
    assert tokenizer.model_max_length == 77


def test_vpred_loss_is_the_mse_on_v(sd15_dir, caption_folder):
    """The target is v = alpha_t eps - sigma_t x0 on the teacher's schedule: a UNet that outputs exactly that
    (computed here from the alphas, not through diffusers' get_velocity) has loss 0."""
    from pocketdiff.training.config import config_from_dict
    from pocketdiff.training.stages.vpred import VPredStage

    cfg = config_from_dict({"stage": "vpred", "export_dir": "unused", "batch_size": 2,
                            "options": {"teacher_dir": str(sd15_dir), "data": str(caption_folder)}}, VPredStage.Options)
    stage = VPredStage(cfg)
    frozen = stage.build_frozen()
    batch = stage.batch_at(0)
    from pocketdiff.diffusion import noised_latents

    x0, eps, t, z_t = noised_latents(stage.scheduler, frozen["vae"], batch)
    ab = stage.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0

    class Oracle(torch.nn.Module):
        def forward(self, z, tt, ctx):
            return type("Out", (), {"sample": v})()

    loss, _ = stage.compute_loss({"unet": Oracle()}, frozen, batch)
    assert float(loss) < 1e-10
    assert batch["pixel_values"].shape[-1] == 64  # the VAE's sample_size, as no resolution was given


def test_an_already_v_teacher_is_only_fine_tuned_with_a_warning(vpred_dir, caption_folder):
    from pocketdiff.training.run import run_stage

    with pytest.warns(UserWarning, match="already predicts v"):
        run_stage("vpred", preset="quick", out=vpred_dir.parent / "again", overrides={
            "max_steps": 1, "export_dir": str(vpred_dir.parent / "again" / "model"),
            "options": {"teacher_dir": str(vpred_dir), "data": str(caption_folder)}})
