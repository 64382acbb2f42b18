"""The trainer core: exact resume, atomic checkpoints, budgets, LR schedule, config validation, CLI errors."""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from pocketdiff.errors import PocketDiffError, UnknownPresetError
from pocketdiff.training.config import ConfigError, TrainConfig, config_from_dict, parse_set
from pocketdiff.training.run import load_config
from pocketdiff.training.loop import Stage, find_checkpoint, lr_at, train



class ToyStage(Stage):
    """Noisy linear regression: examples from the seeded stream, noise from the torch RNG (both must resume)."""

    name = "toy"

    @dataclass
    class Options:
        dim: int = 4
        interrupt_at_batch: int | None = None
        bad_every: int = 0  # every k-th item of the data source is bad (skipped and counted)

    def build(self):
        self.calls = 0
        return {"net": nn.Sequential(nn.Linear(self.opts.dim, 8), nn.Tanh(), nn.Linear(8, 1))}

    def dataset(self):
        from pocketdiff.testing import toy_regression_stream

        return toy_regression_stream(self.cfg.seed, self.opts.dim, self.opts.bad_every)

    def compute_loss(self, models, frozen, batch):
        self.calls += 1
        if self.calls == self.opts.interrupt_at_batch:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C: this step completes, then checkpoint and stop
        pred = models["net"](batch["x"] + 0.1 * torch.randn_like(batch["x"]))
        loss = (pred - batch["y"]).pow(2).mean()
        return loss, {"mse": loss.item()}

    def evaluate(self, models, frozen):
        torch.randn(10)  # side tasks must not shift the training RNG
        return {"eval_w": models["net"][0].weight.sum().item()}

    def export(self, models, frozen, export_dir):
        export_dir.mkdir(parents=True, exist_ok=True)
        torch.save(models.state_dict(), export_dir / "toy.pt")


def toy_cfg(tmp_path, **kw) -> TrainConfig:
    options = kw.pop("options", {})
    base = dict(stage="toy", export_dir=str(tmp_path / "export"), max_steps=8, batch_size=4, lr=1e-2, warmup_steps=2,
                ema_decay=0.9, log_every=1, checkpoint_every=100, eval_every=3, num_threads=1)
    return config_from_dict({**base, **kw, "options": options}, ToyStage.Options)


def weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoint" / name))


def test_resume_is_exact_toy(tmp_path):
    sigint_before = signal.getsignal(signal.SIGINT)  # SIG_IGN, not Python's default, under nohup or a background job
    full = train(ToyStage(cfg := toy_cfg(tmp_path)), cfg, tmp_path / "full")
    # Ctrl-C during the 4th batch -> step 4 completes, checkpoint at step 4, no export; then resume to step 8
    cut = toy_cfg(tmp_path, options={"interrupt_at_batch": 4})
    stopped = train(ToyStage(cut), cut, tmp_path / "split")
    assert stopped["stopped"] == "interrupted" and stopped["step"] == 4
    assert json.loads((tmp_path / "split" / "checkpoint" / "state.json").read_text())["step"] == 4
    assert signal.getsignal(signal.SIGINT) is sigint_before  # the caller's handler restored
    again = train(ToyStage(cfg), cfg, tmp_path / "split", resume=True)
    assert full["step"] == again["step"] == 8
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(tmp_path / "full", name), weights(tmp_path / "split", name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    rows = [json.loads(r) for r in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))  # no duplicate rows after resume


