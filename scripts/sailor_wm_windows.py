"""Per-window world-model error of a SAILOR run on its held-out demo windows (the readiness check,
window by window): which windows drive the mean. Usage: cp -r RUN /tmp/copy; rm -rf /tmp/copy/policy;
python scripts/sailor_wm_windows.py /tmp/copy > out.txt (the trainer reopens the copy's replay for append)."""

import json
import sys

import numpy as np
import torch

from robolearn.config import load_config
from robolearn.sailor.configuration import SailorRunConfig
from robolearn.sailor.loop import SailorTrainer

run = sys.argv[1]
info = json.load(open(f"{run}/run.json"))
cfg = load_config(SailorRunConfig, f"{run}/config.yaml", [])
tr = SailorTrainer(cfg, info["base"], info["demos"], info["task"], info["env_steps"], run, perturb=info.get("perturb"),
                   task_overrides=info.get("task_overrides"), wandb_mode="off", progress=False, resume=True)
print("heldout episodes", len(tr.heldout), [len(e.state) for e in tr.heldout])
_, _, states, prev = tr.check_windows()
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
