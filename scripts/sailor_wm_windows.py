"""Per-window world-model error of a SAILOR run on its held-out demo windows (the readiness check,
window by window): which windows drive the mean. Usage: cp -r RUN /tmp/copy; rm -rf /tmp/copy/policy;
python scripts/sailor_wm_windows.py /tmp/copy > out.txt"""
import json, sys, numpy as np, torch
from robolearn.config import load_config
from robolearn.sailor.configuration import SailorRunConfig
from robolearn.sailor.loop import SailorTrainer
from robolearn.sailor.diagnostics import windows_for_check
run = sys.argv[1]  # a COPY of a SAILOR run directory without policy/ (the trainer reopens its replay for append)
info = json.load(open(f"{run}/run.json"))
cfg = load_config(SailorRunConfig, f"{run}/config.yaml", [])
tr = SailorTrainer(cfg, info["base"], info["demos"], info["task"], info["env_steps"], run, perturb=info.get("perturb"),
                   task_overrides=info.get("task_overrides"), wandb_mode="off", progress=False, resume=True)
H, C = tr.acfg.planner.horizon, tr.loop.ready_context
eps = tr.heldout
print("heldout episodes", len(eps), [len(e.state) for e in eps])
states, prev = windows_for_check([e.state for e in eps], [e.action for e in eps], C + H, stride=4, limit=256)
tr.agent.eval()
wm = tr.agent.world_model
rows = []
with torch.no_grad():
    for i in range(len(states)):
        st = tr._normalize_multi(torch.as_tensor(states[i:i+1], device=tr.agent.device))
        pa = torch.as_tensor(prev[i:i+1], device=tr.agent.device)
        m, c = wm.open_loop_error(st, pa, C, H)
        rows.append((i, m.numpy().round(3).tolist(), float(m.mean()), float(c.mean())))
for r in rows: print(r[0], "model mean %.3f const mean %.3f" % (r[2], r[3]), r[1])
m = np.array([r[2] for r in rows]); c = np.array([r[3] for r in rows])
print("ratio all", m.mean()/c.mean(), "ratio without worst 2", np.sort(m)[:-2].mean()/c[np.argsort(m)[:-2]].mean())
