#!/usr/bin/env bash
# Every check that needs a CUDA machine, in one prepared run (device time is scarce):
#   1. parity of the MuJoCo Warp CUDA backend with MuJoCo C on every task (also compiles the kernels);
#   2. train a BC policy on CUDA (the push_cube recipe of docs/results/imitation.md: 200 demos, 2000 steps) and evaluate it through `robolearn eval --backend gpu` and
#      `--backend cpu` on the same seeds;
#   3. scripts/bench_gpu.py with whatever time is left (it stops starting measurements at its deadline).
# Results go to $OUT (default /tmp/gpu_checks): parity.md, eval_gpu.json, eval_cpu.json, train.log,
# bench.md, bench.json, log.
#
#   bash scripts/gpu_checks.sh [TOTAL_SECONDS] [COMMIT]     # on the CUDA machine, after staging the wheels
#   BACKEND=warp-cpu BENCH_DEVICE=cpu SMALL=1 bash scripts/gpu_checks.sh 300   # a dry run without a GPU
set -uo pipefail
total=${1:-540}
commit=${2:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
out=${OUT:-/tmp/gpu_checks}
backend=${BACKEND:-gpu}
bench_device=${BENCH_DEVICE:-cuda}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
py="python3"
cli=("$py" -m robolearn.cli)
if [ "${SMALL:-0}" = 1 ]; then
  parity_worlds=8; demos=10; train_steps=50; eval_eps=16; bench=(--worlds 16 --tasks push_cube --steps 3 --dp-steps 8 --warmup 1 --cpu-steps 2)
else
  parity_worlds=512; demos=200; train_steps=2000; eval_eps=500; bench=()
fi
{
  echo "== start $(date -u +%FT%TZ) commit $commit"
  nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  $py -c "import torch, warp, mujoco, mujoco_warp; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'warp', warp.__version__, 'mujoco', mujoco.__version__)"

  echo "== [$SECONDS s] 1. backend parity"
  timeout 200 $py scripts/backend_parity.py --backend "$backend" --worlds $parity_worlds --out "$out/parity.md"

  echo "== [$SECONDS s] 2. train on CUDA, eval on gpu and cpu"
  data=/tmp/gpu_checks_data/pc.zarr; run=/tmp/gpu_checks_data/bc
  rm -rf /tmp/gpu_checks_data
  timeout 60 "${cli[@]}" collect --task push_cube --episodes $demos --out $data --num-envs 16 --seed 0 --no-progress
  dev=cuda; [ "$bench_device" = cpu ] && dev=cpu
  timeout 90 "${cli[@]}" train --policy bc --data $data --task push_cube --out $run --wandb off \
      train.steps=$train_steps train.device=$dev train.eval_every=1000000 train.save_every=1000000 \
      train.num_workers=0 train.log_every=500 train.batch_size=256 train.lr=0.001 'policy.hidden_dims=[256,256]' 2>&1 | tee "$out/train.log" | tail -5
  timeout 60 "${cli[@]}" eval --checkpoint $run --episodes $eval_eps --num-envs $eval_eps --seed 1000 \
      --backend "$backend" --json > "$out/eval_gpu.json"
  timeout 90 "${cli[@]}" eval --checkpoint $run --episodes $eval_eps --num-envs 16 --seed 1000 --backend cpu --json > "$out/eval_cpu.json"
  $py -c "import json,sys; [print(f, {k: json.load(open(f)).get(k) for k in ('backend','n','success_rate','ci95')}) for f in sys.argv[1:]]" \
      "$out/eval_gpu.json" "$out/eval_cpu.json"

  left=$(( total - SECONDS - 40 ))
  echo "== [$SECONDS s] 3. benchmark (start no measurement after $left s)"
  timeout $(( left + 60 )) $py scripts/bench_gpu.py --device "$bench_device" --deadline-s $left --commit "$commit" --out "$out/bench.md" "${bench[@]}"
  echo "== done [$SECONDS s]"
} 2>&1 | tee "$out/log"
