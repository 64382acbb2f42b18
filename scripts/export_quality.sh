#!/usr/bin/env bash
# Quality of the exported (and quantized) shipped model against eager fp32, paired per image: both 200-prompt held-out
# sets x seed sets 0, 1000, 2000, the default model (student-8, 8 DDIM steps, w 2). Resumable: finished files are kept.
#   scripts/export_quality.sh [RUN_DIR] [VARIANT ...]     VARIANT = FORMAT:QUANTIZE (default: the list below)
# Results: docs/results/export/quality.json (scripts/compare_evals.py) and the per-seed eval files in RUN_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-/work/runs/export/quality}; shift || true
VARIANTS=("$@")
[ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=(onnx:int8 openvino:int8 executorch:int8 onnx:int8-weights onnx:fp16
                                        openvino:int8-weights onnx:none)
PD=${PD:-pocketdiff}
THREADS=${THREADS:-1}
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$THREADS
mkdir -p "$RUN"
EVAL=(--steps 8 --guidance 2 --scheduler ddim --prompts heldout-single --prompts heldout-two --threads "$THREADS")
REF=(--dtype fp32)  # the reference is eager fp32 (eval's default, auto, picks bf16 on CPUs that have it)

for seed in 0 1000 2000; do  # the eager fp32 reference
  f="$RUN/eager_fp32_s$seed.json"
  [ -f "$f" ] || $PD eval --model models/shapes --unet models/shapes/unet_s8 --seed "$seed" "${EVAL[@]}" "${REF[@]}" --json "$f"
done
for v in "${VARIANTS[@]}"; do
  fmt=${v%%:*}; q=${v##*:}; dir="$RUN/export_${fmt}_$q"
  [ -f "$dir/pocketdiff_export.json" ] || \
    $PD export models/shapes --format "$fmt" --quantize "$q" --threads "$THREADS" --out "$dir" --json "$RUN/export_${fmt}_$q.json"
  for seed in 0 1000 2000; do
    f="$RUN/${fmt}_${q}_s$seed.json"
    [ -f "$f" ] || $PD eval --model "$dir" --seed "$seed" "${EVAL[@]}" --json "$f"
  done
done

args=(--ref "eager-fp32@2=$RUN/eager_fp32_s0.json,$RUN/eager_fp32_s1000.json,$RUN/eager_fp32_s2000.json")
for v in "${VARIANTS[@]}"; do
  fmt=${v%%:*}; q=${v##*:}
  args+=(--model "$fmt-$q=$RUN/${fmt}_${q}_s0.json,$RUN/${fmt}_${q}_s1000.json,$RUN/${fmt}_${q}_s2000.json")
done
mkdir -p docs/results/export
${PYTHON:-python} scripts/compare_evals.py "${args[@]}" --json docs/results/export/quality.json