def test_resume_is_exact_vae(tmp_path):
    """A real stage (diffusers AutoencoderKL, posterior sampling from the torch RNG), stopped by checkpoint + resume."""
    from pocketdiff.training.stages import VAEStage

    over = {"export_dir": str(tmp_path / "vae"), "max_steps": 4, "checkpoint_every": 100, "sample_every": 0,
            "num_threads": 1, "options": {"eval_images": 4, "scaling_samples": 4}}
    c = load_config("vae", "quick", over)
    train(VAEStage(c), c, tmp_path / "full")
    # SIGTERM (as `kill PID`) during the second batch: stop and checkpoint after step 2, then resume
    stage = VAEStage(c)
    orig, calls = stage.compute_loss, [0]

    def compute_loss(*args):
        calls[0] += 1
        if calls[0] == 2:
            signal.raise_signal(signal.SIGTERM)
        return orig(*args)

    stage.compute_loss = compute_loss
    assert train(stage, c, tmp_path / "split")["step"] == 2
    train(VAEStage(c), c, tmp_path / "split", resume=True)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(tmp_path / "full", name), weights(tmp_path / "split", name)
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_data_skipped_counts_every_worker_and_survives_a_resume(tmp_path):
    """The bad items a data source dropped travel with their examples ("skipped") through DataLoader workers into the
    batch; the trainer sums them (over processes too: tests/training/test_multiprocess.py) and checkpoints the total."""
    from pocketdiff.testing import toy_regression_stream

    cfg = toy_cfg(tmp_path, num_workers=2, eval_every=0, options={"bad_every": 4})
    stream = toy_regression_stream(cfg.seed, 4, 4)
    expected = sum(stream[i].get("skipped", 0) for i in range(8 * 4))  # 8 steps x 4 examples
    full = train(ToyStage(cfg), cfg, tmp_path / "full")
    cut = toy_cfg(tmp_path, num_workers=2, eval_every=0, options={"bad_every": 4, "interrupt_at_batch": 4})
    stopped = train(ToyStage(cut), cut, tmp_path / "split")
    again = train(ToyStage(cfg), cfg, tmp_path / "split", resume=True)
    first = sum(stream[i].get("skipped", 0) for i in range(4 * 4))
    assert stopped["step"] == 4 and stopped["data_skipped"] == first and 0 < first < expected
    assert full["data_skipped"] == again["data_skipped"] == expected


def test_fsdp_refuses_what_it_cannot_shard(tmp_path, monkeypatch):
    """An FSDP launch (faked here: a CPU launch cannot be FSDP, see tests/training/mp_driver.py) refuses FSDP1 and a
    stage not marked `fsdp` (several modules, or parameters skipped on some steps), naming DDP as the way."""
    from accelerate.utils import DistributedType

    from pocketdiff.training import loop

    made = loop._make_accelerator

    class AsFSDP:
        distributed_type = DistributedType.FSDP

        def __init__(self, accelerator, fsdp2):
            self.accelerator, self.is_fsdp2 = accelerator, fsdp2

        def __getattr__(self, name):
            return getattr(self.accelerator, name)

    for fsdp2, stage_fsdp, message in ((False, True, "this launch asks for FSDP1"),
                                       (True, False, "cannot be sharded .FSDP needs one trained module")):
        monkeypatch.setattr(loop, "_make_accelerator", lambda *a, fsdp2=fsdp2, **k: AsFSDP(made(*a, **k), fsdp2))
        monkeypatch.setattr(ToyStage, "fsdp", stage_fsdp)
        with pytest.raises(ConfigError, match=message):
            train(ToyStage(cfg := toy_cfg(tmp_path)), cfg, tmp_path / f"run{fsdp2}")


