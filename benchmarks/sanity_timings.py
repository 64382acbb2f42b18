"""Speed sanity checks that used to be timed assertions in the test suite (where a loaded machine made them flaky
and a fast one made them meaningless): the shapes-world renderer's throughput, and the profiler's per-block timings
against the whole UNet they are part of.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/sanity_timings.py [--scenes 500] [--runs 5] [--threads 2] [--json PATH]

Targets (reported as met or missed, never tuned to pass):
  render     >= 500 scenes/s on one core (training draws its batches on the CPU; ~6,000/s on a quiet Zen 3 core)
  profiler   sum of the block medians <= 2x the whole UNet's slowest run (the sd15 preset at width 0.1, 64 px):
             the hooks must time the blocks inside the UNet, not something larger
Run by hand; results and the command go to docs/benchmarks.md with the machine, the date and the load.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read by OpenMP when torch is imported (measured.md: 3-8x)

import argparse
import datetime as dt
import statistics
import time
from pathlib import Path

import numpy as np

from pocketdiff.io import write_json_atomic


def render_rate(n: int, rounds: int) -> dict:
    from pocketdiff.data import shapes as S

    rng = np.random.default_rng(0)
    scenes = [S.sample_scene(rng) for _ in range(n)]
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for s in scenes:
            S.render(s, rng=rng)
        rates.append(n / (time.perf_counter() - start))
    median = statistics.median(rates)
    return {"scenes": n, "rounds": rounds, "scenes_per_s_median": median, "scenes_per_s_min": min(rates),
            "target": 500, "met": median >= 500}


def profiler_block_sum(runs: int, threads: int) -> dict:
    from pocketdiff.arch import get_spec
    from pocketdiff.profiling import profile_model

    p = profile_model(get_spec("sd15", width=0.1, cross_attention_dim=24), resolution=64, runs=runs, warmup=1,
                      threads=threads, components=False)
    block_sum = sum(u.timing.median for u in p.units if u.cost.unit.is_block)
    ratio = block_sum / p.unet.max
    return {"block_sum_ms": block_sum, "unet_max_ms": p.unet.max, "ratio": ratio, "target": "<= 2", "met": ratio <= 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=500)
    ap.add_argument("--runs", type=int, default=5, help="rounds of each measurement")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the profiler check")
    ap.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    a = ap.parse_args()
    from pocketdiff.profiling.latency import machine_info

    results = {"render": render_rate(a.scenes, a.runs), "profiler": profiler_block_sum(a.runs, a.threads)}
    for name, r in results.items():
        print(name, {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()})
    if a.json:
        write_json_atomic(a.json, {**results, "date": dt.datetime.now().isoformat(timespec="seconds"),
                                   "machine": machine_info(), "load": os.getloadavg()})


if __name__ == "__main__":
    main()
