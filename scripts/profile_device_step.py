"""Where a device env step's time goes: MuJoCo Warp stages (collision, constraints, solver,
sensors, ...) and the framework's parts (action -> ctrl, task evaluate / observe, masked reset,
state copies), on Warp's CPU device (or CUDA).

The physics is run ungraphed so that MuJoCo Warp's own `event_scope` tracer sees every stage. On
the CPU device Warp launches kernels synchronously, so the tracer's events are replaced by host
clock stamps (exact there); on CUDA the tracer's CUDA events are used as they are. Random actions
(seeded), the episode seeds' initial states, the DeviceVectorEnv step split into its parts.

    python scripts/profile_device_step.py --task sort --set num_cubes=3 --worlds 64 --steps 20 \
        --out docs/results/gpu/profile_warp_cpu.jsonl          # one JSON record appended per run
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict

import torch


def _host_events(wp) -> None:
    """Host-clock stand-ins for wp.Event / record_event / get_event_elapsed_time (CPU device)."""

    class HostEvent:
        def __init__(self, *args, **kwargs):
            self.t = 0.0

    def record_event(ev, *args, **kwargs):
        ev.t = time.perf_counter()

    wp.Event = HostEvent
    wp.record_event = record_event
    wp.get_event_elapsed_time = lambda beg, end, *a, **k: (end.t - beg.t) * 1e3


def _flatten(trace: dict, prefix: str = "", out: dict | None = None) -> dict:
    out = {} if out is None else out
    for name, (events, sub) in trace.items():
        key = f"{prefix}{name}"
        out[key] = out.get(key, 0.0) + float(sum(events))
        _flatten(sub, key + "/", out)
    return out


def compare_buffers(task: str, overrides: list[str], worlds: int, steps: int, rounds: int, device: str,
                    seed: int, tight: tuple[int, int] | None, solver: str | None = None) -> dict:
    """Graphed control steps with the default contact / constraint buffers (buffer_sizes) and the
    task's solver against a variant: `tight` (nconmax, njmax) buffers and/or another `solver` (cg,
    newton); interleaved rounds from the same initial states and random actions; medians of
    seconds per control step. Both backends raise on overflow, so a finished run also shows the
    tight buffers held; max_qpos_diff: how far the variant's trajectory moved (solver change)."""
    from robolearn.tasks.registry import build_model, load_task_config
    from robolearn.tasks.warp_backend import MujocoWarpBackend

    import mujoco

    cfg = load_task_config(task, overrides)
    cls, model = build_model(task, cfg)
    variant = build_model(task, cfg)[1]
    if solver:
        variant.opt.solver = {"cg": mujoco.mjtSolver.mjSOL_CG, "newton": mujoco.mjtSolver.mjSOL_NEWTON}[solver]
    kinds = {"default": {}, "variant": {"nconmax": tight[0], "njmax": tight[1]} if tight else {}}
    backends = {"default": MujocoWarpBackend(model, worlds, device=device),
                "variant": MujocoWarpBackend(variant, worlds, device=device, **kinds["variant"])}
    t = cls(cfg, backends["default"].layout)
    gen = torch.Generator().manual_seed(seed)
    init = torch.cat([t.sample_init(torch.Generator().manual_seed(seed + i), 1) for i in range(worlds)])
    actions = [torch.rand(worlds, t.action_dim, generator=gen) * 2 - 1 for _ in range(steps)]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    max_nefc = {k: 0 for k in kinds}
    for r in range(rounds + 1):  # round 0: capture and warm-up
        for k in (list(kinds) if r % 2 == 0 else list(kinds)[::-1]):
            be = backends[k]
            be.reset(torch.ones(worlds, dtype=torch.bool), init)
            t0 = time.perf_counter()
            for a in actions:
                be.set_ctrl(t.action_to_ctrl(be.read(), a.to(be.device)))
                be.step(cfg.frame_skip)
            be.check()
            if be.is_cuda:
                torch.cuda.synchronize()
            if r:
                times[k].append((time.perf_counter() - t0) / steps)
            max_nefc[k] = max(max_nefc[k], be.contact_stats()["max_nefc"])
        qpos_diff = float((backends["variant"].read().qpos - backends["default"].read().qpos).abs().max())
    import numpy as np

    out = {"task": task, "overrides": overrides, "worlds": worlds, "steps": steps, "rounds": rounds, "device": device,
           "buffers": {k: {"nconmax": backends[k].nconmax, "njmax": backends[k].njmax} for k in kinds},
           "variant_solver": solver or "task's", "max_qpos_diff": qpos_diff,
           "s_per_step": {k: float(np.median(v)) for k, v in times.items()},
           "variant_over_default": float(np.median(np.array(times["variant"]) / np.array(times["default"]))),
           "max_nefc_seen": max_nefc, "load_average": list(os.getloadavg()),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for be in backends.values():
        be.close()
    return out


GRAPHED_STAGES = ("kinematics", "crb", "factor_m", "collision", "make_constraint", "transmission", "sensor_pos",
                  "fwd_velocity", "fwd_actuation", "fwd_acceleration", "solve", "implicit")


def graphed_stages(be, reps: int) -> dict[str, float]:
    """ms per call of MuJoCo Warp's forward stages, each captured in its own graph and replayed
    `reps` times on the current (consistent, post-step) data, median of the replays: where the
    graphed physics' compute goes, without Python launch overhead. A control step runs each of
    these once per substep."""
    wp, mjw = be.wp, be.mjw
    out = {}
    with wp.ScopedDevice(be.wp_device):
        for name in GRAPHED_STAGES:
            fn = getattr(mjw, name)
            with wp.ScopedCapture(device=be.wp_device) as cap:
                fn(be.m, be.d)
            wp.capture_launch(cap.graph)  # warm
            wp.synchronize_device(be.wp_device)
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                wp.capture_launch(cap.graph)
                wp.synchronize_device(be.wp_device)
                ts.append((time.perf_counter() - t0) * 1e3)
            out[name] = sorted(ts)[len(ts) // 2]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="sort")
    ap.add_argument("--set", nargs="*", default=[], help="task config overrides KEY=VALUE")
    ap.add_argument("--worlds", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="Warp device: cpu or cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nconmax", type=int, default=None, help="contacts per world (default: buffer_sizes)")
    ap.add_argument("--njmax", type=int, default=None, help="constraint rows per world (default: buffer_sizes)")
    ap.add_argument("--out", default=None, help="write the JSON record here")
    ap.add_argument("--compare-buffers", nargs=2, type=int, default=None, metavar=("NCONMAX", "NJMAX"),
                    help="instead: graphed steps with the default buffers vs these, interleaved (--rounds)")
    ap.add_argument("--compare-solver", choices=["cg", "newton"], default=None,
                    help="instead: graphed steps with the task's solver vs this one, interleaved (--rounds)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--graph", action="store_true",
                    help="physics and reset as captured graphs (real speed; no per-stage physics trace)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.compare_buffers or args.compare_solver:
        rec = compare_buffers(args.task, list(args.set), args.worlds, args.steps, args.rounds, args.device, args.seed,
                              tuple(args.compare_buffers) if args.compare_buffers else None, args.compare_solver)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec, indent=1))
        return

    from robolearn.tasks.device_env import DeviceVectorEnv
    from robolearn.tasks.warp_backend import import_warp

    wp, mjw = import_warp()
    from mujoco_warp._src import warp_util

    if args.device == "cpu":
        _host_events(wp)
    kind = "warp-cpu" if args.device == "cpu" else "gpu"
    env = DeviceVectorEnv(args.task, args.worlds, backend=kind, overrides=list(args.set), use_graph=args.graph,
                          nconmax=args.nconmax, njmax=args.njmax)
    be, task, cfg = env.backend, env.task, env.cfg
    env.set_episodes(list(range(args.seed, args.seed + args.worlds)), cycle=True)
    env.reset()
    gen = torch.Generator().manual_seed(args.seed)
    sync = (lambda: torch.cuda.synchronize()) if be.is_cuda else (lambda: None)
    parts: dict[str, list[float]] = defaultdict(list)  # per step: medians resist preemption on a shared box
    physics: dict[str, float] = defaultdict(float)
    iters: dict[str, float] = defaultdict(float)  # solver iterations of the last substep, over worlds

    def timed(name, fn, *a):
        sync()
        t0 = time.perf_counter()
        out = fn(*a)
        sync()
        parts[name].append((time.perf_counter() - t0) * 1e3)
        return out

    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            parts.clear()
            physics.clear()
            iters.clear()
        a = (torch.rand(args.worlds, env.action_dim, generator=gen) * 2 - 1).to(env.device)
        s = be.read()
        ctrl = timed("action_to_ctrl", task.action_to_ctrl, s, a)
        timed("set_ctrl", be.set_ctrl, ctrl)
        with warp_util.EventTracer() as tracer:
            timed("physics (frame_skip substeps)", be.step, cfg.frame_skip)
            trace = tracer.trace()
        for k, v in _flatten(trace).items():
            physics[k] += v
        s = be.read()
        success, reward, stage, events = timed("task.evaluate", task.evaluate, env._prev, s)
        done = torch.zeros(args.worlds, dtype=torch.bool, device=env.device)
        with warp_util.EventTracer() as tracer:
            timed("masked reset (replayed every step)", env._reset_where, done, env._pool[:args.worlds])
            rtrace = tracer.trace()
        for k, v in _flatten(rtrace).items():
            physics["reset/" + k] += v
        timed("clone previous state", lambda: env._prev.__class__(*(x.clone() for x in be.read())))
        timed("task.observe", env.observe)
        niter = wp.to_torch(be.d.solver_niter).to(torch.float64)
        iters["max"] += float(niter.max())
        iters["mean"] += float(niter.mean())
        iters["p99"] += float(niter.quantile(0.99))
    n = args.steps
    import statistics

    med = {k: statistics.median(v) for k, v in parts.items()}
    total = sum(med.values())
    stages = graphed_stages(be, max(3, args.steps)) if args.graph else {}
    rec = {"task": args.task, "overrides": args.set, "worlds": args.worlds, "steps": n, "device": args.device,
           "graph": args.graph,
           "frame_skip": cfg.frame_skip, "nconmax": be.nconmax, "njmax": be.njmax,
           "contacts": be.contact_stats(),
           "solver_iterations_last_substep": {k: v / args.steps for k, v in iters.items()},
           "ms_per_step": {k: v for k, v in sorted(med.items(), key=lambda kv: -kv[1])},  # median over steps
           "share": {k: v / total for k, v in sorted(med.items(), key=lambda kv: -kv[1])},
           "physics_ms_per_step": {k: v / n for k, v in sorted(physics.items(), key=lambda kv: -kv[1])},
           "graphed_stage_ms_per_call": stages,
           "load_average": list(os.getloadavg()), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    env.close()
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
    print(json.dumps({k: rec[k] for k in ("task", "worlds", "contacts", "solver_iterations_last_substep", "ms_per_step",
                                          "share")}, indent=1))
    top = list(rec["physics_ms_per_step"].items())
    print("physics stages (ms per control step, nested names):")
    for k, v in top[:40]:
        print(f"  {v:9.2f}  {k}")


if __name__ == "__main__":
    main()
