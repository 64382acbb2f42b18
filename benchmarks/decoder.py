"""The VAE decoder of SD-1.5, pruned 50% (SnapFusion's efficient decoder) and a TAESD-style tiny decoder, side by side.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/decoder.py [--resolution 512] [--runs 5] [--warmup 1] [--threads 2]
                                                         [--ratio 0.5] [--json PATH]

`vae.decode(z)` at 512px (latent 4x64x64), batch 1, fp32 eager, random weights (speed does not depend on them):
  sd15    SD-1.5's AutoencoderKL decoder (block_out_channels 128, 256, 512, 512; ~49.5M params)
  pruned  the same decoder pruned by `prune_decoder(ratio, "l1")` (64, 128, 256, 256 at 0.5; ~12.4M params)
  tiny    `TinyDecoder` (64 channels, 3 blocks per stage, x8; ~1.2M params)
All models live in ONE process and run round-robin (A, B, C, A, B, ...) so that they share the machine's noise; the
median over `--runs` rounds after `--warmup` rounds is reported, with the ratio sd15 / model (of the medians and the
median of per-round ratios). GFLOPs are counted on the meta device. Run by hand, not in tests (the SD decoder alone
is ~2.5 TFLOPs (1.26 TMACs) at 512px: minutes on 2 cores). Results and the exact command go to docs/benchmarks.md.

SnapFusion (iPhone 14 Pro): 369 ms -> 116 ms (3.2x) for 50M -> 13M params. A CPU need not reproduce that ratio:
the figure is reported as measured. `--tiny-config` swaps in SD's topology at 1/8 width (a seconds-long check that
the script runs, not a benchmark).
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

from pocketdiff.io import write_json_atomic
from pocketdiff.profiling.latency import machine_info
from pocketdiff.pruning.decoder import SD15_VAE_CONFIG, SlimAutoencoderKL, decoder_widths, param_count, prune_decoder

MODELS = ("sd15", "pruned", "tiny")
SMOKE_CONFIG = {**SD15_VAE_CONFIG, "block_out_channels": (16, 32, 64, 64), "norm_num_groups": 8}


def decode_params(vae) -> int:
    return param_count(vae.decoder) + (param_count(vae.post_quant_conv) if vae.post_quant_conv is not None else 0)


def decode_gflops(config: dict, latent: int) -> float:
    """FLOPs of one `decode` at this latent size, on the meta device (no weights, no compute)."""
    with torch.device("meta"):
        vae = SlimAutoencoderKL(**config)
        z = torch.zeros(1, config["latent_channels"], latent, latent)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        vae.decode(z)
    return fc.get_total_flops() / 1e9


def build(config: dict, ratio: float) -> dict:
    """{name: (model, slim config for FLOPs)}; all from the same random SD-1.5 VAE (seed 0)."""
    torch.manual_seed(0)
    base = SlimAutoencoderKL(**config).eval()
    pruned = prune_decoder(base, ratio=ratio, importance="l1")
    cfg = {k: v for k, v in base.config.items() if not k.startswith("_")}
    tiny = SlimAutoencoderKL(**{**cfg, "decoder_type": "tiny"}).eval()
    return {
        "sd15": (base, cfg),
        "pruned": (pruned, {**cfg, "decoder_block_out_channels": tuple(decoder_widths(pruned))}),
        "tiny": (tiny, {**cfg, "decoder_type": "tiny"}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolution", type=int, default=512, help="image pixels; latent = resolution / 8")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--ratio", type=float, default=0.5, help="pruning ratio of the 'pruned' decoder")
    ap.add_argument("--tiny-config", action="store_true", help="SD topology at 1/8 width: a check, not a benchmark")
    ap.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    latent = a.resolution // 8
    config = SMOKE_CONFIG if a.tiny_config else SD15_VAE_CONFIG
    load_start = os.getloadavg()
    models = build(config, a.ratio)
    info = {n: dict(params_m=decode_params(m) / 1e6, widths=decoder_widths(m) or None,
                    gflops=decode_gflops(c, latent)) for n, (m, c) in models.items()}
    z = torch.randn(1, config["latent_channels"], latent, latent, generator=torch.Generator().manual_seed(0))

    times: dict[str, list[float]] = {n: [] for n in MODELS}
    with torch.inference_mode():
        for r in range(a.warmup + a.runs):
            for name in MODELS:  # round-robin: every model sees the same stretch of machine noise
                t0 = time.perf_counter()
                out = models[name][0].decode(z).sample
                dt_s = time.perf_counter() - t0
                assert out.shape == (1, 3, a.resolution, a.resolution), out.shape
                if r >= a.warmup:
                    times[name].append(dt_s)
                print(f"round {r + 1}/{a.warmup + a.runs}{' (warm-up)' if r < a.warmup else ''} {name}: "
                      f"{dt_s * 1e3:.0f} ms", flush=True)
    load_end = os.getloadavg()

    ref = MODELS[0]
    rows = {}
    for name in MODELS:
        ts = times[name]
        rows[name] = dict(**info[name], ms_median=1e3 * statistics.median(ts), ms_min=1e3 * min(ts),
                          ms_max=1e3 * max(ts), runs_ms=[1e3 * t for t in ts])
    for name in MODELS:
        rows[name]["ratio_vs_sd15"] = rows[ref]["ms_median"] / rows[name]["ms_median"]
        rows[name]["ratio_vs_sd15_per_round"] = statistics.median(x / y for x, y in zip(times[ref], times[name]))

    print(f"\n{'decoder':8s} {'params':>8s} {'GFLOPs':>8s} {'median ms':>10s} {'min ms':>8s} {'max ms':>8s} "
          f"{'sd15/x':>7s} {'per-round':>10s}  widths")
    for name, r in rows.items():
        print(f"{name:8s} {r['params_m']:7.2f}M {r['gflops']:8.1f} {r['ms_median']:10.0f} {r['ms_min']:8.0f} "
              f"{r['ms_max']:8.0f} {r['ratio_vs_sd15']:6.2f}x {r['ratio_vs_sd15_per_round']:9.2f}x  {r['widths']}")
    print(f"SnapFusion (iPhone 14 Pro): 369 -> 116 ms = 3.18x for 50M -> 13M params; here "
          f"{rows['pruned']['ratio_vs_sd15']:.2f}x for {rows['sd15']['params_m']:.1f}M -> "
          f"{rows['pruned']['params_m']:.1f}M")
    print(f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f} (1 min)")

    if a.json:
        write_json_atomic(a.json, dict(
            command="python benchmarks/decoder.py " + " ".join(os.sys.argv[1:]),
            date=dt.datetime.now().isoformat(timespec="seconds"), machine=machine_info(),
            torch_version=torch.__version__, threads=a.threads, resolution=a.resolution, runs=a.runs,
            warmup=a.warmup, ratio=a.ratio, tiny_config=a.tiny_config,
            omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), loadavg_start=load_start, loadavg_end=load_end,
            models=rows, paper={"sd15_ms": 369, "pruned_ms": 116, "sd15_params_m": 50, "pruned_params_m": 13}))


if __name__ == "__main__":
    main()
