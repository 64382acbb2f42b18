"""A shipped pipeline in fp32 against bf16, side by side in one process (the fast path of `generate`).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/pipeline_dtype.py [--unet models/shapes/unet_s8] [--images 50]
        [--steps 8] [--guidance 2] [--runs 3] [--threads 1] [--json PATH]

Both pipelines are loaded once; each round runs --images prompts as one batch through each, round-robin, and the
per-component times (text encoder, all UNet calls, decoder) are the pipeline's own timings. Medians over --runs.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime as dt
import statistics
from pathlib import Path

import torch

from pocketdiff.io import write_json_atomic
from pocketdiff.precision import native_bf16
from pocketdiff.profiling.latency import machine_info
from pocketdiff.sampling.pipeline import load_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/shapes"))
    ap.add_argument("--unet", type=Path, default=Path("models/shapes/unet_s8"))
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    prompts = ["a red circle left of a blue square"] * a.images
    pipes = {d: load_pipeline(a.model, unet_dir=a.unet, dtype=d) for d in ("fp32", "bf16")}
    for p in pipes.values():
        p(prompts[:2], num_inference_steps=2, guidance_scale=a.guidance)  # warm-up
    times = {d: {"text_encoder": [], "unet_total": [], "decoder": []} for d in pipes}
    load = [os.getloadavg()[0]]
    for r in range(a.runs):
        for d, p in pipes.items():
            t = p(prompts, num_inference_steps=a.steps, guidance_scale=a.guidance).timings
            for k in times[d]:
                times[d][k].append(getattr(t, k))
    load.append(os.getloadavg()[0])
    rows = {d: {k: statistics.median(v) for k, v in ts.items()} for d, ts in times.items()}
    for d, r in rows.items():
        r["total"] = sum(r.values())
        print(f"{d}: " + ", ".join(f"{k} {v:,.0f} ms" for k, v in r.items()) + f" ({a.images} images)")
    ratio = {k: rows["fp32"][k] / rows["bf16"][k] for k in rows["fp32"]}
    print("fp32 / bf16: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))
    if a.json:
        write_json_atomic(a.json, dict(command="python benchmarks/pipeline_dtype.py " + " ".join(os.sys.argv[1:]),
                                       date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                       machine=machine_info(), native_bf16=native_bf16(), threads=a.threads,
                                       loadavg=load, torch=torch.__version__, rows=rows, fp32_over_bf16=ratio,
                                       times_ms=times, images=a.images, steps=a.steps, guidance=a.guidance))


if __name__ == "__main__":
    main()
