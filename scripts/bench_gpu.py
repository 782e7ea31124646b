#!/usr/bin/env python3
"""GPU batched-simulation benchmark: one prepared run that writes docs/results/gpu.md.

For every task and world count (default 1k / 8k / 32k), env steps/s (control steps x worlds per
second, frame_skip physics substeps each) of the MuJoCo Warp DeviceVectorEnv with
  (a) random actions, (b) an MLP policy (2x256), (c) the Diffusion Policy (paper U-Net, DDIM 10,
      8 executed actions per chunk),
against MuJoCo C through `mujoco.rollout` on all of this machine's cores with the same MLP in
closed loop (one rollout call of frame_skip steps per control step), plus the framework overhead
of (b) against a raw MJWarp+MLP loop on the same scene (graph of frame_skip mjw.step, obs sliced
from qpos/sensordata, MLP output written straight into ctrl).

    python scripts/bench_gpu.py                       # CUDA machine: the full run, writes docs/results/gpu.md
    python scripts/bench_gpu.py --device cpu --worlds 16 64 --tasks push_cube --steps 5 --out /tmp/x.md
                                                      # Warp's CPU device: a smoke run of the same code
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robolearn.tasks.base import STATE_SPEC  # noqa: E402
from robolearn.tasks.device_env import DeviceVectorEnv  # noqa: E402
from robolearn.tasks.registry import build_model, load_task_config  # noqa: E402

TASK_OVERRIDES = {"push_cube": [], "pick_place": [], "push_t": [], "sort": ["num_cubes=3"]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mlp(obs_dim: int, act_dim: int, device) -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(obs_dim, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, act_dim), torch.nn.Tanh())
    return net.to(device).eval()


def diffusion_policy(obs_dim: int, act_dim: int, device):
    from robolearn.data.store import Feature
    from robolearn.policies import make_policy
    from robolearn.policies.diffusion.configuration import DiffusionConfig

    cfg = DiffusionConfig(num_inference_steps=10).with_features(
        {"obs/state": Feature("float32", (obs_dim,), "obs"), "action": Feature("float32", (act_dim,), "action")})

    def stats(d):
        z, o = np.zeros(d), np.ones(d)
        return {"min": -o, "max": o, "mean": z, "std": o, "q01": -o, "q99": o}

    torch.manual_seed(0)
    return make_policy("diffusion", cfg, {"obs/state": stats(obs_dim), "action": stats(act_dim)}).to(device).eval()


def bench_env(task: str, n: int, mode: str, steps: int, warmup: int, device: str, frame_skip: int | None) -> float:
    """Env steps/s of DeviceVectorEnv on MJWarp with actions from `mode`."""
    over = TASK_OVERRIDES[task] + ([f"frame_skip={frame_skip}"] if frame_skip else [])
    env = DeviceVectorEnv(task, n, backend="gpu" if device != "cpu" else "warp-cpu", overrides=over)
    env.set_episodes(list(range(min(n, 4096))), cycle=True)
    dev = env.device
    obs = env.reset()
    gen = torch.Generator(device=dev).manual_seed(0)
    if mode == "mlp":
        net = mlp(env.obs_dim, env.action_dim, dev)
        act = lambda o, h: net(o)  # noqa: E731
    elif mode == "diffusion":
        pol = diffusion_policy(env.obs_dim, env.action_dim, dev)
        act = lambda o, h: pol.select_action({"state": h})  # noqa: E731
    else:
        act = lambda o, h: torch.rand(n, env.action_dim, generator=gen, device=dev) * 2 - 1  # noqa: E731
    hist = obs[:, None].repeat(1, 2, 1)
    with torch.inference_mode():
        for i in range(warmup + steps):
            if i == warmup:
                sync(dev)
                t0 = time.perf_counter()
            a = act(obs, hist)
            obs, r, term, trunc, info = env.step(a)
            if mode == "diffusion":
                hist = torch.cat([hist[:, 1:], obs[:, None]], 1)
                hist = torch.where(info["done"][:, None, None], obs[:, None].expand_as(hist), hist)
                pol.reset(info["done"])
        sync(dev)
        dt = time.perf_counter() - t0
    env.check()
    env.close()
    return steps * n / dt


def bench_raw(task: str, n: int, steps: int, warmup: int, device: str, frame_skip: int | None) -> float:
    """Raw MJWarp + MLP: graph of frame_skip mjw.step, obs = [qpos, sensordata], no task logic."""
    import warp as wp
    import mujoco_warp as mjw

    from robolearn.tasks.warp_backend import buffer_sizes, resolve_device

    cfg = load_task_config(task, TASK_OVERRIDES[task])
    fs = frame_skip or cfg.frame_skip
    _, model = build_model(task, cfg)
    wdev = resolve_device("cuda" if device != "cpu" else "cpu")
    nconmax, njmax = buffer_sizes(model)
    with wp.ScopedDevice(wdev):
        m = mjw.put_model(model)
        m.opt.disableflags |= int(mjw.DisableBit.NATIVECCD)
        d = mjw.make_data(model, nworld=n, nconmax=nconmax, njmax=njmax)
        mjw.reset_data(m, d)
        mjw.step(m, d)
        with wp.ScopedCapture() as cap:
            for _ in range(fs):
                mjw.step(m, d)
    qpos, sens, ctrl = wp.to_torch(d.qpos), wp.to_torch(d.sensordata), wp.to_torch(d.ctrl)
    dev = qpos.device
    net = mlp(model.nq + model.nsensordata, model.nu, dev)
    lo = torch.as_tensor(model.actuator_ctrlrange[:, 0], device=dev, dtype=torch.float32)
    hi = torch.as_tensor(model.actuator_ctrlrange[:, 1], device=dev, dtype=torch.float32)
    with torch.inference_mode():
        for i in range(warmup + steps):
            if i == warmup:
                sync(dev)
                t0 = time.perf_counter()
            a = net(torch.cat([qpos, sens], 1))
            ctrl.copy_(lo + (a + 1) * 0.5 * (hi - lo))
            if dev.type == "cuda":  # order torch's stream and Warp's (device-side waits, as the backend does)
                ts, ws = wp.stream_from_torch(torch.cuda.current_stream(dev)), wp.get_stream(wdev)
                ws.wait_stream(ts)
                wp.capture_launch(cap.graph, stream=ws)
                ts.wait_stream(ws)
            else:
                wp.capture_launch(cap.graph)
        sync(dev)
        dt = time.perf_counter() - t0
    return steps * n / dt


_CPU_INIT: dict[tuple[str, int], np.ndarray] = {}


def bench_cpu_rollout(task: str, n: int, steps: int, threads: int, frame_skip: int | None, policy: bool) -> float:
    """MuJoCo C on `threads` cores via mujoco.rollout, closed loop (policy=True: MLP on CPU)."""
    import mujoco
    from mujoco import rollout

    cfg = load_task_config(task, TASK_OVERRIDES[task])
    fs = frame_skip or cfg.frame_skip
    cls, model = build_model(task, cfg)
    from robolearn.tasks.base import ModelLayout, SimState

    layout = ModelLayout(model)
    t = cls(cfg, layout)
    # rollout takes and returns mjSTATE_FULLPHYSICS states (time, qpos, qvel, act, ...).
    full = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
    key = (task, n)
    if key not in _CPU_INIT:  # sort samples rows one by one: ~9 s for 32k worlds, so draw once
        _CPU_INIT[key] = t.sample_init(torch.Generator().manual_seed(0), n).numpy()
    init = _CPU_INIT[key]
    d0 = mujoco.MjData(model)
    state = np.zeros((n, mujoco.mj_stateSize(model, full)))
    for i in range(n):
        mujoco.mj_setState(model, d0, init[i], STATE_SPEC)
        mujoco.mj_getState(model, d0, state[i], full)
    nq, nv = model.nq, model.nv
    datas = [mujoco.MjData(model) for _ in range(threads)]
    net = mlp(t.obs_dim, t.action_dim, "cpu")
    torch.set_num_threads(threads)
    sens = np.zeros((n, model.nsensordata))
    last_ctrl = torch.from_numpy(init[:, layout.state_slices["ctrl"]].copy())
    ctrl = np.zeros((n, fs, model.nu))
    gen = np.random.default_rng(0)
    with rollout.Rollout(nthread=threads) as r, torch.inference_mode():
        for i in range(steps + 1):  # the first step warms up threads and the MLP
            if i == 1:
                t0 = time.perf_counter()
            s = torch.from_numpy(state)
            sim = SimState(s[:, 1:1 + nq], s[:, 1 + nq:1 + nq + nv], last_ctrl, torch.from_numpy(sens))
            if policy:
                a = net(t.observe(sim).float()).double()
            else:
                a = torch.from_numpy(gen.uniform(-1, 1, (n, t.action_dim)))
            last_ctrl = t.action_to_ctrl(sim, a)
            ctrl[:] = last_ctrl.numpy()[:, None]
            st, sd = r.rollout(model, datas, state, ctrl, nstep=fs)
            state = np.ascontiguousarray(st[:, -1])
            sens = np.ascontiguousarray(sd[:, -1])
        dt = time.perf_counter() - t0
    return steps * n / dt


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.1f} k"


def report(args, rows: dict, notes: list[str], card: str, wdev: str, commit: str, done: bool) -> list[str]:
    import warp as wp
    import mujoco_warp as mjw

    fs = args.frame_skip or 25
    cmd = "python scripts/bench_gpu.py " + " ".join(sys.argv[1:])
    lines = [
        "# MuJoCo Warp batched simulation: benchmark", "",
        f"- card: **{card}** (Warp device `{wdev}`); CPU baseline: MuJoCo C via `mujoco.rollout`, {args.cpu_threads} threads "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        f"- date: {datetime.date.today().isoformat()}, commit {commit}; torch {torch.__version__}, warp {wp.__version__}, "
        f"mujoco_warp {mjw.__version__}; TF32 matmul/conv {'on' if args.tf32 else 'off'}",
        f"- command: `{cmd}`",
        f"- env steps/s = control steps x worlds / s; each control step is {fs} physics substeps; {args.steps} timed steps "
        f"after {args.warmup} warm-up steps (diffusion: {args.dp_steps} timed steps; CPU baseline: {args.cpu_steps} steps)",
    ]
    if not done:
        lines.append("- **partial**: the run stopped before every measurement was taken (see the notes)")
    lines += ["",
              "| task | worlds | random | MLP | diffusion (DDIM 10) | raw MJWarp+MLP | framework overhead | MuJoCo C random | MuJoCo C MLP | MLP speed-up vs C |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for (task, n) in sorted(rows, key=lambda k: (args.tasks.index(k[0]), k[1])):
        r = rows[(task, n)]
        over = f"{(r['raw'] / r['mlp'] - 1) * 100:.0f}%" if r.get("mlp") and r.get("raw") else "-"
        speed = f"{r['mlp'] / r['cpu_mlp']:.1f}x" if r.get("mlp") and r.get("cpu_mlp") else "-"
        lines.append(f"| {task} | {n} | {fmt(r.get('random'))} | {fmt(r.get('mlp'))} | {fmt(r.get('diffusion'))} | "
                     f"{fmt(r.get('raw'))} | {over} | {fmt(r.get('cpu_random'))} | {fmt(r.get('cpu_mlp'))} | {speed} |")
    lines += ["", "Goals: >= 10x the MuJoCo C figure for MLP-policy evaluation at >= 16k worlds; <= 20% overhead over the raw loop.",
              "Framework overhead = raw / framework - 1 (task obs/reward/success/stage/failure functions, autoreset, "
              "overflow and NaN accumulation)."]
    lines += [f"- note: {n}" for n in notes]
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the real run) or cpu (Warp CPU smoke run)")
    p.add_argument("--tasks", nargs="+", default=list(TASK_OVERRIDES))
    p.add_argument("--worlds", nargs="+", type=int, default=[32768, 8192, 1024],
                   help="world counts, measured in this order (for every task before the next count)")
    p.add_argument("--steps", type=int, default=50, help="timed control steps per measurement")
    p.add_argument("--dp-steps", type=int, default=24, help="timed control steps of the diffusion policy (8 per chunk)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--frame-skip", type=int, default=None, help="override the tasks' frame_skip (25)")
    p.add_argument("--cpu-threads", type=int, default=os.cpu_count())
    p.add_argument("--cpu-steps", type=int, default=10, help="timed control steps of the MuJoCo C baseline")
    p.add_argument("--cpu-modes", nargs="*", default=["random", "mlp"], help="MuJoCo C baselines to run")
    p.add_argument("--modes", nargs="+", default=["random", "mlp", "diffusion"])
    p.add_argument("--deadline-s", type=float, default=None,
                   help="start no measurement after this many seconds (the table says what was skipped)")
    p.add_argument("--no-tf32", dest="tf32", action="store_false", help="keep fp32 matmuls/convs exact")
    p.add_argument("--commit", default="", help="commit to record (default: git rev-parse HEAD)")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "gpu.md"))
    args = p.parse_args()
    t_start = time.perf_counter()

    import warp as wp

    from robolearn.tasks.warp_backend import resolve_device

    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    wdev = resolve_device("cuda" if args.device != "cpu" else "cpu")
    card = torch.cuda.get_device_name(0) if args.device != "cpu" else f"Warp CPU device ({platform.processor() or platform.machine()})"
    print(f"card: {card}; warp {wp.__version__} device {wdev}", flush=True)
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                           text=True).stdout.strip()
    rows: dict[tuple[str, int], dict] = {}
    notes: list[str] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(done: bool) -> None:
        out.write_text("\n".join(report(args, rows, notes, card, wdev, commit, done)) + "\n")
        out.with_suffix(".json").write_text(json.dumps(
            [{"task": t, "worlds": n, **r} for (t, n), r in rows.items()], indent=1) + "\n")

    jobs = [(n, task, mode) for n in args.worlds for task in args.tasks
            for mode in [*args.modes, "raw", *(f"cpu_{m}" for m in args.cpu_modes)]]
    for n, task, mode in jobs:
        row = rows.setdefault((task, n), {})
        elapsed = time.perf_counter() - t_start
        if args.deadline_s is not None and elapsed > args.deadline_s:
            notes.append(f"{task} {n} {mode}: skipped (deadline of {args.deadline_s:.0f} s reached)")
            continue
        t0 = time.perf_counter()
        try:
            if mode == "raw":
                row[mode] = bench_raw(task, n, args.steps, args.warmup, args.device, args.frame_skip)
            elif mode.startswith("cpu_"):
                row[mode] = bench_cpu_rollout(task, n, args.cpu_steps, args.cpu_threads, args.frame_skip, mode == "cpu_mlp")
            else:
                steps = args.dp_steps if mode == "diffusion" else args.steps
                row[mode] = bench_env(task, n, mode, steps, args.warmup, args.device, args.frame_skip)
        except Exception as e:  # one failed measurement must not lose the others
            if isinstance(e, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            traceback.print_exc()
            notes.append(f"{task} {n} {mode}: failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
        print(f"[{time.perf_counter() - t_start:6.1f} s] {task} {n} {mode}: {fmt(row.get(mode))} env steps/s "
              f"({time.perf_counter() - t0:.1f} s incl. setup)", flush=True)
        save(False)
    complete = not any("skipped" in n for n in notes)
    save(complete)
    print("\n".join(report(args, rows, notes, card, wdev, commit, complete)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