def test_checkpoint_is_atomic_and_crash_safe(tmp_path):
    cfg = toy_cfg(tmp_path, max_steps=4, checkpoint_every=2, eval_every=0)
    train(ToyStage(cfg), cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert not (run / "ckpt.tmp").exists() and not (run / "checkpoint.old").exists()
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == [
        "ema.safetensors", "model.safetensors", "optimizer.json", "optimizer.safetensors", "rng.safetensors", "state.json"]
    # a crash between the two renames leaves checkpoint.old only; a half-written ckpt.tmp is ignored
    (run / "checkpoint").rename(run / "checkpoint.old")
    (run / "ckpt.tmp").mkdir()
    assert find_checkpoint(run) == run / "checkpoint.old"
    longer = toy_cfg(tmp_path, max_steps=6, checkpoint_every=2, eval_every=0)
    summary = train(ToyStage(longer), longer, run, resume=True)
    assert summary["step"] == 6 and find_checkpoint(run) == run / "checkpoint"
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 6
    assert not (run / "checkpoint.old").exists() and not (run / "ckpt.tmp").exists()


def test_budget_and_logs(tmp_path):
    cfg = toy_cfg(tmp_path, max_steps=1000, max_minutes=1e-6, eval_every=0)
    summary = train(ToyStage(cfg), cfg, tmp_path / "run")
    assert summary["stopped"] == "max_minutes" and summary["step"] == 1
    row = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert {"step", "loss", "lr", "mse", "grad_norm", "it_s", "elapsed_s"} <= set(row)
    assert (tmp_path / "export" / "toy.pt").is_file() and "eval_w" in summary


class EveryOtherStepStage(ToyStage):
    """Logs `every_other` = 1.0 only on even steps, as a GAN's discriminator logs only on the steps it trains."""

    def compute_loss(self, models, frozen, batch):
        loss, logs = super().compute_loss(models, frozen, batch)
        return loss, {**logs, **({"every_other": 1.0} if self.step % 2 == 0 else {})}


def test_a_key_logged_on_some_steps_is_averaged_over_those_steps(tmp_path):
    cfg = toy_cfg(tmp_path, max_steps=4, log_every=4, eval_every=0)
    train(EveryOtherStepStage(cfg), cfg, tmp_path / "run")
    row = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert row["step"] == 4 and row["every_other"] == 1.0  # not 0.5: averaged over the 2 steps that logged it


def test_grad_accumulation_and_no_ema(tmp_path):
    cfg = toy_cfg(tmp_path, max_steps=2, grad_accum_steps=3, ema_decay=None, eval_every=0, grad_clip=None)
    stage = ToyStage(cfg)
    train(stage, cfg, tmp_path / "run")
    assert stage.calls == 6
    assert not (tmp_path / "run" / "checkpoint" / "ema.safetensors").exists()


def test_resume_without_checkpoint_warns(tmp_path):
    cfg = toy_cfg(tmp_path, max_steps=1, eval_every=0)
    with pytest.warns(UserWarning, match="no checkpoint"):
        train(ToyStage(cfg), cfg, tmp_path / "run", resume=True)


def test_lr_schedule(tmp_path):
    cfg = toy_cfg(tmp_path, max_steps=100, warmup_steps=10, lr=1.0, min_lr=0.1)
    lrs = [lr_at(s, cfg) for s in range(101)]
    assert lrs[0] < lrs[9] < 1.0 and lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[100] == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------------ config


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="max_stpes: unknown key"):
        load_config(write(tmp_path, "stage: vae\nexport_dir: x\nmax_stpes: 3\n"))
    with pytest.raises(ConfigError, match="options.kl_weigth: unknown key"):
        load_config(write(tmp_path, "stage: vae\nexport_dir: x\noptions: {kl_weigth: 1}\n"))
    with pytest.raises(ConfigError, match="batch_size: expected int"):
        load_config(write(tmp_path, "stage: vae\nexport_dir: x\nbatch_size: many\n"))
    with pytest.raises(ConfigError, match="options.block_out_channels\\[1\\]: expected int"):
        load_config(write(tmp_path, "stage: vae\nexport_dir: x\noptions: {block_out_channels: [8, x]}\n"))
    with pytest.raises(ConfigError, match="mixed_precision: 'fp8' is not one of"):
        load_config(write(tmp_path, "stage: vae\nexport_dir: x\nmixed_precision: fp8\n"))
    with pytest.raises(ConfigError, match="export_dir: required"):
        load_config(write(tmp_path, "stage: vae\n"))
    with pytest.raises(ConfigError, match="min_lr: invalid"):
        load_config(write(tmp_path, "stage: vae\nexport_dir: x\nlr: 1e-3\nmin_lr: 1.0\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(PocketDiffError, match="unknown stage 'nope'"):
        load_config(write(tmp_path, "stage: nope\nexport_dir: x\n"))
    with pytest.raises(UnknownPresetError, match="unknown preset 'fast'"):
        load_config("vae", "fast")


def test_presets_and_overrides():
    cfg = load_config("vae", "quick", parse_set(["options.kl_weight=1e-5", "seed=3"]))
    assert cfg.max_steps == 5 and cfg.seed == 3 and cfg.lr == 1e-3  # "1.0e-3" parsed as float
    assert cfg.options.kl_weight == 1e-5 and cfg.options.block_out_channels == [8, 8, 16]
    full = load_config("vae")
    assert full.options.block_out_channels == [16, 32, 64] and full.options.kl_weight == 1.2288e-2
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set(["max_steps"])
    # YAML 1.1 reads a bare `no` as false: `--set mixed_precision=no` still means "no"
    assert load_config("vae", overrides=parse_set(["mixed_precision=no"])).mixed_precision == "no"


def test_cli_errors(tmp_path):
    from typer.testing import CliRunner

    from pocketdiff.cli.train import app
    from pocketdiff.training.run import run_stage
    from pocketdiff.training.stages import STAGES, get_stage

    assert {"tokenizer", "clip", "vae"} <= set(STAGES)
    with pytest.raises(PocketDiffError, match="unknown stage"):
        get_stage("teacherx")
    with pytest.raises(ConfigError, match="not found"):
        run_stage("vae", tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="this command trains 'clip'"):
        run_stage("clip", "vae", "quick")
    result = CliRunner().invoke(app, ["vae", "--config", str(write(tmp_path, "stage: vae\nexport_dir: x\nbad: 1\n"))])
    assert isinstance(result.exception, ConfigError)
    assert CliRunner().invoke(app, ["nostage"]).exit_code == 2


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch):
    import pytest

    from pocketdiff.profiling import latency
    from pocketdiff.training import loop

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # the warning is about CPUs; a visible GPU would take the run
    monkeypatch.setattr(latency, "machine_info", lambda: {"isa": ["avx2"], "cores": 2})
    with pytest.warns(UserWarning, match="avx512_bf16"):
        loop._make_accelerator("bf16")
    monkeypatch.setattr(latency, "machine_info", lambda: {"isa": ["avx2", "avx512f", "avx512_bf16"], "cores": 2})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop._make_accelerator("bf16")
        loop._make_accelerator("no")


def test_auto_mixed_precision_is_fp32_on_a_cpu(monkeypatch, tmp_path):
    from pocketdiff.training import loop

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # _make_accelerator resets Accelerate's state, so this holds
    assert loop._make_accelerator("auto").mixed_precision == "no"
    assert loop.resolve_mixed_precision("bf16") == "bf16"
    assert toy_cfg(tmp_path, mixed_precision="auto").mixed_precision == "auto"
    with pytest.raises(ConfigError, match="mixed_precision"):
        toy_cfg(tmp_path, mixed_precision="fp8")


class StreamingToy(ToyStage):
    """ToyStage reading an endless IterableDataset (as a webdataset stream would be)."""

    def dataset(self):
        from pocketdiff.data.stream import seeded_stream

        class Endless(torch.utils.data.IterableDataset):
            def __iter__(self):
                i = 0
                while True:
                    yield i
                    i += 1

        def make(i, rng):
            x = torch.from_numpy(rng.standard_normal(self.opts.dim)).float() + 0.01 * i
            return {"x": x, "y": x.sum(0, keepdim=True)}

        return seeded_stream(self.cfg.seed, make, Endless())


def test_resume_is_exact_on_a_streaming_dataset(tmp_path):
    """An IterableDataset is resumed by skipping the consumed batches (`accelerator.skip_first_batches`)."""
    cfg = toy_cfg(tmp_path, eval_every=0)
    train(StreamingToy(cfg), cfg, tmp_path / "full")
    cut = toy_cfg(tmp_path, eval_every=0, options={"interrupt_at_batch": 3})
    assert train(StreamingToy(cut), cut, tmp_path / "split")["step"] == 3
    summary = train(StreamingToy(cfg), cfg, tmp_path / "split", resume=True)
    assert summary["step"] == 8 and summary["samples_seen"] == 8 * 4
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(tmp_path / "full", name), weights(tmp_path / "split", name)
        assert all(torch.equal(a[k], b[k]) for k in a)
