#!/usr/bin/env bash
# The CUDA measurements still open after issue 26 (everything else runs on Warp's CPU device), in
# one prepared run, most important first, each under its own timeout; raw JSON under $OUT:
#   1. parity.md        scripts/backend_parity.py: MuJoCo Warp on CUDA vs MuJoCo C, 512 worlds, every task
#                       (also compiles the kernels);
#   2. collect.json     device collection: `collect --backend gpu`, pick_place, 10240 demos on 10240
#                       worlds (target < 300 s), wall and store-write seconds; plus collect_parity.json:
#                       64 episodes on gpu and on cpu, same seeds, per-episode length/success agreement;
#   3. eval_gpu.json / eval_cpu.json   a diffusion policy (policies/diffusion_small.yaml) trained on CUDA on 200
#                       push_cube demos, evaluated with `eval --backend gpu` and `--backend cpu` on
#                       the same 500 seeds (success within each other's Wilson intervals);
#   4. buffers.jsonl    sort (3 cubes) at 32768 worlds: default contact/constraint buffers vs tight
#                       ones (scripts/profile_device_step.py --compare-buffers), the task's Newton
#                       solver vs CG (--compare-solver cg), and profile.jsonl:
#                       the graphed device step split into physics / reset / task functions + solver
#                       iterations over the worlds;
#   5. learners_tests.txt  tests/test_device_learners.py on the CUDA backend (finetune / SAILOR device
#                       paths against MuJoCo C; needs pytest staged), then
#      learners.jsonl   scripts/bench_learners.py: env steps/s of `finetune`'s interaction (SAC actor +
#                       step + device replay, no gradient updates) at 4096 / 16384 envs on CUDA vs the
#                       host vector loop (16 envs) and today's one-env loop, and of SAILOR's collector
#                       (noisy base and planner) at 1024 envs on CUDA vs 16 host envs, on the diffusion
#                       policy of step 3;
#   6. rl_updates.jsonl  scripts/bench_rl_updates.py: seconds per update of WSRL's learners (Cal-QL with 10
#                       and 2 critics, SAC with 10 critics at UTD 4 and 2 at UTD 1) on CUDA, i.e. whether
#                       the paper's lengths (250k-1M pre-training, 500k online steps; section 5 of
#                       docs/results/offline_to_online.md, where the one-thread CPU rates are) fit a GPU session;
#   7. bench.md/.json   scripts/bench_gpu.py for push_t (exact coverage) and sort at 32k / 16k worlds,
#                       with whatever time is left (it starts no measurement after its deadline).
#
#   bash scripts/gpu_checks.sh [TOTAL_SECONDS] [COMMIT]      # CUDA machine, wheels staged, OUT set
#   BACKEND=warp-cpu BENCH_DEVICE=cpu SMALL=1 bash scripts/gpu_checks.sh 900   # dry run without a GPU
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
data=/tmp/gpu_checks_data
rm -rf "$data"; mkdir -p "$data"
if [ "${SMALL:-0}" = 1 ]; then
  parity_worlds=4; collect_eps=8; parity_eps=4; demos=8; train_steps=20; eval_eps=8; sort_worlds=8
  bench=(--worlds 8 --steps 2 --dp-steps 8 --warmup 1 --cpu-steps 1 --modes mlp --cpu-modes mlp)
  parity_tasks=(--tasks push_cube); profile_steps=2
  learners=(--envs 8 --host-envs 2 --steps 4 --warmup 1 --one-env-steps 40 --sailor-envs 2 --sailor-steps 2)
  rl_updates=(--steps 2 --warmup 1 --repeats 1);
else
  parity_worlds=512; collect_eps=10240; parity_eps=64; demos=200; train_steps=3000; eval_eps=500; sort_worlds=32768
  bench=(--worlds 32768 16384 --cpu-modes mlp); parity_tasks=(); profile_steps=10
  learners=(--envs 4096 16384 --host-envs 16 --steps 50 --warmup 5 --one-env-steps 600 --sailor-envs 1024 --sailor-steps 16)
  rl_updates=(--steps 200 --warmup 20 --repeats 3);
