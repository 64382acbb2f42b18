"""One training step of the shapes-world teacher in fp32 and in bf16 autocast, at 1 and 2 threads, side by side.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_step.py [--runs 10] [--warmup 2] [--threads 1,2] [--json PATH]
        [--preset quick] [--precisions fp32]

The real step of `pocketdiff train teacher --config teacher [--preset P]`: a batch of the config's batch size (128,
the shipped recipe's, or the preset's) rendered scenes, VAE encoding, text encoding, the UNet forward and backward, AdamW. The
question it answers: does bf16 autocast (`mixed_precision: bf16`, what accelerate applies) pay on this CPU for a UNet
this small (8.8M params, 16x16 latents)? Every (precision, threads) setting runs round-robin in one process so that
they share the machine's noise; medians over `--runs` rounds after `--warmup` rounds, and the ratio to fp32 at the
same thread count.
Needs the shipped models/shapes (text encoder, VAE). Run by hand; results go to docs/benchmarks.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read by OpenMP when torch is imported (measured.md: 3-8x)

import argparse
import contextlib
import datetime as dt
import statistics
import time
from pathlib import Path

import torch

from pocketdiff.io import write_json_atomic
from pocketdiff.profiling.latency import machine_info
from pocketdiff.training.run import load_config
from pocketdiff.training.stages.teacher import TeacherStage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="teacher")
    ap.add_argument("--preset", default=None, help="a preset of the config (its batch size, options)")
    ap.add_argument("--precisions", default="fp32,bf16 autocast", help="comma-separated: fp32, bf16 autocast")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    a = ap.parse_args()

    stage = TeacherStage(load_config(a.config, a.preset, {"options": {"init_unet": None}}))
    unet, frozen = stage.build()["unet"].train(), stage.build_frozen()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    dataset, batches = stage.dataset(), iter(range(0, 10**9, stage.cfg.batch_size))
    precisions = {"fp32": contextlib.nullcontext, "bf16 autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}
    settings = [(p, int(t)) for t in a.threads.split(",") for p in a.precisions.split(",")]

    def step(precision: str, threads: int) -> float:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        with precisions[precision]():
            loss, _ = stage.compute_loss({"unet": unet}, frozen, stage.batch_at(next(batches), dataset))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    load_start = os.getloadavg()
    times: dict[tuple[str, int], list[float]] = {s: [] for s in settings}
    for r in range(a.warmup + a.runs):
        for s in settings:
            dt_s = step(*s)
            if r >= a.warmup:
                times[s].append(dt_s)
    rows = []
    for p, t in settings:
        med = statistics.median(times[(p, t)])
        fp32 = times.get(("fp32", t))
        rows.append({"precision": p, "threads": t, "median_s": med, "min_s": min(times[(p, t)]),
                     "max_s": max(times[(p, t)]), "vs_fp32": med / statistics.median(fp32) if fp32 else None,
                     "samples_per_s": stage.cfg.batch_size / med})
    print(f"{'precision':<14}{'threads':>8}{'median s':>10}{'min':>8}{'max':>8}{'x fp32':>8}{'img/s':>8}")
    for r in rows:
        print(f"{r['precision']:<14}{r['threads']:>8}{r['median_s']:>10.3f}{r['min_s']:>8.3f}{r['max_s']:>8.3f}"
              f"{r['vs_fp32'] or float('nan'):>8.2f}{r['samples_per_s']:>8.1f}")
    print(f"load average {load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    if a.json:
        write_json_atomic(a.json, {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
                                   "config": a.config, "preset": a.preset, "batch_size": stage.cfg.batch_size,
                                   "runs": a.runs, "warmup": a.warmup, "load_avg_start": load_start[0],
                                   "load_avg_end": os.getloadavg()[0], "results": rows})


if __name__ == "__main__":
    main()
