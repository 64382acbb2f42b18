#!/usr/bin/env bash
# The real path at full size on one GPU (docs/real-path.md, "Not done"): a random-init SD-1.5-size teacher
# (pocketdiff.testing.make_sd15_dir(full_size=True): 860M-parameter UNet, 512 px VAE, 12-layer text encoder; v
# prediction, so the stages take it directly), 256 captioned 512 px images, then `train student` (KD + robust
# training into the SnapFusion preset) and `train distill` (CFG-aware, 16 -> 8 steps) for STEPS steps each in bf16.
# Writes OUT/gpu_real_path.json: per stage it/s (median of the logged windows, the first window left out: warm-up),
# peak GPU memory (torch.cuda.max_memory_allocated), the overrides used, the GPU and torch versions.
#   bash benchmarks/gpu_real_path.sh [OUT] [STEPS]          (default: runs/gpu_real_path 300; ~10 min on an H100)
set -euo pipefail
OUT=${1:-runs/gpu_real_path}
STEPS=${2:-300}
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
"$PY" - "$OUT" "$STEPS" <<'PYEOF'
import json, statistics, sys, time
from pathlib import Path

import torch

from pocketdiff.testing import make_caption_folder, make_sd15_dir
from pocketdiff.training.run import run_stage

out, steps = Path(sys.argv[1]), int(sys.argv[2])
assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
t0 = time.time()
teacher = out / "sd15"
if not (teacher / "unet").is_dir():
    make_sd15_dir(teacher, full_size=True, prediction_type="v_prediction")
data = out / "data"
if not (data / "captions.jsonl").is_file():
    make_caption_folder(data, n=256, size=512)
print(f"fixture built in {time.time() - t0:.0f} s", flush=True)

common = {"max_steps": steps, "mixed_precision": "bf16", "log_every": 10, "checkpoint_every": 0, "sample_every": 0,
          "eval_every": 0, "max_minutes": None, "warmup_steps": 10}
runs = {
    "student": {**common, "batch_size": 8, "export_dir": str(out / "student-unet"),
                "options": {"teacher_dir": str(teacher), "arch": "snapfusion", "data": str(data), "eval_prompts": 0}},
    "distill": {**common, "batch_size": 4, "export_dir": str(out / "unet-s8"),
                "options": {"teacher_dir": str(teacher), "student": str(out / "student-unet"), "teacher_steps": 16,
                            "student_steps": 8, "data": str(data), "eval_prompts": 0}},
}
results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "steps": steps, "stages": {}}
for stage, overrides in runs.items():
    torch.cuda.reset_peak_memory_stats()
    t = time.time()
    summary = run_stage(stage, out=out / "runs" / stage, overrides=overrides)
    rows = [json.loads(r) for r in (out / "runs" / stage / "log.jsonl").read_text().splitlines()]
    its = [r["it_s"] for r in rows if "it_s" in r][1:]
    results["stages"][stage] = {
        "it_s_median": statistics.median(its) if its else None, "batch_size": overrides["batch_size"],
        "images_per_s": statistics.median(its) * overrides["batch_size"] if its else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "wall_s": time.time() - t,
        "final_loss": next((r["loss"] for r in reversed(rows) if "loss" in r), None), "overrides": overrides,
        "summary": summary}
    print(stage, json.dumps({k: v for k, v in results["stages"][stage].items() if k not in ("overrides", "summary")}),
          flush=True)
(out / "gpu_real_path.json").write_text(json.dumps(results, indent=1))
print(f"wrote {out / 'gpu_real_path.json'}")
PYEOF
