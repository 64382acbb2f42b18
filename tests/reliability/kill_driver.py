"""A quick training run that SIGKILLs itself at a chosen point (run by test_kill_resume.py as a subprocess).

    python kill_driver.py RUN_DIR EXPORT_DIR POINT

POINT is `none` (run to the end) or NAME:N, the N-th time the run reaches NAME (see KILLS). The kill is
`os.kill(getpid(), SIGKILL)`: no handler, no cleanup, exactly what the OOM killer or a power cut does to the process.
Every invocation resumes from RUN_DIR's checkpoint if there is one.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

POINT = sys.argv[3]
NAME, _, N = POINT.partition(":")
SEEN: Counter = Counter()


def maybe_kill(name: str) -> None:
    SEEN[name] += 1
    if name == NAME and SEEN[name] == int(N or 1):
        os.kill(os.getpid(), signal.SIGKILL)


maybe_kill("import-start")
import torch  # noqa: E402

maybe_kill("import-torch")
from safetensors.torch import save_file as st_save_file  # noqa: E402
from torch import nn  # noqa: E402

import pocketdiff.io as io  # noqa: E402
import pocketdiff.training.loop as loop  # noqa: E402
from pocketdiff.training.config import config_from_dict  # noqa: E402


class Toy(loop.Stage):
    name = "toy"

    @dataclass
    class Options:
        dim: int = 8

    def build(self):
        return {"net": nn.Sequential(nn.Linear(self.opts.dim, 16), nn.Tanh(), nn.Linear(16, 1))}

    def dataset(self):
        from pocketdiff.testing import toy_regression_stream

        return toy_regression_stream(self.cfg.seed, self.opts.dim)

    def compute_loss(self, models, frozen, batch):
        maybe_kill("batch")
        pred = models["net"](batch["x"] + 0.1 * torch.randn_like(batch["x"]))  # the torch RNG must resume too
        return (pred - batch["y"]).pow(2).mean(), {}

    def evaluate(self, models, frozen):
        torch.randn(3)
        maybe_kill("eval")
        return {"w": float(models["net"][0].weight.sum())}

    def export(self, models, frozen, export_dir):
        with io.atomic_dir(export_dir) as tmp:
            st_save_file({k: v.contiguous() for k, v in models.state_dict().items()}, str(tmp / "model.safetensors"))
            maybe_kill("export-half")  # one file of two written
            (tmp / "config.json").write_text('{"dim": 8}\n')


# kill points inside the trainer's and the writer's own steps
_save_model, _save_file, _replace, _exchange = loop.save_model, loop.save_file, os.replace, io._exchange


def save_model(model, path, *a, **k):
    _save_model(model, path, *a, **k)
    if NAME == "ckpt-torn" and SEEN["ckpt-torn"] + 1 == int(N):
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])  # a torn write: half the file reached the disk
    maybe_kill("ckpt-torn")


def save_file(tensors, path, *a, **k):
    _save_file(tensors, path, *a, **k)
    maybe_kill("ckpt-before-state")  # the RNG file written, state.json not yet


def replace(src, dst):
    if Path(src).name == loop.CHECKPOINT_TMP:
        maybe_kill("ckpt-between-renames")  # checkpoint/ already renamed to checkpoint.old/
        _replace(src, dst)
        maybe_kill("ckpt-after-renames")  # the new one in place, checkpoint.old/ not yet removed
        return
    _replace(src, dst)


def exchange(a, b):
    maybe_kill("publish-before")
    ok = _exchange(a, b)
    maybe_kill("publish-after")  # the old export now sits in NAME.tmp
    return ok


class Log(loop._JsonLog):
    def write(self, row):
        if NAME == "log-torn" and SEEN["log-torn"] + 1 == int(N) and self.enabled:
            import json

            line = json.dumps(row) + "\n"
            with self.path.open("a") as f:
                f.write(line[: len(line) // 2])  # a torn line
        maybe_kill("log-torn")
        super().write(row)


loop.save_model, loop.save_file, loop._JsonLog = save_model, save_file, Log
loop.os.replace = replace  # loop and io share the os module: patched for both, dispatched on the name
io._exchange = exchange

if __name__ == "__main__":
    run_dir, export_dir = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = config_from_dict({"stage": "toy", "export_dir": str(export_dir), "max_steps": 8, "batch_size": 8,
                            "lr": 1e-2, "warmup_steps": 2, "ema_decay": 0.9, "log_every": 1, "checkpoint_every": 2,
                            "eval_every": 3, "num_threads": 1, "options": {}}, Toy.Options)
    import warnings

    warnings.simplefilter("ignore")  # "--resume: no checkpoint" on the first invocation
    loop.train(Toy(cfg), cfg, run_dir, resume=True)
