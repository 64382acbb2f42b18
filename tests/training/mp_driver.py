"""`pocketdiff train toy ...` with a toy stage registered: what tests/training/test_multiprocess.py launches with
`accelerate launch --num_processes 2 --cpu`.

    accelerate launch --multi_gpu --num_processes 2 tests/training/mp_driver.py train toy --out RUN ... [--then ...]

(`ACCELERATE_USE_CPU=true`: gloo on the CPU). `--then` separates several runs made one after the other by the same
processes (each launch costs ~10 s of imports on a 2-core machine); a run that starts with `--may-fail` may exit
non-zero (an error on stderr, exit 2; an interrupted run, 130) and the next one still runs; one that starts with
`--fsdp` (after `--may-fail`, if both) runs under FSDP2 (`pocketdiff.testing.force_fsdp_on_cpu`).

The stage: noisy linear regression, examples from the seeded stream, optional noise from the torch RNG (each
process's own stream: it must resume too). `options.kill_at_step` SIGKILLs process 1 during that step (as the OOM
killer would). After the run every process writes its final weights to RUN/weights_rank<K>.safetensors, and each
export appends the writer's rank to EXPORT/../exports.log.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from pocketdiff.io import atomic_dir
from pocketdiff.testing import force_fsdp_on_cpu
from pocketdiff.training.loop import Stage
from pocketdiff.training.stages import STAGES

RANK = int(os.environ.get("RANK", "0"))


class ToyStage(Stage):
    name = "toy"
    fsdp = True  # one module, every parameter used every step
    instances: list = []

    @dataclass
    class Options:
        dim: int = 4
        torch_noise: float = 0.0
        kill_at_step: int | None = None
        bad_every: int = 0  # every k-th item of the data source is bad (skipped and counted)
        desync_at_step: int | None = None  # process 1 changes a weight outside DDP during that step
        term_at_step: int | None = None  # process 1 gets SIGTERM during that step (a graceful stop of both)

    def build(self):
        ToyStage.instances.append(self)
        return {"net": nn.Sequential(nn.Linear(self.opts.dim, 8), nn.Tanh(), nn.Linear(8, 1))}

    def dataset(self):
        from pocketdiff.testing import toy_regression_stream

        return toy_regression_stream(self.cfg.seed, self.opts.dim, self.opts.bad_every)

    def compute_loss(self, models, frozen, batch):
        if self.step == self.opts.kill_at_step and RANK == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.step == self.opts.term_at_step and RANK == 1:
            signal.raise_signal(signal.SIGTERM)
        if self.step == self.opts.desync_at_step and RANK == 1:
            with torch.no_grad():
                next(models["net"].parameters()).add_(1e-3)
        self.models = models
        x = batch["x"]
        if self.opts.torch_noise:
            x = x + self.opts.torch_noise * torch.randn_like(x)
        loss = (models["net"](x) - batch["y"]).pow(2).mean()
        return loss, {}

    def export(self, models, frozen, export_dir):
        with atomic_dir(export_dir) as tmp:
            save_file({k: v.contiguous() for k, v in models.state_dict().items()}, str(tmp / "model.safetensors"))
        with open(Path(export_dir).parent / "exports.log", "a") as f:
            f.write(f"{RANK}\n")


STAGES["toy"] = ToyStage

if __name__ == "__main__":
    from pocketdiff.cli import main

    args, runs = sys.argv[1:], [[]]
    for a in args:
        if a == "--then":
            runs.append([])
        else:
            runs[-1].append(a)
    for argv in runs:
        may_fail = argv[:1] == ["--may-fail"]
        argv = argv[1:] if may_fail else argv
        fsdp = argv[:1] == ["--fsdp"]
        argv = argv[1:] if fsdp else argv
        undo = force_fsdp_on_cpu() if fsdp else None
        try:
            main(argv)
        except SystemExit as e:
            if e.code and not may_fail:
                raise
            if e.code:
                continue
        finally:
            if undo:
                undo()
        if fsdp:  # sharded weights: the run's checkpoint holds the full ones
            continue
        if argv[:2] != ["train", "toy"]:  # any other command: just run it
            continue
        stage = ToyStage.instances[-1]
        net = getattr(stage.models["net"], "module", stage.models["net"])
        out = Path(argv[argv.index("--out") + 1])
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()},
                  str(out / f"weights_rank{RANK}.safetensors"))
