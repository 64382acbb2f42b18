#!/usr/bin/env bash
# One prepared check that the training loop, distillation, sampling and the test suite run on a CUDA GPU, and how
# fast (results: docs/benchmarks.md, "CUDA"). Needs pocketdiff importable (installed, or PYTHONPATH=src) and the
# shipped models/shapes. Every step has its own time limit and the script goes on after a failure, so one run
# reports on all of them:
#     bash benchmarks/cuda_check.sh OUT_DIR            (a GPU machine; about 8 minutes)
#     DRY=1 bash benchmarks/cuda_check.sh OUT_DIR      (seconds-long settings on any machine: checks the script)
set -u
OUT=${1:?usage: cuda_check.sh OUT_DIR}
mkdir -p "$OUT"
WORK=$(mktemp -d)
LOG="$OUT/log.txt"
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ "${DRY:-0}" = 1 ]; then
  T_STEPS=4 D_STEPS=2 LIMIT=4 DEMO_N=2 RUNS=1 UNET_RES=64 TESTS=0 DEVICE=auto
else
  T_STEPS=300 D_STEPS=60 LIMIT=200 DEMO_N=16 RUNS=20 UNET_RES=512 TESTS=1 DEVICE=cuda
fi
PD=("$PY" -c "from pocketdiff.cli import main; main()")
step() {  # step NAME SECONDS CMD...: run with a time limit, log its output and its exit status and wall time
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*" >> "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "=== $name rc=$rc wall_s=$((SECONDS - t0))" | tee -a "$LOG"
}

step env 60 "$PY" -c "import torch, diffusers, transformers, typer; print(torch.__version__, diffusers.__version__, typer.__version__,
transformers.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
nvidia-smi -L >> "$LOG" 2>&1

# 1. the teacher's training loop (accelerate picks the GPU; the config's precision, fp32), from the shipped teacher
step train_teacher 120 "${PD[@]}" train teacher --config teacher --set options.init_unet=models/shapes/unet --out "$WORK/teacher" \
  --set max_steps=$T_STEPS --set eval_every=$T_STEPS --set sample_every=$T_STEPS --set checkpoint_every=100 \
  --set export_dir="$WORK/teacher_unet" --json "$OUT/train_teacher.json"
# 2. CFG-aware step distillation (teacher 32 DDIM steps -> student 8), from the shipped student
step distill 90 "${PD[@]}" train distill --teacher models/shapes --student models/shapes/unet_s8 --teacher-steps 32 \
  --student-steps 8 --out "$WORK/distill" --export "$WORK/unet_s8" --set max_steps=$D_STEPS \
  --set eval_every=$D_STEPS --set sample_every=$D_STEPS --json "$OUT/distill.json"
# 3. sampling + judging on the GPU: the shipped student, 8 DDIM steps, w 2, seed 0 (compare: the CPU's numbers)
step eval_student 100 "${PD[@]}" eval --unet models/shapes/unet_s8 --steps 8 --guidance 2 --seed 0 --limit $LIMIT \
  --device $DEVICE --json "$OUT/eval_student.json"
step demo 80 "${PD[@]}" demo --n $DEMO_N --out "$WORK/demo" --device $DEVICE --json "$OUT/demo.json"
# 4. one denoising step of the full-size UNets at 512 px, fp16 (the real path's students)
[ "${SKIP_UNET:-0}" = 1 ] || step unet_step_fp16 120 "$PY" benchmarks/unet_step.py --device ${DEVICE/auto/cpu} --dtype fp16 --runs $RUNS --warmup 3 \
  --resolution $UNET_RES --json "$OUT/unet_step_fp16.json"
# 5. the test suite with the GPU visible: every training test then runs through accelerate on CUDA
if [ "$TESTS" = 1 ]; then
  OMP_NUM_THREADS=2 step pytest 150 "$PY" -m pytest -q -p no:cacheprovider -n 8 --timeout 180
fi
rm -rf "$WORK"
