"""Per-window world-model error of a SAILOR run on its held-out demo windows (the readiness check,
window by window): which windows drive the mean. Usage: cp -r RUN /tmp/copy; rm -rf /tmp/copy/policy;
python scripts/sailor_wm_windows.py /tmp/copy [train] > out.txt (the trainer reopens the copy's replay for
append). With `train`, the same check on windows of the demos the world model trained on: a model that is
good there and bad on the held-out ones has overfitted its demos."""

import json
import sys

import numpy as np
import torch

from robolearn.config import load_config
from robolearn.sailor.configuration import SailorRunConfig
from robolearn.sailor.loop import SailorTrainer

run = sys.argv[1]
split = sys.argv[2] if len(sys.argv) > 2 else None
if split not in (None, "train", "heldout"):
    sys.exit(f"error: split must be 'train' or 'heldout', got {split!r}")
info = json.load(open(f"{run}/run.json"))
cfg = load_config(SailorRunConfig, f"{run}/config.yaml", [])
tr = SailorTrainer(cfg, info["base"], info["demos"], info["task"], info["env_steps"], run, perturb=info.get("perturb"),
                   task_overrides=info.get("task_overrides"), wandb_mode="off", progress=False, resume=True)
split, eps, states, prev = tr.check_windows(split)
print(split, "episodes", len(eps), [len(e.state) for e in eps], "windows", len(states))
tr.agent.eval()
device = tr.agent.device
per_model, per_const = tr.agent.world_model.open_loop_error(
    tr._normalize_multi(torch.as_tensor(states, device=device)), torch.as_tensor(prev, device=device),
    tr.loop.ready_context, tr.acfg.planner.horizon, per_window=True)
m_k, c_k = per_model.cpu().numpy(), per_const.cpu().numpy()
for i in range(len(m_k)):
    print(i, "model mean %.3f const mean %.3f" % (m_k[i].mean(), c_k[i].mean()), m_k[i].round(3).tolist())
m, c = m_k.mean(axis=1), c_k.mean(axis=1)
keep = np.argsort(m)[:-2]
print("ratio all", m.mean() / c.mean(), "ratio without worst 2", m[keep].mean() / c[keep].mean())
