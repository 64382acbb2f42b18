"""The trainer's guards: a non-finite loss stops the run (step and last good checkpoint named, nothing exported),
a second trainer on the same run directory refuses, an export is swapped in atomically."""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from pocketdiff.io import atomic_dir, recover_dir
from pocketdiff.training.config import config_from_dict
from pocketdiff.training.loop import DivergedError, RunDirBusyError, Stage, train


class Toy(Stage):
    name = "toy"

    @dataclass
    class Options:
        nan_at_step: int | None = None  # the loss at this (1-based) step is NaN

    def build(self):
        self.calls = 0
        return {"net": nn.Linear(4, 1)}

    def dataset(self):
        from pocketdiff.data.stream import seeded_stream

        return seeded_stream(self.cfg.seed, lambda _, rng: {"x": torch.from_numpy(rng.standard_normal(4)).float()})

    def compute_loss(self, models, frozen, batch):
        self.calls += 1
        loss = models["net"](batch["x"]).pow(2).mean()
        if self.calls == self.opts.nan_at_step:
            loss = loss * float("nan")
        return loss, {}

    def export(self, models, frozen, export_dir):
        with atomic_dir(export_dir) as tmp:
            torch.save(models.state_dict(), tmp / "toy.pt")


def cfg(tmp_path, **kw):
    options = kw.pop("options", {})
    return config_from_dict({"stage": "toy", "export_dir": str(tmp_path / "export"), "max_steps": 6, "batch_size": 4,
                             "warmup_steps": 0, "log_every": 1, "checkpoint_every": 2, "num_threads": 1, **kw,
                             "options": options}, Toy.Options)


def test_nan_loss_stops_with_step_and_last_checkpoint(tmp_path):
    c = cfg(tmp_path, options={"nan_at_step": 5})
    with pytest.raises(DivergedError) as e:
        train(Toy(c), c, tmp_path / "run")
    msg = str(e.value)
    assert "step 5" in msg and "loss is nan" in msg and str(tmp_path / "run" / "checkpoint") in msg and "(step 4)" in msg
    assert not (tmp_path / "export").exists()  # nothing exported
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4
    assert all(torch.isfinite(t).all() for t in load_file(str(tmp_path / "run" / "checkpoint" / "model.safetensors")).values())


def test_huge_learning_rate_exits_2_and_exports_nothing(tmp_path, capsys):
    """The issue's case: `--set lr=1e3` trained to loss=nan, exited 0 and exported 100% non-finite weights."""
    from pocketdiff.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "vae", "--preset", "quick", "--out", str(tmp_path / "run"), "--export", str(tmp_path / "vae"),
              "--set", "lr=1e3", "--set", "min_lr=0", "--set", "max_steps=20", "--set", "options.eval_images=0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "training diverged at step" in err and "Traceback" not in err
    assert not (tmp_path / "vae").exists()


def test_second_trainer_on_the_same_run_dir_refuses(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "a+") as held:  # another trainer's lock (flock: per open file, so this process counts)
        held.write("4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        c = cfg(tmp_path)
        with pytest.raises(RunDirBusyError, match=r"in use by another trainer \(pid 4242\)"):
            train(Toy(c), c, run)
        assert not (run / "checkpoint").exists() and not (run / "log.jsonl").exists()
    assert train(Toy(c), c, run)["step"] == 6  # the lock is released with its holder
    assert train(Toy(c), c, run, resume=True)["step"] == 6  # and by each run when it ends


def test_export_swap_never_leaves_nothing(tmp_path, monkeypatch):
    """The old export is exchanged with the new one in one rename; where the OS cannot, a crash between the two
    renames of the fallback leaves NAME.old, which the next writer (or trainer) puts back."""
    import pocketdiff.io as io

    out = tmp_path / "unet"
    with atomic_dir(out) as tmp:
        (tmp / "w").write_text("old")
    with atomic_dir(out) as tmp:
        (tmp / "w").write_text("new")
    assert (out / "w").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["unet"]

    monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    real_replace = os.replace

    def crash_on_second(src, dst):
        if Path(src).name == "unet.tmp":
            raise KeyboardInterrupt  # killed between "old aside" and "new in"
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        (tmp / "w").write_text("newer")
    monkeypatch.setattr(io.os, "replace", real_replace)
    assert not out.exists() and (tmp_path / "unet.old").is_dir()
    recover_dir(out)
    assert (out / "w").read_text() == "new"
