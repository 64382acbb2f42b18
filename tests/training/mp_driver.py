"""`pocketdiff train toy ...` with a toy stage registered: what tests/training/test_multiprocess.py launches with
`accelerate launch --num_processes 2 --cpu`.

    accelerate launch --multi_gpu --num_processes 2 tests/training/mp_driver.py train toy --out RUN ... [--then ...]

(`ACCELERATE_USE_CPU=true`: gloo on the CPU). `--then` separates several runs made one after the other by the same
processes (each launch costs ~10 s of imports on a 2-core machine); a run that starts with `--may-fail` may exit 2
(the error is on stderr) and the next one still runs.

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
from pocketdiff.training.loop import Stage
from pocketdiff.training.stages import STAGES

RANK = int(os.environ.get("RANK", "0"))


class ToyStage(Stage):
    name = "toy"
    instances: list = []

    @dataclass
    class Options:
        dim: int = 4
        torch_noise: float = 0.0
        kill_at_step: int | None = None
        bad_every: int = 0  # every k-th item of the data source is bad (skipped and counted)
        desync_at_step: int | None = None  # process 1 changes a weight outside DDP during that step

    def build(self):
        ToyStage.instances.append(self)
        return {"net": nn.Sequential(nn.Linear(self.opts.dim, 8), nn.Tanh(), nn.Linear(8, 1))}

    def dataset(self):
        from pocketdiff.testing import toy_regression_stream

        return toy_regression_stream(self.cfg.seed, self.opts.dim, self.opts.bad_every)

    def compute_loss(self, models, frozen, batch):
        if self.step == self.opts.kill_at_step and RANK == 1:
            os.kill(os.getpid(), signal.SIGKILL)
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
        try:
            main(argv)
        except SystemExit as e:
            if e.code and not (may_fail and e.code == 2):
                raise
            if e.code:
                continue
        if argv[:2] != ["train", "toy"]:  # any other command: just run it
            continue
        stage = ToyStage.instances[-1]
        net = getattr(stage.models["net"], "module", stage.models["net"])
        out = Path(argv[argv.index("--out") + 1])
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()},
                  str(out / f"weights_rank{RANK}.safetensors"))
