#!/usr/bin/env bash
# Issue #5's ablations of CFG-aware step distillation, redone on the shipped (from-nothing) teacher with the shipped
# student's recipe, on one GPU: each 8-step student changes one thing from `base`, and every model is judged on
# both held-out sets over a guidance grid on three seed sets, so each ablation is a curve (docs/distillation.md,
# 2026-11-28). The students train as parallel processes (these small UNets are launch-bound on a GPU; the scenes
# are drawn on the CPU); a failure in one does not stop the others.
#   base     the shipped recipe: the teacher at 32 DDIM steps teaches a copy of itself at 8 (k = 4), p 0.1, w in
#            [2, 14], 200 steps at LR 1e-5 -> 1e-6, 80% two-object batches (models/shapes/unet_s8 is this run on a CPU)
#   p0, p1   vanilla loss only / CFG loss only
#   w2to6    w in [2, 6]
#   t16      a 16-step teacher (k = 2)
#   chain    SnapFusion's default schedule: 32 -> 16, then the 16-step student teaches itself at 16 -> 8
#   prog     progressive: 64 -> 32 -> 16 -> 8, each student taught by the previous one (200 steps per halving)
#   and, without training: the shipped student, and the teacher with DDIM and DPM-Solver++ at 8 steps.
#     bash scripts/distill_ablations.sh OUT_DIR            (a GPU machine: about 7 minutes)
#     DRY=1 bash scripts/distill_ablations.sh OUT_DIR      (seconds-long settings on any machine: checks the script)
#     ROUND=strong D_STEPS=500 LR=3e-5 MIN_LR=3e-6 bash ...  (the five one-change students at the older 500-step recipe)
#     ROUND=two S_STEPS=2 WS=1.5,2,2.5 LR=3e-5 MIN_LR=3e-6 MAX_MIN=1.5 bash ...  (2 steps: p 0.1 / 0 / 1, k 2 / 4)
# OUT_DIR gets each run's log.jsonl, config and eval JSONs; the students' weights stay in a temp dir and are deleted
# (8.8M parameters each: a GPU machine returns too little to bring ten of them back; retrain one on a CPU to keep it).
# Pool and plot: python scripts/compare_evals.py --ref ddim8@2=OUT/ddim8.s0.json,... --model base=OUT/base.s0.json,...
set -u
OUT=${1:?usage: distill_ablations.sh OUT_DIR}
mkdir -p "$OUT"
WORK=$(mktemp -d)
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ "${DRY:-0}" = 1 ]; then
  D_STEPS=2 BATCH=2 LIMIT=4 WS=2 SEEDS="0" DEVICE=auto CAP=2
else
  D_STEPS=${D_STEPS:-200} BATCH=32 LIMIT=200 WS=${WS:-1.5,2,2.5,3,4} SEEDS="0 1000 2000" DEVICE=cuda CAP=5
fi
S=${S_STEPS:-8}  # the student's steps
PD=("$PY" -c "from pocketdiff.cli import main; main()")
note() { echo "$(date +%T) $*" | tee -a "$OUT/log.txt"; }

distil() {  # distil NAME TEACHER_STEPS STUDENT_STEPS args...: one run of the shipped recipe -> WORK/NAME/unet
  local name=$1 ts=$2 ss=$3; shift 3
  local t0=$SECONDS
  timeout $((CAP * 60 + 60)) "${PD[@]}" train distill --teacher models/shapes --teacher-steps "$ts" --student-steps "$ss" \
    --out "$WORK/run_$name" --export "$WORK/$name/unet" --set max_steps=$D_STEPS --set max_minutes=${MAX_MIN:-$CAP} \
    --set batch_size=$BATCH --set lr=${LR:-1e-5} --set min_lr=${MIN_LR:-1e-6} --set warmup_steps=20 \
    --set options.two_object_fraction=0.8 \
    --set eval_every=0 --set sample_every=0 --set checkpoint_every=1000000 --set options.eval_prompts=0 \
    --set log_every=25 "$@" --json "$OUT/$name.train.json" > "$OUT/$name.train.log" 2>&1
  local rc=$?
  note "$name train rc=$rc wall_s=$((SECONDS - t0))"
  cp "$WORK/run_$name/log.jsonl" "$OUT/$name.log.jsonl" 2>/dev/null
  cp "$WORK/run_$name/config.yaml" "$OUT/$name.config.yaml" 2>/dev/null
  return $rc
}

judge() {  # judge NAME eval-args...: S steps, every w of the grid, both held-out sets, one process per seed set
  local name=$1; shift
  local t0=$SECONDS
  for s in $SEEDS; do
    timeout 300 "${PD[@]}" eval "$@" --steps $S --guidance $WS --seed "$s" --limit $LIMIT --device $DEVICE \
      --json "$OUT/$name.s$s.json" > "$OUT/$name.s$s.eval.log" 2>&1 &
  done
  wait
  note "$name eval done wall_s=$((SECONDS - t0)) files=$(ls "$OUT"/"$name".s*.json 2>/dev/null | wc -l)"
}

student() {  # student NAME TEACHER_STEPS args...: S-step student from the teacher, then judged
  local name=$1 ts=$2; shift 2
  distil "$name" "$ts" $S "$@" && judge "$name" --unet "$WORK/$name/unet"
}

note "start: $("$PY" -c 'import torch, diffusers; print(torch.__version__, diffusers.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())')"
if [ "${ROUND:-1}" = two ]; then  # 2-step students straight from the teacher (as the shipped student: straight from the teacher, k = 2)
  student base 4 & student p0 4 --p 0 & student p1 4 --p 1 & student k4 8 &
  judge ddim2 & judge dpmpp2 --scheduler dpm++ &
  wait; note done; rm -rf "$WORK"; exit
fi
student base 32 &
student p0 32 --p 0 &
student p1 32 --p 1 &
student w2to6 32 --w-range 2 6 &
student t16 16 &
if [ "${ROUND:-1}" = strong ]; then wait; note done; rm -rf "$WORK"; exit; fi  # the same five, another recipe
( distil chain_s16 32 16 && distil chain 16 8 --teacher-unet "$WORK/chain_s16/unet" --student "$WORK/chain_s16/unet" \
    && judge chain --unet "$WORK/chain/unet" ) &
( distil prog_s32 64 32 && distil prog_s16 32 16 --teacher-unet "$WORK/prog_s32/unet" --student "$WORK/prog_s32/unet" \
    && distil prog 16 8 --teacher-unet "$WORK/prog_s16/unet" --student "$WORK/prog_s16/unet" \
    && judge prog --unet "$WORK/prog/unet" ) &
judge shipped --unet models/shapes/unet_s8 &
judge ddim8 &
judge dpmpp8 --scheduler dpm++ &
wait
note done
rm -rf "$WORK"
