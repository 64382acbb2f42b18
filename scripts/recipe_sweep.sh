#!/usr/bin/env bash
# Training recipes side by side on one GPU, each judged on both held-out sets: the GPU compares in minutes what the
# 2-core CPU needs hours for. The variants run as parallel processes (these small UNets are launch-bound on a GPU);
# each has a time cap, and a failure in one does not stop the others. Results: docs/results/teacher/recipe_sweep/.
#   ROUND=1, ROUND=2 (issue #3): the teacher from nothing on the shipped tokenizer / text encoder / VAE,
#     batch 128 x STEPS (1,000 x 128 = 128k scenes; the old recipe had seen 144k, 4,500 x 32, after its first two
#     warm-restarted runs: 55.5% / 10.5%), judged at 50 DDIM steps, w 2 and 3, seed 0. Also re-runs the VAE stage's quick preset
#     on the GPU (the fix of its sample grid had not run on one).
#   ROUND=distill (prepared for issue #5): 8-step students of the shipped teacher, the
#     shipped recipe (k = 4, 500 steps, LR 3e-5) against k = 8, 1,000 steps and batch 128, judged at 8 DDIM steps,
#     w 2 and 2.5, seed 0.
#     bash scripts/recipe_sweep.sh OUT_DIR               (a GPU machine: about 8 minutes)
#     DRY=1 bash scripts/recipe_sweep.sh OUT_DIR         (seconds-long settings on any machine: checks the script)
set -u
OUT=${1:?usage: recipe_sweep.sh OUT_DIR}
mkdir -p "$OUT"
WORK=$(mktemp -d)
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [ "${DRY:-0}" = 1 ]; then
  STEPS=2 BATCH=4 CAP=1 LIMIT=2 DEVICE=auto EVAL_STEPS=2 MONITOR=2 D_STEPS=2 D_BATCH=2 S_STEPS=2
else
  STEPS=${STEPS:-1000} BATCH=128 CAP=${CAP:-5.5} LIMIT=200 DEVICE=cuda EVAL_STEPS=50 MONITOR=48
  D_STEPS=500 D_BATCH=32 S_STEPS=8
fi
PD=("$PY" -c "from pocketdiff.cli import main; main()")
note() { echo "$(date +%T) $*" | tee -a "$OUT/log.txt"; }

variant() {  # variant NAME --set ...: train the teacher from nothing, then judge
  local name=$1; shift
  mkdir -p "$WORK/$name" && cp -r models/shapes/tokenizer models/shapes/text_encoder models/shapes/vae "$WORK/$name/"
  local t0=$SECONDS
  timeout $("$PY" -c "print(int($CAP * 60 + 60))") "${PD[@]}" train teacher --config teacher --out "$WORK/run_$name" \
    --set options.model_dir="$WORK/$name" --set export_dir="$WORK/$name/unet" --set seed=0 \
    --set max_steps=$STEPS --set max_minutes=$CAP --set batch_size=$BATCH --set warmup_steps=100 --set min_lr=1e-5 \
    --set 'mixed_precision="no"' --set eval_every=0 --set sample_every=0 --set checkpoint_every=1000000 \
    --set log_every=50 --set options.eval_prompts=$MONITOR --set options.two_object_fraction=0.75 "$@" --json "$OUT/$name.train.json" \
    > "$OUT/$name.train.log" 2>&1
  note "$name train rc=$? wall_s=$((SECONDS - t0))"
  cp "$WORK/run_$name/log.jsonl" "$OUT/$name.log.jsonl" 2>/dev/null
  judge "$name" $EVAL_STEPS 2,3 --model "$WORK/$name"
}

judge() {  # judge NAME STEPS GUIDANCES eval-args...: held-out accuracy, FID, CLIP score -> OUT/NAME.eval.json
  local name=$1 steps=$2 guidance=$3; shift 3
  local t0=$SECONDS
  timeout 150 "${PD[@]}" eval "$@" --steps $steps --guidance $guidance --seed 0 --limit $LIMIT --device $DEVICE \
    --json "$OUT/$name.eval.json" > "$OUT/$name.eval.log" 2>&1
  note "$name eval rc=$? wall_s=$((SECONDS - t0))"
}

student() {  # student NAME K --set ...: distil the shipped teacher at 8K steps to 8 steps, then judge
  local name=$1 k=$2; shift 2
  local t0=$SECONDS
  timeout $("$PY" -c "print(int($CAP * 60 + 60))") "${PD[@]}" train distill --teacher models/shapes \
    --student models/shapes/unet --teacher-steps $((k * S_STEPS)) --student-steps $S_STEPS --out "$WORK/run_$name" \
    --export "$WORK/$name/unet_s8" --set max_steps=$D_STEPS --set max_minutes=$CAP --set batch_size=$D_BATCH \
    --set lr=3e-5 --set min_lr=3e-6 --set eval_every=0 --set sample_every=0 --set checkpoint_every=1000000 \
    --set options.eval_prompts=$MONITOR --set options.two_object_fraction=0.8 "$@" --json "$OUT/$name.train.json" \
    > "$OUT/$name.train.log" 2>&1
  note "$name train rc=$? wall_s=$((SECONDS - t0))"
  cp "$WORK/run_$name/log.jsonl" "$OUT/$name.log.jsonl" 2>/dev/null
  judge "$name" $S_STEPS 2,2.5 --model models/shapes --unet "$WORK/$name/unet_s8"
}

note "start: $("$PY" -c 'import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())')"
[ "${ROUND:-1}" = distill ] || ( t0=$SECONDS; timeout 120 "${PD[@]}" train vae --config vae --preset quick --out "$WORK/vae_quick" \
    --set export_dir="$WORK/vae_quick/vae" > "$OUT/vae_quick.log" 2>&1; note "vae_quick rc=$? wall_s=$((SECONDS - t0))" ) &
LN=(--set options.timestep_density=logit_normal --set options.logit_mean=0.5 --set options.logit_std=1.0)
MSNR=(--set options.loss_weighting=min_snr --set options.snr_gamma=5)
if [ "${ROUND:-1}" = 1 ]; then
  variant ln --set lr=1e-3 "${LN[@]}" &
  variant uni_msnr --set lr=1e-3 "${MSNR[@]}" &
  variant ln_msnr --set lr=1e-3 "${LN[@]}" "${MSNR[@]}" &
  variant ln_lr2 --set lr=2e-3 "${LN[@]}" &
elif [ "$ROUND" = distill ]; then  # ~3.5 it/s each: s_long needs ~5 min, hence a 7-minute cap
  [ "${DRY:-0}" = 1 ] || CAP=${CAP_DISTILL:-7}
  student s_base 4 &
  student s_k8 8 &
  student s_long 4 --set max_steps=$((2 * D_STEPS)) &
  student s_b128 4 --set batch_size=$((4 * D_BATCH)) &
else  # round 2 (round 1's lr 2e-3 was worse than 1e-3)
  variant uni_msnr --set lr=1e-3 "${MSNR[@]}" &
  variant ln_msnr --set lr=1e-3 "${LN[@]}" "${MSNR[@]}" &
  variant ln_lr05 --set lr=5e-4 "${LN[@]}" &
  variant ln_m0 --set lr=1e-3 "${LN[@]}" --set options.logit_mean=0.0 &
fi
wait
note done
rm -rf "$WORK"
