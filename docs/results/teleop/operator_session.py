"""A measured keyboard operator session in the real viewer window (docs/results/teleop.md).

Runs `robolearn intervene --teleop keyboard --viewer` on a virtual X display (Xvfb) with a push_cube
policy trained on obs_relative demos, plays a fixed key schedule into the window with xdotool
(pressing and holding keys in real time, as a person would; not a person: the schedule does not
look at the screen), takes screenshots of the autonomous, recovery, correction and paused phases
and writes `session.json`: the command, machine, load average, every key sent with its wall time,
the operator messages, and per episode the store's labels, per-phase step counts and the recorder's
per-intervention metadata (steps, wall seconds). `session_table.py` turns it into the page's table.

    python3 docs/results/teleop/operator_session.py --out docs/results/teleop [--workdir /tmp/teleop_session]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from robolearn.data.store import SOURCE_CODES, EpisodeStore
from robolearn.teleop.virtual_display import VirtualDisplay, image_stats

CODES = {v: k for k, v in SOURCE_CODES.items()}
DEMO_SEED, SESSION_SEED = 0, 1000  # session episodes use seeds disjoint from the demos'


def make_checkpoint(workdir: Path) -> Path:
    """push_cube BC on 30 obs_relative demos (the task setting intervene must pick up)."""
    run = workdir / "bc_push_cube_rel"
    if (run / "policy" / "checkpoint.json").is_file():
        return run
    from robolearn.tasks.collect import collect
    from robolearn.training import train

    demos = workdir / "push_cube_rel.zarr"
    if not demos.exists():
        collect("push_cube", episodes=30, out=demos, num_envs=5, seed=DEMO_SEED, progress=False,
                overrides=["obs_relative=true"])
    return train("bc", demos, task="push_cube", out=run, wandb_mode="off", progress=False,
                 overrides=["train.steps=1500", "train.batch_size=64", "train.eval_episodes=0", "train.val_ratio=0.0",
                            "train.device=cpu"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/results/teleop", help="where session.json and the screenshots go")
    ap.add_argument("--workdir", default="/tmp/teleop_session", help="demos, checkpoint and the session's store")
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = make_checkpoint(work)
    store_path = work / "session.zarr"
    if store_path.exists():
        shutil.rmtree(store_path)
    cmd = ["robolearn", "intervene", "--checkpoint", str(checkpoint), "--teleop", "keyboard", "--viewer",
           "--episodes", "3", "--seed", str(SESSION_SEED), "--slowmo", "4", "--out", str(store_path)]
    keys: list[dict] = []
    shots: dict[str, dict] = {}
    lines: list[tuple[float, str]] = []
    with VirtualDisplay() as x:
        proc = subprocess.Popen([sys.executable, "-m", "robolearn.cli", *cmd[1:]],
                                env={**x.env, "MUJOCO_GL": "glfw", "OMP_NUM_THREADS": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()

        def read() -> None:
            for line in iter(proc.stderr.readline, ""):
                lines.append((round(time.time() - t0, 2), line.rstrip("\n")))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()

        def wait_for(prefix: str, timeout: float = 120) -> None:
            deadline = time.time() + timeout
            while not any(text.startswith(prefix) for _, text in lines):
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"no {prefix!r}:\n" + "\n".join(t for _, t in lines[-20:]))
                time.sleep(0.05)

        def press(*names: str) -> None:
            keys.append({"t": round(time.time() - t0, 2), "press": list(names)})
            x.key(*names)

        def hold(name: str, seconds: float) -> None:
            keys.append({"t": round(time.time() - t0, 2), "hold": name, "seconds": seconds})
            x.hold(name, seconds)

        def shot(name: str) -> None:
            img = x.screenshot(window, out / f"{name}.png")
            shots[name] = {"t": round(time.time() - t0, 2), **image_stats(img)}

        try:
            window = x.find_window("MuJoCo", proc=proc)
            x.focus(window)
            # episode 1: watch, take over, recover (back toward the viewer and up), correct (push
            # away from the viewer), hand back; the policy finishes the episode
            wait_for("intervene: episode 1/3")
            time.sleep(2.0)
            shot("autonomous")
            press("t")
            hold("s", 1.0)
            hold("r", 0.6)
            shot("recovery")
            press("c")
            time.sleep(0.3)
            hold("f", 0.6)
            hold("w", 1.6)
            shot("correction")
            press("h")
            # episode 2: pause to look, resume, take over straight into correction (t twice),
            # move left then away, close the gripper, end it as a failure
            wait_for("intervene: episode 2/3")
            time.sleep(1.2)
            press("p")
            time.sleep(1.0)
            shot("paused")
            press("p")
            time.sleep(0.8)
            press("t")
            time.sleep(0.3)
            press("t")
            hold("a", 1.0)
            hold("w", 1.0)
            press("space")
            time.sleep(0.6)
            press("n")
            # episode 3: two interventions; q opens the keep / discard prompt, c (any other key)
            # cancels it, y ends the episode as a success
            wait_for("intervene: episode 3/3")
            time.sleep(1.0)
            press("t")
            hold("d", 0.8)
            press("c")
            hold("w", 0.8)
            press("h")
            time.sleep(1.2)
            press("t")
            press("t")
            hold("s", 0.6)
            press("q")
            time.sleep(0.8)
            shot("quit_prompt")
            press("c")
            time.sleep(0.6)
            press("y")
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=10)
    if proc.returncode != 0:
        raise SystemExit("\n".join(t for _, t in lines[-30:]))
    store = EpisodeStore.open(store_path)
    episodes = []
    for i in range(store.num_episodes):
        src = store.get_episode(i, ["source"])["source"]
        seq = "".join(CODES[c][0] for c in src)
        meta = store.episode_metadata(i)
        episodes.append({"seed": int(store.column("seed")[i]), "length": len(seq), "labels": seq,
                         "steps": {name: int(np.sum(src == SOURCE_CODES[name])) for name in ("policy", "recovery", "correction")},
                         "success": bool(store.column("success")[i]), "outcome": meta["outcome"],
                         "intervention_count": int(store.column("intervention_count")[i]),
                         "interventions": meta["interventions"]})
    record = {
        "command": " ".join(cmd), "operator": "fixed key schedule sent with xdotool in real time (not a person)",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": f"{os.cpu_count()}-core CPU, "
        f"{platform.system()} {platform.machine()}, Xvfb + Mesa software OpenGL", "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "control_period": store.control_period, "seeds": [SESSION_SEED, SESSION_SEED + store.num_episodes - 1],
        "demo_seeds": [DEMO_SEED, DEMO_SEED + 29], "checkpoint": "bc on 30 obs_relative push_cube demos, 1500 steps",
        "keys": keys, "screenshots": shots, "messages": lines, "episodes": episodes,
    }
    (out / "session.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out / 'session.json'} and {len(shots)} screenshots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