fi
left() { echo $(( total - SECONDS )); }
{
  echo "== start $(date -u +%FT%TZ) commit $commit total ${total}s"
  nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  $py -c "import torch, warp, mujoco, mujoco_warp; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'warp', warp.__version__, 'mujoco', mujoco.__version__)"

  echo "== [$SECONDS s] 1. backend parity, $parity_worlds worlds"
  timeout 200 $py scripts/backend_parity.py --backend "$backend" --worlds $parity_worlds "${parity_tasks[@]}" --out "$out/parity.md"

  echo "== [$SECONDS s] 2. device collection"
  timeout 240 $py - "$backend" "$collect_eps" "$parity_eps" "$out" "$data" <<'EOF'
import json, sys, time
import numpy as np
from robolearn.data.store import EpisodeStore
from robolearn.tasks.collect import collect
backend, n, m, out, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
# parity first (small): the same seeds on the device and on MuJoCo C
rec = {}
for b in (backend, "cpu"):
    rec[b] = collect("pick_place", m, f"{data}/par_{b}", num_envs=m, noise=0.1, seed=7, progress=False, backend=b)
a, c = EpisodeStore.open(f"{data}/par_{backend}"), EpisodeStore.open(f"{data}/par_cpu")
ta, tc = a.episode_table(), c.episode_table()
rec["episodes"] = m
rec["same_length"] = int(np.sum(a.episode_lengths == c.episode_lengths))
rec["same_success"] = int(np.sum(ta["success"] == tc["success"]))
rec["same_seed"] = int(np.sum(ta["seed"] == tc["seed"]))
json.dump(rec, open(f"{out}/collect_parity.json", "w"), indent=1)
print("parity", json.dumps(rec))
t0 = time.perf_counter()
s = collect("pick_place", n, f"{data}/pp", num_envs=n, seed=0, progress=False, backend=backend)
s.update(num_envs=n, total_s=time.perf_counter() - t0, demos_per_min=n / (time.perf_counter() - t0) * 60)
json.dump(s, open(f"{out}/collect.json", "w"), indent=1)
print("collect", json.dumps(s))
EOF
  rm -rf "$data/pp"

  echo "== [$SECONDS s] 3. diffusion trained on CUDA, eval on gpu and cpu"
  dev=cuda; [ "$bench_device" = cpu ] && dev=cpu
  timeout 60 "${cli[@]}" collect --task push_cube --episodes $demos --out $data/pc.zarr --num-envs $demos --seed 0 \
      --backend "$backend" --no-progress
  timeout 200 "${cli[@]}" train --policy diffusion --config policies/diffusion_small.yaml --data $data/pc.zarr --task push_cube --out $data/dp --wandb off \
      train.steps=$train_steps train.device=$dev train.eval_every=1000000 train.save_every=1000000 \
      train.num_workers=0 train.log_every=500 2>&1 | tee "$out/train.log" | tail -3
  timeout 150 "${cli[@]}" eval --checkpoint $data/dp --episodes $eval_eps --num-envs $eval_eps --seed 1000 \
      --backend "$backend" --json > "$out/eval_gpu.json" || echo "eval --backend $backend failed or timed out (rc $?)"
  timeout 150 "${cli[@]}" eval --checkpoint $data/dp --episodes $eval_eps --num-envs 100 --seed 1000 --backend cpu \
      --json > "$out/eval_cpu.json" || echo "eval --backend cpu failed or timed out (rc $?)"
  $py -c "import json,sys; [print(f, {k: json.load(open(f)).get(k) for k in ('backend','n','success_rate','ci95')}) for f in sys.argv[1:]]" \
      "$out/eval_gpu.json" "$out/eval_cpu.json"

  echo "== [$SECONDS s] 4. sort: buffers and step profile, $sort_worlds worlds"
  timeout 90 $py scripts/profile_device_step.py --task sort --set num_cubes=3 --worlds $sort_worlds --device "$bench_device" \
      --steps $profile_steps --rounds 3 --compare-buffers 52 226 --out "$out/buffers.jsonl"
  timeout 90 $py scripts/profile_device_step.py --task sort --set num_cubes=3 --worlds $sort_worlds --device "$bench_device" \
      --steps $profile_steps --rounds 3 --compare-solver cg --out "$out/buffers.jsonl"
  timeout 60 $py scripts/profile_device_step.py --task sort --set num_cubes=3 --worlds $sort_worlds --device "$bench_device" \
      --steps $profile_steps --graph --out "$out/profile.jsonl"

  echo "== [$SECONDS s] 5. online learners: their device tests on $backend, then finetune / SAILOR env steps/s, device vs host"
  if $py -c "import pytest" 2>/dev/null; then
    ROBOLEARN_TEST_DEVICE_BACKEND="$backend" timeout 150 $py -m pytest -q -p no:cacheprovider tests/test_device_learners.py \
        > "$out/learners_tests.txt" 2>&1; tail -15 "$out/learners_tests.txt"
  else
    echo "no pytest here (stage it: ../shared/gpu/stage.sh pytest==9.0.3 pluggy==1.6.0 iniconfig==2.3.0): device learner tests not run"
  fi
  timeout 150 $py scripts/bench_learners.py --backend "$backend" --task push_cube --base $data/dp --demos $data/pc.zarr \
      --deadline-s 100 --commit "$commit" --out "$out/learners.jsonl" "${learners[@]}"

  echo "== [$SECONDS s] 6. WSRL's learners: seconds per update on $bench_device"
  timeout 60 $py scripts/bench_rl_updates.py --device "$bench_device" --deadline-s 40 --commit "$commit" \
      --out "$out/rl_updates.jsonl" "${rl_updates[@]}" | cut -c1-200

  l=$(( $(left) - 40 ))
  [ $l -lt 30 ] && l=30  # at least the first measurement
  echo "== [$SECONDS s] 7. benchmark push_t + sort (start no measurement after $l s)"
  timeout $(( l + 60 )) $py scripts/bench_gpu.py --device "$bench_device" --tasks push_t sort --deadline-s $l \
      --commit "$commit" --out "$out/bench.md" "${bench[@]}"
  echo "== done [$SECONDS s]"
} 2>&1 | tee "$out/log"
