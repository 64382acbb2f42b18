#!/usr/bin/env bash
# Quality of the exported (and quantized) shipped model against eager fp32, paired per image: both 200-prompt held-out
# sets x seed sets 0, 1000, 2000, the default model (student-8, 8 DDIM steps, w 2). Resumable: finished files are kept.
#   [SEEDS="0 1000 2000"] scripts/export_quality.sh [RUN_DIR] [VARIANT ...]   VARIANT = FORMAT:QUANTIZE (default below)
# Results: $OUT/quality.json (scripts/compare_evals.py) and $OUT/sizes.json (OUT defaults to docs/results/export), the
# per-seed eval files in RUN_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/export/quality}; shift || true
VARIANTS=("$@")
[ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=(onnx:int8 openvino:int8-hybrid openvino:int8 executorch:int8
                                        onnx:int8-weights onnx:fp16 openvino:int8-weights onnx:none)
PD=${PD:-pocketdiff}
THREADS=${THREADS:-1}
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$THREADS
mkdir -p "$RUN"
EVAL=(--steps 8 --guidance 2 --scheduler ddim --prompts heldout-single --prompts heldout-two --threads "$THREADS")
REF=(--dtype fp32)  # the reference is eager fp32 (eval's default, auto, picks bf16 on CPUs that have it)

OUT=${OUT:-docs/results/export}
SEEDS=${SEEDS:-0 1000 2000}  # of the exports (the reference always gets all three)
for seed in 0 1000 2000; do  # the eager fp32 reference
  f="$RUN/eager_fp32_s$seed.json"
  [ -f "$f" ] || $PD eval --model models/shapes --unet models/shapes/unet_s8 --seed "$seed" "${EVAL[@]}" "${REF[@]}" --json "$f"
done
for v in "${VARIANTS[@]}"; do
  fmt=${v%%:*}; q=${v##*:}; dir="$RUN/export_${fmt}_$q"
  [ -f "$dir/pocketdiff_export.json" ] || \
    $PD export models/shapes --format "$fmt" --quantize "$q" --threads "$THREADS" --out "$dir" --json "$RUN/export_${fmt}_$q.json"
  for seed in $SEEDS; do
    f="$RUN/${fmt}_${q}_s$seed.json"
    [ -f "$f" ] || $PD eval --model "$dir" --seed "$seed" "${EVAL[@]}" --json "$f"
  done
done

args=(--ref "eager-fp32@2=$RUN/eager_fp32_s0.json,$RUN/eager_fp32_s1000.json,$RUN/eager_fp32_s2000.json")
for v in "${VARIANTS[@]}"; do
  fmt=${v%%:*}; q=${v##*:}
  files=$(ls "$RUN/${fmt}_${q}"_s*.json | paste -sd,)  # the seed sets evaluated so far
  args+=(--model "$fmt-$q=$files")
done
mkdir -p "$OUT"
${PYTHON:-python} scripts/compare_evals.py "${args[@]}" --json "$OUT/quality.json"
# per-network bytes on disk of every export report in RUN (and fp32 ones given in FP32_REPORTS)
${PYTHON:-python} - "$OUT/sizes.json" "$RUN"/export_*.json ${FP32_REPORTS:-} <<'PY'
import json, sys
from pocketdiff.io import write_json_atomic
rows = {}
for f in sys.argv[2:]:
    r = json.load(open(f))
    rows[f"{r['format']}-{r['quantize']}"] = {n: {"quantize": e["quantize"], "bytes": e["bytes"]} for n, e in r["networks"].items()}
write_json_atomic(sys.argv[1], rows)
print("| export | " + " | ".join(["text encoder", "UNet", "decoder"]) + " |\n|---|---:|---:|---:|")
for k, v in sorted(rows.items()):
    print(f"| {k} | " + " | ".join(f"{v[n]['bytes'] / 1e6:.1f} MB" for n in ("text_encoder", "unet", "decoder")) + " |")
PY
