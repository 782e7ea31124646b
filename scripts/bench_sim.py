"""Simulation throughput: robolearn envs vs a raw mj_step loop on the same MJCF.

For each task: control steps/s of
  raw      - `mj_step(m, d, nstep=frame_skip)` + writing ctrl, nothing else (the floor), replaying
             exactly the ctrl sequence the single env applied, from the same start state,
  single   - TaskEnv.step with state obs (action -> ctrl, physics, sensors refresh, obs, reward,
             success, stage, failure detection, sim_state in info),
  vector   - TaskVectorEnv.step with N envs (env-steps/s = N x calls/s),
  image    - TaskEnv.step with state + 84x84 RGB obs (EGL).
Overhead = single-env time / raw time per step, measured in --rounds interleaved rounds (env run,
then raw run of the same steps, in the same process) and reported as the median over rounds, so
that load from other processes hits both sides alike; the rates are medians over rounds too.
Random uniform actions (seeded); no termination.

    python scripts/bench_sim.py [--steps 2000] [--rounds 5] [--num-envs 16] [--tasks push_cube,...] [--seed 0]
    python scripts/bench_sim.py --expert-seeds 50     # scripted expert success table instead
    python scripts/bench_sim.py --push-t-coverage docs/results/gpu/push_t_host_coverage.jsonl --rounds 9
                                                      # push_t: exact vs grid coverage vs raw, interleaved
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import robolearn.tasks as T  # noqa: E402
from robolearn.tasks.registry import build_model  # noqa: E402


def bench_env(name: str, steps: int, seed: int, **overrides) -> float:
    """Steps/s of TaskEnv.step (one run)."""
    env = T.make_env(name, terminate_on_success=False, horizon=10**9, **overrides)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (steps + 20, env.action_space.shape[0])).astype(np.float32)
    for a in actions[:20]:  # warm-up (torch dispatch, renderer context)
        env.step(a)
    t0 = time.perf_counter()
    for a in actions[20:]:
        env.step(a)
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def bench_single_vs_raw(name: str, steps: int, seed: int, rounds: int) -> tuple[float, float, float, float]:
    """(raw steps/s, single-env steps/s, overhead by wall time, overhead by process CPU time):
    medians over interleaved rounds.

    The raw loop replays exactly the ctrl sequence the env applied, from the same start state, in
    a bare `mj_step(m, d, nstep=frame_skip)` loop (the floor). CPU time (`time.process_time`,
    single-threaded here) leaves out the time this process waits for a core on a shared box."""
    env = T.make_env(name, terminate_on_success=False, horizon=10**9)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (steps + 20, env.action_space.shape[0])).astype(np.float32)
    for a in actions[:20]:  # warm-up (dispatch, caches)
        env.step(a)
    start = env.get_sim_state()
    data = env.unwrapped.sim.backend.datas[0]
    ctrls = []
    for a in actions[20:]:  # record the ctrl the env applied at each step (not timed)
        env.step(a)
        ctrls.append(data.ctrl.copy())
    cfg = env.unwrapped.cfg
    _, model = build_model(name, cfg)
    raw_data = mujoco.MjData(model)
    t_env, t_raw, c_env, c_raw = [], [], [], []
    for _ in range(rounds):
        env.set_sim_state(start)
        t0, c0 = time.perf_counter(), time.process_time()
        for a in actions[20:]:
            env.step(a)
        t_env.append(time.perf_counter() - t0)
        c_env.append(time.process_time() - c0)
        mujoco.mj_setState(model, raw_data, start, T.STATE_SPEC)
        mujoco.mj_forward(model, raw_data)
        t0, c0 = time.perf_counter(), time.process_time()
        for c in ctrls:
            raw_data.ctrl[:] = c
            mujoco.mj_step(model, raw_data, nstep=cfg.frame_skip)
        t_raw.append(time.perf_counter() - t0)
        c_raw.append(time.process_time() - c0)
    env.close()
    t_env, t_raw, c_env, c_raw = map(np.array, (t_env, t_raw, c_env, c_raw))
    return (steps / np.median(t_raw), steps / np.median(t_env), float(np.median(t_env / t_raw)),
            float(np.median(c_env / c_raw)))


def bench_push_t_coverage(steps: int, seed: int, rounds: int) -> dict:
    """push_t single env with the exact-area coverage (robolearn.tasks.t_coverage, what the task
    uses) against the same env with the 2 mm grid coverage it replaced (push_t.coverage patched
    back in), and the raw mj_step loop: the three interleaved in every round (order rotated),
    the same actions from the same start state; medians of per-round time ratios (wall and CPU)."""
    from robolearn.tasks import push_t

    env = T.make_env("push_t", terminate_on_success=False, horizon=10**9)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (steps + 20, env.action_space.shape[0])).astype(np.float32)
    for a in actions[:20]:
        env.step(a)
    start = env.get_sim_state()
    data = env.unwrapped.sim.backend.datas[0]
    ctrls = []
    for a in actions[20:]:
        env.step(a)
        ctrls.append(data.ctrl.copy())
    cfg = env.unwrapped.cfg
    _, model = build_model("push_t", cfg)
    raw_data = mujoco.MjData(model)
    cls = type(env.unwrapped.sim.task)
    exact = cls.coverage

    def grid(self, s, frames=None):
        b, g, cs_b, cs_g, points = self.frames(s) if frames is None else frames
        return push_t.coverage(b, g, cs_b, cs_g, points)

    def run(variant):
        if variant == "raw":
            mujoco.mj_setState(model, raw_data, start, T.STATE_SPEC)
            mujoco.mj_forward(model, raw_data)
            t0, c0 = time.perf_counter(), time.process_time()
            for c in ctrls:
                raw_data.ctrl[:] = c
                mujoco.mj_step(model, raw_data, nstep=cfg.frame_skip)
            return time.perf_counter() - t0, time.process_time() - c0
        cls.coverage = exact if variant == "exact" else grid
        env.set_sim_state(start)
        t0, c0 = time.perf_counter(), time.process_time()
        for a in actions[20:]:
            env.step(a)
        return time.perf_counter() - t0, time.process_time() - c0

    order = ["exact", "grid", "raw"]
    times: dict[str, list] = {k: [] for k in order}
    try:
        for r in range(rounds):
            for variant in order[r % 3:] + order[:r % 3]:
                times[variant].append(run(variant))
    finally:
        cls.coverage = exact
        env.close()
    w = {k: np.array([t[0] for t in v]) for k, v in times.items()}
    c = {k: np.array([t[1] for t in v]) for k, v in times.items()}
    return {"task": "push_t", "steps": steps, "rounds": rounds, "seed": seed,
            "steps_per_s": {k: float(steps / np.median(v)) for k, v in w.items()},
            "overhead_wall": {k: float(np.median(w[k] / w["raw"])) for k in ("exact", "grid")},
            "overhead_cpu": {k: float(np.median(c[k] / c["raw"])) for k in ("exact", "grid")},
            "exact_over_grid_wall": float(np.median(w["exact"] / w["grid"])),
            "exact_over_grid_cpu": float(np.median(c["exact"] / c["grid"]))}


def bench_vector(name: str, steps: int, num_envs: int, seed: int, num_threads: int = 1) -> float:
    venv = T.make_vector_env(name, num_envs, num_threads=num_threads, terminate_on_success=False, horizon=10**9)
    venv.reset(seed=seed)
    rng = np.random.default_rng(seed)
    calls = max(10, steps // num_envs)
    actions = rng.uniform(-1, 1, (calls, num_envs, venv.single_action_space.shape[0])).astype(np.float32)
    for a in actions[:5]:
        venv.step(a)
    t0 = time.perf_counter()
    for a in actions:
        venv.step(a)
    rate = calls * num_envs / (time.perf_counter() - t0)
    venv.close()
    return rate


def expert_success(name: str, seeds: list[int], noise: float, perturb_rate: float) -> np.ndarray:
    """Per-episode success of the scripted expert, one batched env per seed."""
    from robolearn.tasks.sim import TaskSim

    sim = TaskSim(name, num_envs=len(seeds), perturb_rate=perturb_rate)
    expert = T.make_expert(sim, noise=noise, seed=0)
    sim.reset(seeds=seeds)
    done = np.zeros(len(seeds), bool)
    success = np.zeros(len(seeds), bool)
    for _ in range(sim.cfg.horizon):
        action, _ = expert.act(sim.read())
        _, _, term, trunc, info = sim.step(action.numpy())
        success |= ~done & info["success"]
        done |= term | trunc
        if done.all():
            break
    return success


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--image-steps", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved env/raw rounds (median)")
    ap.add_argument("--num-envs", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="threads of the vector env's CPU backend")
    ap.add_argument("--tasks", default="push_cube,pick_place,push_t,sort")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--expert-seeds", type=int, default=0,
                    help="instead of throughput, measure expert success over seeds 0..N-1")
    ap.add_argument("--push-t-coverage", default=None, metavar="JSON",
                    help="instead: push_t single-env step time with the exact vs the grid coverage vs raw "
                         "(interleaved), one JSON record appended to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.push_t_coverage:
        import json
        import subprocess

        rec = bench_push_t_coverage(args.steps, args.seed, args.rounds)
        rec.update(load_average=list(os.getloadavg()), cpus=os.cpu_count(), mujoco=mujoco.__version__,
                   date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   commit=subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                         text=True).stdout.strip())
        with open(args.push_t_coverage, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec, indent=1))
        return
    if args.expert_seeds:
        print("| task | action noise (std) | perturb_rate / step | success |\n|---|---|---|---|")
        for name in args.tasks.split(","):
            for noise, rate in ((0.0, 0.0), (0.1, 0.0), (0.0, 0.02)):
                s = expert_success(name, list(range(args.expert_seeds)), noise, rate)
                print(f"| {name} | {noise} | {rate} | {s.mean():.2f} ({s.sum()}/{len(s)}) |", flush=True)
        return
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, mujoco {mujoco.__version__}, "
          f"torch {torch.__version__}, steps={args.steps}, rounds={args.rounds}, seed={args.seed}, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| task | frame_skip | raw mj_step loop (steps/s) | single env, state (steps/s) | overhead (wall) | "
          f"overhead (CPU time) | vector env N={args.num_envs}, state (env-steps/s) | vector overhead | "
          "single env, state+image 84x84 (steps/s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.tasks.split(","):
        raw, single, overhead, overhead_cpu = bench_single_vs_raw(name, args.steps, args.seed, args.rounds)
        vec = bench_vector(name, args.steps * 2, args.num_envs, args.seed, args.threads)
        img = bench_env(name, args.image_steps, args.seed, obs_mode="state+image") if args.image_steps else float("nan")
        fs = T.load_task_config(name).frame_skip
        print(f"| {name} | {fs} | {raw:.0f} | {single:.0f} | {overhead:.2f}x | {overhead_cpu:.2f}x | {vec:.0f} | "
              f"{raw / vec:.2f}x | {img:.0f} |", flush=True)


if __name__ == "__main__":
    main()
