"""Backend parity: run one task on MuJoCo C and on another backend from identical states and actions.

Used by the CPU-device tests (tests/test_warp_backend.py) and by the CUDA checks
(scripts/backend_parity.py, run by scripts/gpu_checks.sh), so both measure the same thing: per-world maximum distance of the gripper
and every object from MuJoCo C over `steps` control steps of the noisy scripted expert (whose
actions are computed from the MuJoCo C state and applied to both), and how often success and reward
agree.
"""

from __future__ import annotations

from typing import Any

import torch

from robolearn.tasks.backend import MujocoCBackend
from robolearn.tasks.base import SimState, Task


def tracked_positions(task: Task, s: SimState) -> torch.Tensor:
    """(N, 1 + objects, 3) float64 host positions: the gripper, then every object sensor."""
    names = [k for k in task.layout.sensor if k.endswith("_pos") and not k.startswith(("goal", "bin", "grip"))]
    return torch.stack([task.grip_pos(s)] + [task.sensor(s, k) for k in names], 1).double().cpu()


def compare_with_mujoco_c(name: str, other: Any, num_envs: int = 16, steps: int = 50, seed: int = 1,
                          noise: float = 0.1, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run `name` on MuJoCo C and on `other` (a backend kind such as "warp-cpu"/"gpu", or a backend).

    Returns max_dev (N,) in metres, success_agree and reward_agree (fractions of env steps; reward
    within 0.05), and the number of worlds within 1 mm.
    """
    from robolearn.tasks.registry import build_model, expert_class, load_task_config
    from robolearn.tasks.warp_backend import make_backend

    cfg = load_task_config(name, list(overrides or []))
    cls, model = build_model(name, cfg)
    cb = MujocoCBackend(model, num_envs)
    ob = make_backend(other, model, num_envs) if isinstance(other, str) else other
    task = cls(cfg, cb.layout)
    init = task.sample_init(torch.Generator().manual_seed(seed), num_envs)
    mask = torch.ones(num_envs, dtype=torch.bool)
    cb.reset(mask, init)
    ob.reset(mask, init)
    expert = expert_class(name)(task, num_envs, noise=noise, seed=0)
    max_dev = torch.zeros(num_envs, dtype=torch.float64)
    success_agree = reward_agree = 0
    for _ in range(steps):
        action, _ = expert.act(cb.read())  # identical actions on both backends
        cb.set_ctrl(task.action_to_ctrl(cb.read(), action.double()))
        ob.set_ctrl(task.action_to_ctrl(ob.read(), action.to(ob.device).double()))
        cb.step(cfg.frame_skip)
        ob.step(cfg.frame_skip)
        sc, so = cb.read(), ob.read()
        dev = (tracked_positions(task, sc) - tracked_positions(task, so)).norm(dim=-1).max(1).values
        max_dev = torch.maximum(max_dev, dev)
        success_agree += int((task.success(sc) == task.success(so).cpu()).sum())
        reward_agree += int(((task.reward(sc) - task.reward(so).cpu()).abs() <= 0.05).sum())
    check = getattr(ob, "check", None)
    if check:
        check("parity")
    total = steps * num_envs
    return {"max_dev": max_dev, "within_1mm": int((max_dev <= 1e-3).sum()), "num_envs": num_envs, "steps": steps,
            "success_agree": success_agree / total, "reward_agree": reward_agree / total}
