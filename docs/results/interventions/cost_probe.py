"""Cost probe for issue 19's plan (run once, 2026-12-05, 2-core CPU at load ~8.5): collect 100 sort
K=3 demos, train the object-centric hierarchical policy 300 steps and a small flat diffusion policy
(down_dims [64,128,256], horizon 16) 100 steps at batch 256, evaluate each on a few episodes.
Writes OUT/cost.json (OUT = first argument, default /tmp/rac_cost); cost_probe.json is its output.

    OMP_NUM_THREADS=1 python docs/results/interventions/cost_probe.py /tmp/rac_cost
"""
import time, json, sys
from pathlib import Path
import torch; torch.set_num_threads(1)
from robolearn.tasks.collect import collect
from robolearn.training import train
from robolearn.evaluation import evaluate_policy, load_any_policy
out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/rac_cost"); out.mkdir(parents=True, exist_ok=True); res = {}
t = time.perf_counter()
collect("sort", episodes=100, out=out/"d.zarr", num_envs=10, seed=0, expert_mode=0, overrides=["num_cubes=3", "obs_relative=true"], progress=False)
res["collect_100_s"] = time.perf_counter() - t; print(res, flush=True)
ov = ["policy.object_centric=true", "policy.stage_obs_others=true", "policy.stage_sliced_heads=true", "policy.requery_on_stage_change=true",
      "policy.max_primitive_steps=40", "policy.stage_head=first_not_done", "train.steps=300", "train.val_ratio=0.0", "train.eval_episodes=0",
      "train.device=cpu", "train.num_workers=0", "train.save_every=300", "train.log_every=100"]
t = time.perf_counter()
run = train("hierarchical", out/"d.zarr", task="sort", out=out/"h", wandb_mode="off", progress=False, overrides=ov)
res["train_hier_300_s"] = time.perf_counter() - t; print(res, flush=True)
p, _ = load_any_policy(run/"policy")
t = time.perf_counter()
r = evaluate_policy(p, "sort", 20, seed=5_000_000, num_envs=10, perturb=0.05, progress=False, task_overrides=["num_cubes=3", "obs_relative=true"])
res["eval_hier_20_s"] = time.perf_counter() - t; res["sr"] = r["success_rate"]; res["rec"] = r["recoveries_per_episode"]; print(res, flush=True)
ovd = ["policy.down_dims=[64,128,256]", "policy.horizon=16", "policy.n_action_steps=8", "train.steps=100", "train.val_ratio=0.0", "train.eval_episodes=0", "train.device=cpu", "train.num_workers=0", "train.save_every=100", "train.log_every=50"]
t = time.perf_counter()
run = train("diffusion", out/"d.zarr", task="sort", out=out/"dp", wandb_mode="off", progress=False, overrides=ovd)
res["train_diff_small_100_s"] = time.perf_counter() - t; print(res, flush=True)
p, _ = load_any_policy(run/"policy")
t = time.perf_counter()
r = evaluate_policy(p, "sort", 10, seed=5_000_000, num_envs=10, perturb=0.05, progress=False, task_overrides=["num_cubes=3", "obs_relative=true"])
res["eval_diff_10_s"] = time.perf_counter() - t; print(res, flush=True)
json.dump(res, open(out/"cost.json","w"))
