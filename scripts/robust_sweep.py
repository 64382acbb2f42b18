"""The small sweep behind robust training's default drop probability (SnapFusion gives no value).

    python scripts/robust_sweep.py --p 0 0.1 0.25 --steps 200 --json docs/results/evolving/robust_sweep.json
        [--teacher models/shapes] [--config student] [--reuse 0.1=runs/robust/unet]

For each p: the student stage trains a copy of the teacher for --steps steps with p_drop_tf = p and
p_drop_res = p / 2 (runs/robust_sweep/p{p}/; `--reuse P=DIR` takes an existing run instead), then the evolving probe
(validation prompts of the training distribution, fixed seeds) measures the whole network's domain CLIP score and
accuracy, the drop when each evolvable block alone runs as identity, and the score with all five transformers of
level 0 (the 16x16 ones, the most latency) removed at once. Robust training is worth its price if the single-block
and multi-block drops shrink while the whole network's quality stays.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from pocketdiff.arch import FlexUNet
from pocketdiff.training.run import run_stage
from pocketdiff.evolving.actions import evolvable
from pocketdiff.evolving.search import QualityProbe
from pocketdiff.io import write_json_atomic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--p", type=float, nargs="+", default=[0.0, 0.1, 0.25])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--teacher", default="models/shapes")
    ap.add_argument("--config", default="student", help="the student stage's config (a shipped name or a YAML path)")
    ap.add_argument("--reuse", action="append", default=[], help="P=UNET_DIR: an existing run for this p")
    ap.add_argument("--probe-prompts", type=int, default=24)
    ap.add_argument("--probe-steps", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    reuse = {float(k): v for k, _, v in (r.partition("=") for r in a.reuse)}
    probe = QualityProbe(a.teacher, a.probe_prompts, a.probe_steps, 3.0)
    rows = []
    for p in a.p:
        unet_dir = Path(reuse.get(p, f"runs/robust_sweep/p{p:g}/unet"))
        if not unet_dir.is_dir():
            run_stage("student", a.config, None, unet_dir.parent / "run", overrides={
                "export_dir": str(unet_dir), "max_steps": a.steps, "sample_every": 0,
                "options": {"teacher_dir": a.teacher, "p_drop_tf": p, "p_drop_res": p / 2}})
        unet = FlexUNet.from_pretrained(unet_dir).eval()
        full = probe(unet)
        drops = {}
        for key in evolvable(unet.spec):
            unet.skipped = {key}
            drops[key] = full["clip"] - probe(unet)["clip"]
        unet.skipped = {k for k in evolvable(unet.spec) if k[1] == 0 and k[0] != "mid"}
        level0 = probe(unet)
        unet.skipped = set()
        rows.append({"p_drop_tf": p, "p_drop_res": p / 2, "steps": a.steps, "unet": str(unet_dir),
                     "clip": full["clip"], "accuracy": full["accuracy"],
                     "single_drop_mean": statistics.mean(drops.values()), "single_drop_max": max(drops.values()),
                     "level0_removed_clip": level0["clip"], "level0_removed_accuracy": level0["accuracy"]})
        r = rows[-1]
        print(f"p={p:g}: CLIP {r['clip']:.2f} acc {100 * r['accuracy']:.0f}% | one block removed: mean drop "
              f"{r['single_drop_mean']:.2f}, max {r['single_drop_max']:.2f} | level-0 transformers removed: CLIP "
              f"{r['level0_removed_clip']:.2f} acc {100 * r['level0_removed_accuracy']:.0f}%", flush=True)
    if a.json:
        write_json_atomic(a.json, {"probe_prompts": a.probe_prompts, "probe_steps": a.probe_steps, "rows": rows})


if __name__ == "__main__":
    main()
