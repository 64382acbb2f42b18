"""The shapes-world decoders side by side on the SAME latents: original, pruned + distilled, tiny (TAESD-style).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/shapes_decoders.py --vae original=models/shapes/vae \
        --vae pruned=models/shapes/vae_pruned --vae tiny=models/shapes/vae_tiny --steps 50 --guidance 2 \
        [--limit N] [--json docs/results/decoder/shapes_decoders.json]

The teacher pipeline generates latents once for both held-out prompt sets (fixed seeds, DDIM, `decode=False`); every
decoder decodes those latents. Reported per decoder: PSNR against the first decoder's images (the original), the
judge's compositional accuracy of the full pipeline on each set and its change against the original, domain FID
(single-object set), decoder params and decode latency per image (batch 1, median, round-robin across decoders).
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

from pocketdiff.data.shapes import to_uint8
from pocketdiff.evaluation.judge import evaluate as judge
from pocketdiff.evaluation.suite import load_prompts, real_images, sample_prompts
from pocketdiff.io import write_json_atomic
from pocketdiff.profiling.latency import machine_info
from pocketdiff.pruning.decoder import vae_class
from pocketdiff.sampling.pipeline import load_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/shapes"))
    ap.add_argument("--vae", action="append", required=True, help="NAME=DIR (the first is the reference)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--runs", type=int, default=20, help="latency rounds (batch 1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    pipe = load_pipeline(a.model)
    vaes = {}
    for item in a.vae:
        name, _, path = item.partition("=")
        vaes[name] = vae_class(Path(path)).from_pretrained(path).eval()
    ref = next(iter(vaes))
    rows = {n: {"dir": a.vae[i].partition("=")[2],
                "decoder_params_m": sum(p.numel() for k, p in v.named_parameters() if not k.startswith(
                    ("encoder.", "quant_conv."))) / 1e6} for i, (n, v) in enumerate(vaes.items())}
    for pset in ("heldout-single", "heldout-two"):
        prompts, scenes = load_prompts(pset, a.limit)
        z = torch.cat([torch.from_numpy(g.images) for g in sample_prompts(pipe, prompts, a.steps, a.guidance,
                                                                          decode=False)]).float()
        images = {}
        with torch.no_grad():
            for name, vae in vaes.items():
                images[name] = torch.cat([vae.decode(c / vae.config.scaling_factor).sample.float()
                                          for c in z.split(50)]).clamp(-1, 1)
        real = real_images(scenes)
        key = pset.split("-")[1]
        for name in vaes:
            mse = ((images[name] - images[ref]) ** 2).mean(dim=(1, 2, 3)) / 4  # images in [-1, 1]: range 2
            psnr = (10 * torch.log10(1 / mse.clamp_min(1e-12))).clamp(max=100)
            u8 = to_uint8(images[name])
            rows[name][f"psnr_vs_{ref}_{key}"] = float(psnr.mean())
            rows[name][f"psnr_vs_{ref}_{key}_p05"] = float(psnr.quantile(0.05))
            rows[name][f"acc_{key}"] = judge(list(u8), prompts)["accuracy"]
            if real is not None:
                from pocketdiff.evaluation.fid import domain_fid

                rows[name][f"fid_{key}"] = float(domain_fid(real, u8))
    for name in vaes:
        for key in ("single", "two"):
            rows[name][f"acc_{key}_change"] = rows[name][f"acc_{key}"] - rows[ref][f"acc_{key}"]

    times = {n: [] for n in vaes}
    z1 = z[:1]
    with torch.inference_mode():
        for r in range(a.runs + 2):
            for name, vae in vaes.items():
                t0 = time.perf_counter()
                vae.decode(z1 / vae.config.scaling_factor)
                if r >= 2:
                    times[name].append((time.perf_counter() - t0) * 1e3)
    for name in vaes:
        rows[name]["decode_ms_median"] = statistics.median(times[name])

    print(f"{'decoder':<10}{'params M':>9}{'ms':>7}{'PSNR 1/2':>14}{'acc single':>12}{'acc two':>10}")
    for name, r in rows.items():
        print(f"{name:<10}{r['decoder_params_m']:>9.3f}{r['decode_ms_median']:>7.2f}"
              f"{r[f'psnr_vs_{ref}_single']:>7.1f}/{r[f'psnr_vs_{ref}_two']:<6.1f}"
              f"{100 * r['acc_single']:>11.1f}%{100 * r['acc_two']:>9.1f}%")
    if a.json:
        write_json_atomic(a.json, {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
                                   "steps": a.steps, "guidance": a.guidance, "limit": a.limit, "decoders": rows})


if __name__ == "__main__":
    main()
