"""One UNet denoising step of SD-1.5, SnapFusion, MobileDiffusion and MobileDiffusion-Lite, side by side.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/unet_step.py [--runs 5] [--warmup 1] [--threads 2] [--json PATH]
    python benchmarks/unet_step.py --device cuda --dtype fp16 --runs 20 --warmup 3      (a GPU)

512px (latent 4x64x64), batch 1, fp32 eager (or --dtype, --device), 77x768 text context, random weights (speed does
not depend on them). `--clock cpu --threads 1` times this process's CPU time instead of the wall clock: on a shared
machine the other processes inflate wall times by 2-6x, unevenly between rounds, but not the CPU time a step uses.
All models live in ONE process and run round-robin (A, B, C, D, A, B, ...) so that they share the machine's noise;
the median over `--runs` rounds after `--warmup` rounds is reported, with the ratio sd15 / model. Run by hand, not in
tests (several minutes on 2 cores). Results and the exact command go to docs/benchmarks.md.

Targets (from the papers' on-device ratios): sd15 / mobilediffusion >= 2.5, sd15 / snapfusion >= 1.4 (the paper's
TPU figure is 1.45). A missed target is reported as measured: the benchmark is not tuned to pass.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read by OpenMP when torch is imported (measured.md: 3-8x)

import argparse
import datetime as dt
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from pocketdiff.arch import FlexUNet, get_spec
from pocketdiff.io import write_json_atomic
from pocketdiff.profiling.latency import machine_info, synced_clock

MODELS = ("sd15", "snapfusion", "mobilediffusion", "mobilediffusion-lite")
TARGETS = {"mobilediffusion": 2.5, "snapfusion": 1.4}  # sd15 / model, at least (SnapFusion: its TPU figure is 1.45)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def gflops(spec, latent: int, ctx_len: int) -> float:
    with torch.device("meta"):
        m = FlexUNet.from_spec(spec)
        args = (torch.zeros(1, 4, latent, latent), torch.tensor([999]),
                torch.zeros(1, ctx_len, spec.cross_attention_dim))
    with FlopCounterMode(display=False) as fc:
        m(*args)
    return fc.get_total_flops() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated preset names (sd15 first for ratios)")
    ap.add_argument("--resolution", type=int, default=512, help="image pixels; latent = resolution / 8")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="weights and activations")
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                    help="wall: perf_counter; cpu: this process's CPU time (time.process_time), which other "
                         "processes on a shared machine do not inflate; use it with --threads 1")
    ap.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    names = [n.strip() for n in a.models.split(",") if n.strip()]
    latent, ctx_len = a.resolution // 8, 77
    load_start = os.getloadavg()
    models, info = {}, {}
    for name in names:
        spec = get_spec(name)
        torch.manual_seed(0)
        models[name] = FlexUNet.from_spec(spec).eval().to(device, dtype)
        info[name] = dict(params_m=sum(p.numel() for p in models[name].parameters()) / 1e6,
                          gflops=gflops(spec, latent, ctx_len))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, latent, latent, generator=g).to(device, dtype)
    ctx = torch.randn(1, ctx_len, 768, generator=g).to(device, dtype)
    t = torch.tensor([999], device=device)

    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for r in range(a.warmup + a.runs):
            for name in names:  # round-robin: every model sees the same stretch of machine noise
                t0 = synced_clock(device) if a.clock == "wall" else time.process_time()
                models[name](x, t, ctx)
                dt_s = (synced_clock(device) if a.clock == "wall" else time.process_time()) - t0
                if r >= a.warmup:
                    times[name].append(dt_s)
                print(f"round {r + 1}/{a.warmup + a.runs}{' (warm-up)' if r < a.warmup else ''} {name}: {dt_s:.4f} s",
                      flush=True)
    load_end = os.getloadavg()

    ref = names[0]
    rows = {}
    for name in names:
        med = statistics.median(times[name])
        rows[name] = dict(**info[name], s_median=med, s_min=min(times[name]), s_max=max(times[name]),
                          runs_s=times[name])
    for name in names:
        rows[name]["ratio_vs_" + ref] = rows[ref]["s_median"] / rows[name]["s_median"]
        # rounds share the machine's noise: the median of per-round ratios is the more robust figure under load
        rows[name]["ratio_vs_" + ref + "_per_round"] = statistics.median(
            a / b for a, b in zip(times[ref], times[name]))

    print(f"\n{'model':22s} {'params':>9s} {'GFLOPs':>8s} {'median s':>9s} {'min s':>7s} {'max s':>7s} "
          f"{ref + '/x':>9s} {'per-round':>10s}")
    for name, r in rows.items():
        print(f"{name:22s} {r['params_m']:8.1f}M {r['gflops']:8.1f} {r['s_median']:9.4f} {r['s_min']:7.4f} "
              f"{r['s_max']:7.4f} {r['ratio_vs_' + ref]:8.2f}x {r['ratio_vs_' + ref + '_per_round']:9.2f}x")
    verdicts = {}
    if ref == "sd15":
        for name, target in TARGETS.items():
            if name in rows:
                got = rows[name]["ratio_vs_sd15"]
                verdicts[name] = dict(target=target, measured=got, met=got >= target)
                print(f"target sd15/{name} >= {target}: measured {got:.2f} (ratio of medians) -> "
                      f"{'met' if got >= target else 'MISSED'}")
    print(f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f} (1 min)")

    if a.json:
        write_json_atomic(a.json, dict(
            command="python benchmarks/unet_step.py " + " ".join(os.sys.argv[1:]),
            date=dt.datetime.now().isoformat(timespec="seconds"), machine=machine_info(),
            torch_version=torch.__version__, device=str(device), dtype=a.dtype, threads=a.threads, clock=a.clock,
            resolution=a.resolution, runs=a.runs, warmup=a.warmup, omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
            loadavg_start=load_start, loadavg_end=load_end, models=rows, targets=verdicts))


if __name__ == "__main__":
    main()
