"""Wall time of every command in README.md's "The loop, command by command" on this machine.

Each command runs as the README writes it (`python -m robolearn ...`, the same command as
`robolearn ...`) in a work directory holding a link to the repository's policies/ (the README's
commands run from the repository root), so `data/...` and `runs/...` land there; `runs/<run>`
placeholders become the run directory the earlier command created. One command at a time.
Recorded per command: wall seconds, the load average (1/5/15 min) at its start and end, exit code.

Commands too long to run to the end here (training, SAILOR, offline RL, fine-tuning, big
collections) run as a measured prefix: the script reads the command's own progress bar (tqdm on
stderr), stops the process once the bar reaches `stop_at` of its `total`, and extrapolates

    estimate = (wall time until the bar showed n_last) + (total - n_last) x rate

where `rate` is seconds per bar unit over the steady part of the prefix (from `rate_from` to the
stop, so start-up is counted once and not in the rate). Periodic checkpoints and validation inside
the measured span are in the rate; ones after it are counted at that rate, not measured. SAILOR's
estimate adds its later phases from measured unit costs (see `sailor_estimate`). Every such row is
labelled "extrapolated from N <units>" in the table.

    python scripts/bench_readme_loop.py --probes --out docs/results/demo/readme_loop.json [--only KEY ...]
    python scripts/bench_readme_loop.py --table docs/results/demo/readme_loop.json

The JSON is rewritten (atomically) after every command, so an interrupted run keeps what it
measured; `--only` reruns some commands and replaces their rows (later commands need the files the
earlier ones made in `--workdir`, so keep the same work directory).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# `desc: 45%|####      | 45/100 [00:01<00:01, 40.0it/s]` (tqdm, also without a terminal)
BAR = re.compile(r"(?P<desc>[^\r\n|]*?):\s*\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)")


@dataclass
class Command:
    """One README command. `argv` may hold {run}, {offline_run}, {finetune_run} (filled from earlier rows)."""

    key: str
    readme: str                      # as README.md writes it
    argv: str                        # what runs, after `python -m robolearn`
    bar: str | None = None           # desc prefix of the progress bar that measures this command
    stop_at: int | None = None       # stop the process once that bar shows this count (None: run to the end)
    total: int | None = None         # the bar's count for the whole README command (default: the bar's total)
    rate_from: int | None = None     # steady part of the prefix starts here (default: 10% of stop_at)
    unit: str = "steps"
    creates_run: str | None = None   # name of the run directory this command creates (newest under runs/)
    note: str = ""


README_RUN = "runs/<run>"
COMMANDS: list[Command] = [
    Command("tasks", "robolearn tasks", "tasks"),
    Command("collect", "robolearn collect --task pick_place --episodes 200 --out data/pp.zarr --num-envs 10 --perturb 0.02",
            "collect --task pick_place --episodes 200 --out data/pp.zarr --num-envs 10 --perturb 0.02"),
    Command("data_info", "robolearn data info data/pp.zarr", "data info data/pp.zarr"),
    Command("train", "robolearn train --policy diffusion --config policies/diffusion_small.yaml --data data/pp.zarr --task pick_place",
            "train --policy diffusion --config policies/diffusion_small.yaml --data data/pp.zarr --task pick_place",
            bar="train diffusion", stop_at=520, rate_from=50, creates_run="run",
            note="stopped after the step-500 checkpoint, which the next commands use"),
    Command("eval", f"robolearn eval --checkpoint {README_RUN} --episodes 100 --num-envs 10 --seed 0 --video 2",
            "eval --checkpoint {run} --episodes 100 --num-envs 10 --seed 0 --video 2",
            note="checkpoint of 500 training steps: its episodes mostly fail and run the full 80-step horizon, "
                 "so this is an upper bound for a trained policy"),
    Command("collect_image", "robolearn collect --task pick_place --episodes 200 --out data/pp_img.zarr --num-envs 10 --image",
            "collect --task pick_place --episodes 200 --out data/pp_img.zarr --num-envs 10 --image"),
    Command("train_image", "robolearn train --policy diffusion --config policies/diffusion_small.yaml --data data/pp_img.zarr "
            "--task pick_place 'policy.state_keys=[proprio]' 'policy.image_keys=[image]' 'policy.vision.crop_shape=[76,76]'",
            "train --policy diffusion --config policies/diffusion_small.yaml --data data/pp_img.zarr --task pick_place "
            "'policy.state_keys=[proprio]' 'policy.image_keys=[image]' 'policy.vision.crop_shape=[76,76]'",
            bar="train diffusion", stop_at=60, rate_from=10),
    Command("intervene", f"robolearn intervene --checkpoint {README_RUN} --teleop scripted --episodes 20 --out data/pp_int.zarr",
            "intervene --checkpoint {run} --teleop scripted --episodes 20 --out data/pp_int.zarr",
            note="policy of 500 training steps (the operator takes over often)"),
    Command("train_rac", "robolearn train --policy diffusion --config policies/diffusion_small.yaml --data data/pp_int.zarr data.mix=rac",
            "train --policy diffusion --config policies/diffusion_small.yaml --data data/pp_int.zarr data.mix=rac",
            bar="train diffusion", stop_at=300, rate_from=50),
    Command("collect_sort", "robolearn collect --task sort --episodes 1000 --out data/sort4.zarr --num-envs 10 --expert-mode 0 "
            "--set num_cubes=4 --set obs_relative=true",
            "collect --task sort --episodes 1000 --out data/sort4.zarr --num-envs 10 --expert-mode 0 --set num_cubes=4 --set obs_relative=true"),
    Command("train_hierarchical", "robolearn train --policy hierarchical --config policies/hierarchical_small.yaml --data data/sort4.zarr "
            "--task sort policy.object_centric=true policy.stage_obs_others=true policy.stage_sliced_heads=true "
            "policy.requery_on_stage_change=true policy.max_primitive_steps=40 policy.stage_head=first_not_done",
            "train --policy hierarchical --config policies/hierarchical_small.yaml --data data/sort4.zarr --task sort "
            "policy.object_centric=true policy.stage_obs_others=true policy.stage_sliced_heads=true "
            "policy.requery_on_stage_change=true policy.max_primitive_steps=40 policy.stage_head=first_not_done",
            bar="train hierarchical", stop_at=1100, rate_from=100),
    Command("sailor", f"robolearn sailor --config policies/sailor_small.yaml --base {README_RUN} --demos data/pp.zarr --task pick_place "
            "--env-steps 20000",
            "sailor --config policies/sailor_small.yaml --base {run} --demos data/pp.zarr --task pick_place --env-steps 20000",
            bar="warm start", stop_at=150, rate_from=20, total=30000, unit="model updates",
            note="the 4000-step warm-start collection measured in full, then 150 model updates; later phases "
                 "from measured unit costs (sailor_estimate)"),
    Command("rollout_expert", "robolearn data rollout --task push_cube --set terminate_on_success=false --policy expert --noise 0.1 "
            "--episodes 200 --num-envs 50 --out data/pc_expert.zarr",
            "data rollout --task push_cube --set terminate_on_success=false --policy expert --noise 0.1 --episodes 200 "
            "--num-envs 50 --out data/pc_expert.zarr"),
    Command("rollout_random", "robolearn data rollout --task push_cube --set terminate_on_success=false --policy random "
            "--episodes 800 --num-envs 50 --out data/pc_random.zarr",
            "data rollout --task push_cube --set terminate_on_success=false --policy random --episodes 800 --num-envs 50 "
            "--out data/pc_random.zarr"),
    Command("mix", "robolearn data mix --good data/pc_expert.zarr --bad data/pc_random.zarr --ratio 0.05 --out data/mixed.zarr",
            "data mix --good data/pc_expert.zarr --bad data/pc_random.zarr --ratio 0.05 --out data/mixed.zarr"),
    Command("offline", "robolearn offline --algo iql --data data/mixed.zarr --task push_cube --sampler aw",
            "offline --algo iql --data data/mixed.zarr --task push_cube --sampler aw", creates_run="offline_run"),
    Command("finetune", "robolearn finetune --checkpoint runs/<offline run> --task push_cube --algo wsrl --warmup 5000",
            "finetune --checkpoint {offline_run} --task push_cube --algo wsrl --warmup 5000 finetune.save_every=5500",
            bar="finetune wsrl", stop_at=5800, rate_from=5100, creates_run="finetune_run",
            note="run with finetune.save_every=5500 so that --resume has a checkpoint; rate from the update steps "
                 "after the 5000 warm-up steps"),
    Command("finetune_resume", "robolearn finetune --resume runs/<finetune run>",
            "finetune --resume {finetune_run}", bar="finetune wsrl", stop_at=5600, rate_from=5520,
            note="resumes the step-5500 checkpoint; the estimate is the rest of the run"),
]
# The paper-sized (GPU) presets, started the same way to measure what they would cost on this CPU.
PROBES: list[Command] = [
    Command("gpu_train", "robolearn train --policy diffusion --data data/pp.zarr --task pick_place",
            "train --policy diffusion --data data/pp.zarr --task pick_place", bar="train diffusion", stop_at=6, rate_from=2),
    Command("gpu_train_hierarchical", "robolearn train --policy hierarchical --data data/sort4.zarr --task sort policy.object_centric=true ...",
            "train --policy hierarchical --data data/sort4.zarr --task sort policy.object_centric=true policy.stage_obs_others=true "
            "policy.stage_sliced_heads=true policy.requery_on_stage_change=true policy.max_primitive_steps=40 "
            "policy.stage_head=first_not_done", bar="train hierarchical", stop_at=300, rate_from=50),
    Command("gpu_sailor", f"robolearn sailor --base {README_RUN} --demos data/pp.zarr --task pick_place --env-steps 20000",
            "sailor --base {run} --demos data/pp.zarr --task pick_place --env-steps 200", bar="warm start", stop_at=12,
            rate_from=2, total=30000, unit="model updates",
            note="run with --env-steps 200 (a 40-step warm start) to reach the model updates quickly; "
                 "the estimate counts the 30000 model updates of 20000 env steps only (a lower bound)"),
]


@dataclass
class Row:
    key: str
    readme: str
    argv: str
    rc: int | None = None
    wall_s: float = 0.0
    loadavg_start: list[float] = field(default_factory=list)
    loadavg_end: list[float] = field(default_factory=list)
    started: str = ""
    stopped_early: bool = False
    prefix: int | None = None        # bar count reached when stopped
    prefix_at_s: float | None = None  # wall seconds when the bar showed it
    total: int | None = None
    unit: str = "steps"
    rate_s: float | None = None      # seconds per unit over the steady part
    rate_window: list[int] | None = None
    estimate_s: float | None = None  # the whole README command
    estimate_parts: dict[str, float] | None = None
    bars: dict[str, list[list[float]]] = field(default_factory=dict)  # desc -> [[t, n, total], ...] (thinned)
    tail: str = ""
    note: str = ""
    code: str = ""                   # git HEAD (+ files edited in the working tree) when it ran


class Watcher:
    """Reads the process's merged stdout/stderr; keeps every progress-bar reading with its time."""

    def __init__(self, proc: subprocess.Popen, t0: float) -> None:
        self.proc, self.t0 = proc, t0
        self.bars: dict[str, list[tuple[float, int, int]]] = {}
        self.text: list[str] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buf = b""
        assert self.proc.stdout is not None
        while True:
            chunk = self.proc.stdout.read1(4096) if hasattr(self.proc.stdout, "read1") else self.proc.stdout.read(4096)
            if not chunk:
                break
            t = time.monotonic() - self.t0
            buf += chunk
            *pieces, buf = re.split(rb"[\r\n]", buf)
            for raw in pieces:
                self._line(raw.decode(errors="replace"), t)
        if buf:
            self._line(buf.decode(errors="replace"), time.monotonic() - self.t0)

    def _line(self, line: str, t: float) -> None:
        with self.lock:
            m = BAR.search(line)
            if m:
                desc = m["desc"].strip()
                seq = self.bars.setdefault(desc, [])
                n = int(m["n"])
                if not seq or seq[-1][1] != n:
                    seq.append((t, n, int(m["total"])))
            elif line.strip():
                self.text.append(line)

    def latest(self, prefix: str) -> tuple[str, list[tuple[float, int, int]]] | None:
        with self.lock:
            for desc in reversed(list(self.bars)):
                if desc.startswith(prefix):
                    return desc, list(self.bars[desc])
        return None


