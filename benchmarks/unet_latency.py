"""Saved UNets side by side: batch-1 forward latency in fp32 and bf16, all models in one process, round-robin.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/unet_latency.py --unet teacher=models/shapes/unet \
        --unet md=runs/md/unet --unet relu=runs/relu/unet [--dtypes fp32,bf16] [--batch 1] [--runs 30] \
        [--threads 1] [--json docs/results/one-step/latency_relu_vs_softmax_b2.json]

Each round runs every (model, dtype) once on the same random inputs (the shapes world's 16-token context, t = 999),
so all share the machine's noise; medians over --runs rounds after --warmup, and the per-round median ratio to the
first --unet in the same dtype. bf16 casts weights and activations (`.to(torch.bfloat16)`), as an inference runtime
would; on CPUs without avx512_bf16 / amx_bf16 bf16 matmuls are emulated (slow), which the machine's ISA line shows.
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

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main(argv: list[str] | None = None) -> dict:
    from pocketdiff.arch import FlexUNet
    from pocketdiff.io import write_json_atomic
    from pocketdiff.profiling.flops import dummy_inputs
    from pocketdiff.profiling.latency import machine_info

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--unet", action="append", required=True, help="NAME=DIR (the first is the reference)")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--batch", type=int, default=1, help="2 = one classifier-free-guided step")
    ap.add_argument("--context-len", type=int, default=16)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise SystemExit(f"--dtypes: unknown {unknown}; choose from {sorted(DTYPES)}")
    dirs = dict(item.partition("=")[::2] for item in a.unet)
    models = {(n, d): FlexUNet.from_pretrained(p).eval().to(DTYPES[d]) for n, p in dirs.items() for d in dtypes}
    ref = next(iter(dirs))
    times = {k: [] for k in models}
    load_start = os.getloadavg()
    with torch.inference_mode():
        for r in range(a.warmup + a.runs):
            for (name, d), unet in models.items():
                x, t, ctx = dummy_inputs(unet.spec, unet.spec.sample_size, a.context_len, batch=a.batch, seed=r)
                x, ctx = x.to(DTYPES[d]), ctx.to(DTYPES[d])
                t0 = time.perf_counter()
                unet(x, t, ctx)
                if r >= a.warmup:
                    times[(name, d)].append((time.perf_counter() - t0) * 1e3)
    rows = []
    for (name, d), unet in models.items():
        rows.append({"name": name, "dir": dirs[name], "dtype": d, "ms_median": statistics.median(times[(name, d)]),
                     "ms_min": min(times[(name, d)]),
                     "ratio_to_ref_per_round": statistics.median(
                         x / y for x, y in zip(times[(ref, d)], times[(name, d)])),
                     "ratio_to_fp32_per_round": statistics.median(
                         x / y for x, y in zip(times[(name, dtypes[0])], times[(name, d)])),
                     "params_m": sum(p.numel() for p in unet.parameters()) / 1e6, **unet.spec.counts()})
    print(f"{'model':<14}{'dtype':>6}{'ms median':>11}{'ms min':>9}{f'{ref}/x':>10}{f'{dtypes[0]}/x':>9}{'params M':>10}")
    for r in rows:
        print(f"{r['name']:<14}{r['dtype']:>6}{r['ms_median']:>11.2f}{r['ms_min']:>9.2f}"
              f"{r['ratio_to_ref_per_round']:>9.2f}x{r['ratio_to_fp32_per_round']:>8.2f}x{r['params_m']:>10.2f}")
    out = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(), "threads": a.threads,
           "batch": a.batch, "runs": a.runs, "warmup": a.warmup, "loadavg_start": list(load_start),
           "loadavg_end": list(os.getloadavg()), "models": rows}
    if a.json:
        write_json_atomic(a.json, out)
    return out


if __name__ == "__main__":
    main()
