"""Evolved shapes-world UNets against their teacher: measured latency, the lookup table's prediction, accuracy.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/evolved_unets.py --lut runs/lut_shapes.json \
        --unet teacher=models/shapes/unet --unet latency=runs/evolve/unet --unet flops=runs/evolve-flops/unet \
        --unet random=runs/evolve-random/unet [--runs 30] [--eval-steps 20 --guidance 3] [--json PATH]

Latency: each UNet as a whole (no hooks), batch 1, the table's context length, random inputs, fp32 eager, all models
in ONE process round-robin (A, B, C, A, B, ...) so they share the machine's noise; medians over `--runs` rounds after
`--warmup`. "predicted" is `predict_latency(spec, lut)`, the sum the search optimised. Accuracy (optional): the judge
on both held-out prompt sets at `--eval-steps` DDIM steps and `--guidance`, fixed seeds, with the teacher's text
encoder and VAE (the first --unet is the reference for the speed-up and the accuracy deltas).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime as dt
import statistics
import time
from pathlib import Path

import torch

from pocketdiff.arch import FlexUNet
from pocketdiff.io import write_json_atomic
from pocketdiff.profiling.flops import dummy_inputs
from pocketdiff.profiling.latency import machine_info
from pocketdiff.profiling.lut import load_lut, predict_latency


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--unet", action="append", required=True, help="NAME=DIR (the first is the reference)")
    ap.add_argument("--lut", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=Path("models/shapes"), help="text encoder, VAE, scheduler")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--eval-steps", type=int, default=0, help="0: skip the accuracy evaluation")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--limit", type=int, default=None, help="first N prompts of each held-out set")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    lut = load_lut(a.lut)
    unets = {}
    for item in a.unet:
        name, _, path = item.partition("=")
        unets[name] = FlexUNet.from_pretrained(path).eval()
    ref = next(iter(unets))
    latent = next(iter(unets.values())).spec.sample_size
    load_start = os.getloadavg()
    times: dict[str, list[float]] = {n: [] for n in unets}
    with torch.inference_mode():
        for r in range(a.warmup + a.runs):
            for name, unet in unets.items():
                x, t, ctx = dummy_inputs(unet.spec, latent, lut.get("context_len", 77), seed=r)
                t0 = time.perf_counter()
                unet(x, t, ctx)
                if r >= a.warmup:
                    times[name].append((time.perf_counter() - t0) * 1e3)
    rows = {}
    for name, unet in unets.items():
        med, pred = statistics.median(times[name]), predict_latency(unet.spec, lut)
        rows[name] = {"dir": a.unet[list(unets).index(name)].partition("=")[2], "ms_median": med,
                      "ms_min": min(times[name]), "predicted_ms": pred, "prediction_error": pred / med - 1,
                      "params_m": sum(p.numel() for p in unet.parameters()) / 1e6, **unet.spec.counts()}
    for name in rows:
        rows[name]["speedup"] = rows[ref]["ms_median"] / rows[name]["ms_median"]
        rows[name]["speedup_per_round"] = statistics.median(
            a_ / b_ for a_, b_ in zip(times[ref], times[name]))

    if a.eval_steps:
        from pocketdiff.evaluation.suite import evaluate_pipeline
        from pocketdiff.sampling.pipeline import load_pipeline

        for name in unets:
            pipe = load_pipeline(a.model, unet_dir=rows[name]["dir"])
            for prompt_set in ("heldout-single", "heldout-two"):
                res = evaluate_pipeline(pipe, prompt_set, steps=a.eval_steps, guidance=a.guidance, limit=a.limit)
                rows[name][f"acc_{prompt_set.split('-')[1]}"] = res.accuracy
                rows[name][f"fid_{prompt_set.split('-')[1]}"] = res.fid

    print(f"{'model':<10}{'ms median':>10}{'speed-up':>9}{'predicted':>10}{'pred err':>9}{'params M':>9}"
          f"{'tf':>4}{'res':>4}" + ("  acc single  acc two" if a.eval_steps else ""))
    for name, r in rows.items():
        line = (f"{name:<10}{r['ms_median']:>10.2f}{r['speedup']:>8.2f}x{r['predicted_ms']:>10.2f}"
                f"{100 * r['prediction_error']:>8.1f}%{r['params_m']:>9.2f}{r['transformers']:>4}{r['resnets']:>4}")
        if a.eval_steps:
            line += f"  {100 * r['acc_single']:>9.1f}%  {100 * r['acc_two']:>6.1f}%"
        print(line)
    if a.json:
        write_json_atomic(a.json, {
            "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(), "threads": a.threads,
            "runs": a.runs, "warmup": a.warmup, "loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg()),
            "lut": str(a.lut), "eval_steps": a.eval_steps, "guidance": a.guidance, "limit": a.limit, "models": rows})


if __name__ == "__main__":
    main()