def stop(proc: subprocess.Popen) -> None:
    """End the command we started (its own process group): SIGTERM, then SIGKILL after 20 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def rate_over(seq: list[tuple[float, int, int]], start: int) -> tuple[float, list[int]] | None:
    """Seconds per unit between the first reading >= start and the last reading."""
    steady = [s for s in seq if s[1] >= start]
    if len(steady) < 2 or steady[-1][1] == steady[0][1]:
        return None
    (ta, na, _), (tb, nb, _) = steady[0], steady[-1]
    return (tb - ta) / (nb - na), [na, nb]


def newest_run(work: Path, before: set[str]) -> Path | None:
    runs = [p for p in (work / "runs").glob("*") if p.is_dir() and p.name not in before]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def run_command(cmd: Command, work: Path, ctx: dict[str, str], timeout_s: float) -> Row:
    argv_text = cmd.argv.format(**ctx)
    row = Row(cmd.key, cmd.readme, f"robolearn {argv_text}", unit=cmd.unit, note=cmd.note)
    before = {p.name for p in (work / "runs").glob("*")} if (work / "runs").exists() else set()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    row.loadavg_start = [round(x, 2) for x in os.getloadavg()]
    row.started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "robolearn", *shlex.split(argv_text)], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    watch = Watcher(proc, t0)
    while proc.poll() is None:
        time.sleep(0.2)
        if time.monotonic() - t0 > timeout_s:
            stop(proc)
            row.note = (row.note + "; " if row.note else "") + f"stopped by the script's {timeout_s:.0f} s timeout"
            break
        if cmd.bar and cmd.stop_at is not None:
            got = watch.latest(cmd.bar)
            if got and got[1][-1][1] >= cmd.stop_at:
                row.stopped_early = True
                stop(proc)
                break
    watch.thread.join(timeout=10)
    row.wall_s = round(time.monotonic() - t0, 2)
    row.rc = proc.returncode
    row.loadavg_end = [round(x, 2) for x in os.getloadavg()]
    row.tail = "\n".join(watch.text[-6:])[-1500:]
    row.bars = {d: [[round(t, 2), n, tot] for t, n, tot in thin(seq)] for d, seq in watch.bars.items()}
    if cmd.creates_run:
        run = newest_run(work, before)
        if run is not None:
            ctx[cmd.creates_run] = str(run.relative_to(work))
    if row.stopped_early and cmd.bar:
        desc, seq = watch.latest(cmd.bar)  # type: ignore[misc]
        t_last, n_last, bar_total = seq[-1]
        row.prefix, row.prefix_at_s = n_last, round(t_last, 2)
        row.total = cmd.total or bar_total
        got = rate_over(seq, cmd.rate_from if cmd.rate_from is not None else max(1, cmd.stop_at // 10))
        if got:
            row.rate_s, row.rate_window = got[0], got[1]
            row.estimate_s = t_last + (row.total - n_last) * row.rate_s
            row.estimate_parts = {"prefix": round(t_last, 1), "rest_at_rate": round((row.total - n_last) * row.rate_s, 1)}
    return row


def thin(seq: list[tuple[float, int, int]], keep: int = 60) -> list[tuple[float, int, int]]:
    if len(seq) <= keep:
        return seq
    idx = sorted({round(i * (len(seq) - 1) / (keep - 1)) for i in range(keep)})
    return [seq[i] for i in idx]


def sailor_estimate(row: Row, rows: dict[str, Row]) -> None:
    """SAILOR with policies/sailor_small.yaml at --env-steps 20000, from measured unit costs.

    Measured here: start-up and the warm start's 4000 noisy-base env steps (in full), and the rate of
    model updates (30000 in the run: 1.5 per env step). Counted at those rates: the rounds' 16000 env
    steps and 5 evaluations x (planner + base) x 20 episodes x 80 steps (the full horizon: an upper
    bound) at the warm start's rate per env step; 3 expert iterations x 500 diffusion steps at the
    `train` row's rate. From docs/results/sailor.md's speed table (load 8-9): 0.665 s per planner
    decision for 10 batched envs, one per base chunk: 1600 in the rounds, 160 per evaluation."""
    warm = row.bars.get("collect noisy_base")
    if not warm or row.rate_s is None or row.prefix is None:
        return
    collect_s = warm[-1][0] - warm[0][0]
    per_env_step = collect_s / max(1, warm[-1][1] - warm[0][1])
    train = rows.get("train")
    dp_rate = train.rate_s if train is not None and train.rate_s else 0.0
    parts = {
        "start_and_warm_collect (measured)": row.prefix_at_s - row.prefix * row.rate_s,
        "model_updates (30000 at the measured rate)": 30000 * row.rate_s,
        "round_collection (16000 env steps at the warm-start rate)": 16000 * per_env_step,
        "planner_decisions (1600 x 0.665 s, docs/results/sailor.md)": 1600 * 0.665,
        "evaluations (5 x 2 x 20 episodes x 80 steps at the warm-start rate)": 16000 * per_env_step,
        "evaluation planner decisions (5 x 160 x 0.665 s)": 800 * 0.665,
        "expert_iteration (3 x 500 steps at the train row's rate)": 1500 * dp_rate,
    }
    row.estimate_parts = {k: round(v, 1) for k, v in parts.items()}
    row.estimate_s = sum(parts.values())


def machine() -> str:
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__} "
            f"(OMP_NUM_THREADS=1 in every command)")


def git_state() -> str:
    """HEAD and which tracked source files were modified (the checkout is shared and edited live)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--name-only", "--", "robolearn"], cwd=root, capture_output=True, text=True).stdout.split()
    except OSError:
        return "unknown"
    return head + (f" + uncommitted edits in {', '.join(dirty)}" if dirty else "")


def write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def fmt_s(s: float) -> str:
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 3600:.0f} h ({s / 86400:.1f} days)"


def row_cells(r: dict[str, Any]) -> tuple[str, str]:
    """(time, how it was measured) of one recorded command."""
    if r["stopped_early"] and r.get("estimate_s") is not None:
        readings = [b for d, b in r["bars"].items()]
        first = min((b[0][1] for b in readings if b), default=0)
        span = f"{r['prefix']} {r['unit']}" if first == 0 else f"{r['prefix'] - first} {r['unit']} (from {first} to {r['prefix']})"
        how = (f"extrapolated from {span} of {r['total']}, measured in {r['prefix_at_s']:.0f} s: "
               f"{r['rate_s']:.3g} s per {r['unit'].rstrip('s')}")
        return f"~{fmt_s(r['estimate_s'])}", how
    if r["stopped_early"]:
        return "n/a", f"stopped at {r['prefix']} {r['unit']}, too few progress readings for a rate"
    if r["rc"] == 0:
        return fmt_s(r["wall_s"]), "run to the end"
    return "failed", f"exit code {r['rc']}: {r['tail'].splitlines()[-1] if r['tail'] else ''}"


def table(doc: dict[str, Any]) -> str:
    """The README loop's commands, then the paper-sized (GPU) presets started on this CPU."""
    starts = sorted(r["started"] for r in doc["rows"] if r.get("started"))
    lines = [*(f"- command: `{c}`" for c in doc.get("invocations", [doc.get("command", "")])),
             f"- machine: {doc['machine']}; shared with other experiments, so these are times under the load "
             f"shown (1-minute load average at each command's start and end), not on quiet cores",
             f"- date: {starts[0][:16].replace('T', ' ')} .. {starts[-1][:16].replace('T', ' ')} UTC" if starts else "",
             f"- code: {doc['rows'][0].get('code', '')}" if doc["rows"] else ""]
    head = ["| command (README) | time here | how measured | load start -> end |", "|---|---|---|---|"]
    probes = {c.key for c in PROBES}
    for title, rows in (("", [r for r in doc["rows"] if r["key"] not in probes]),
                        ("Paper-sized (GPU) presets started on this CPU (what dropping `--config` costs here):",
                         [r for r in doc["rows"] if r["key"] in probes])):
        if not rows:
            continue
        lines += ["", title, ""] if title else [""]
        lines += head
        for r in rows:
            time_text, how = row_cells(r)
            if r.get("note"):
                how += f"; {r['note']}"
            load = f"{r['loadavg_start'][0]:.1f} -> {r['loadavg_end'][0]:.1f}" if r["loadavg_start"] else ""
            lines.append(f"| `{r['readme']}` | {time_text} | {how} | {load} |")
    return "\n".join(ln for ln in lines if ln is not None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="JSON written after every command (atomically)")
    ap.add_argument("--workdir", default="/tmp/readme_loop", help="where the commands run (data/, runs/)")
    ap.add_argument("--only", nargs="+", help="run only these command keys (replacing their rows in --out)")
    ap.add_argument("--probes", action="store_true", help="also start the paper-sized (GPU) presets to time them")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before a command is stopped")
    ap.add_argument("--table", metavar="JSON", help="print the markdown table of a recorded JSON and exit")
    ap.add_argument("--list", action="store_true", help="list the command keys and exit")
    ap.add_argument("--overwrite", action="store_true", help="start --out again instead of refusing an existing one")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    commands = COMMANDS + (PROBES if args.probes or args.only else [])
    if args.list:
        for c in COMMANDS + PROBES:
            print(f"{c.key:24s} {c.readme}")
        return 0
    if not args.out:
        print("bench_readme_loop: error: --out is required to run", file=sys.stderr)
        return 2
    known = {c.key for c in COMMANDS + PROBES}
    if args.only and set(args.only) - known:
        print(f"bench_readme_loop: error: unknown keys {sorted(set(args.only) - known)} (see --list)", file=sys.stderr)
        return 2
    out, work = Path(args.out), Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    # the README's commands run from the repository root: `--config policies/...` is relative to it
    if not (work / "policies").exists():
        (work / "policies").symlink_to(Path(__file__).resolve().parent.parent / "policies", target_is_directory=True)
    if out.exists() and not (args.only or args.overwrite):
        print(f"bench_readme_loop: error: {out} exists (--overwrite starts it again, --only KEY replaces rows)", file=sys.stderr)
        return 2
    doc: dict[str, Any] = json.loads(out.read_text()) if out.exists() and not args.overwrite else {"rows": []}
    doc["machine"] = machine()
    doc["invocations"] = [*doc.get("invocations", []), "python scripts/bench_readme_loop.py " + " ".join(sys.argv[1:])]
    rows = {r["key"]: Row(**r) for r in doc["rows"]}
    ctx = dict(doc.get("context", {}))
    order = [c.key for c in COMMANDS + PROBES]
    for cmd in commands:
        if args.only and cmd.key not in args.only:
            continue
        print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {cmd.key}: robolearn {cmd.argv.format_map(_Missing(ctx))}", flush=True)
        missing = [k for k in re.findall(r"\{(\w+)\}", cmd.argv) if k not in ctx]
        if missing:
            print(f"    skipped: no {', '.join(missing)} (the command that makes it failed or did not run)", flush=True)
            continue
        row = run_command(cmd, work, ctx, args.timeout)
        row.code = git_state()
        if cmd.key == "sailor":
            sailor_estimate(row, rows)
        rows[cmd.key] = row
        doc["rows"] = [asdict(rows[k]) for k in order if k in rows]
        doc["context"] = ctx
        write_json(out, doc)
        est = f", estimate {fmt_s(row.estimate_s)}" if row.estimate_s is not None else ""
        print(f"    rc {row.rc}, {row.wall_s:.1f} s{est}, load {row.loadavg_start[0]} -> {row.loadavg_end[0]}", flush=True)
        if row.rc not in (0, None) and not row.stopped_early:
            print(f"    {row.tail.splitlines()[-1] if row.tail else ''}", flush=True)
    return 0


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


if __name__ == "__main__":
    sys.exit(main())
