"""docs/results/demo.md from the raw records of a measured `robolearn demo` run.

Reads DIR/demo.json + DIR/eval.json (what the demo writes), DIR/presets.json
(scripts/bench_presets.py) and, if present, DIR/notes.md (what the records cannot say, e.g. a
session killed before it could record itself); every further measured demo in DIR/quiet_*/ (its own
demo.json, eval.json and notes.md, whose `<!-- table -->` line receives the result table); and the
README-loop timings, DIR/readme_loop.json through scripts/bench_readme_loop.py's table, placed at
the `<!-- table: ... -->` line of DIR/readme_loop_notes.md. Prints the page.

    python scripts/demo_table.py docs/results/demo > docs/results/demo.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from robolearn.demo import report_markdown


def presets_table(presets: dict) -> str:
    lines = [f"- command: `{presets['command']}`", f"- machine: {presets['machine']}; date {presets['date']}", "",
             "| preset | parameters | batch | recipe steps | s/step (median) | load average start -> end | recipe at this rate | "
             "inference s/chunk (batch 1) |", "|---|---|---|---|---|---|---|---|"]
    for r in presets["results"]:
        hours = r["recipe_hours_at_median"]
        lines.append(f"| `policies/{r['preset']}.yaml` | {r['params'] / 1e6:.1f} M | {r['batch_size']} | {r['recipe_steps']} | "
                     f"{r['seconds_per_step_median']:.3f} ({len(r['seconds_per_step'])} steps) | "
                     f"{r['loadavg_start'][0]:.1f} -> {r['loadavg_end'][0]:.1f} | "
                     f"{hours * 60:.0f} min |" if hours < 2 else
                     f"| `policies/{r['preset']}.yaml` | {r['params'] / 1e6:.1f} M | {r['batch_size']} | {r['recipe_steps']} | "
                     f"{r['seconds_per_step_median']:.3f} ({len(r['seconds_per_step'])} steps) | "
                     f"{r['loadavg_start'][0]:.1f} -> {r['loadavg_end'][0]:.1f} | {hours:.0f} h |")
        lines[-1] += f" {r['inference_s_per_chunk_median']:.3f} |"
    return "\n".join(lines)


def extra_measurement(directory: Path) -> list[str]:
    """A further measured demo (e.g. on an idle box): its report from its records, placed at the
    `<!-- table -->` line of its notes."""
    state = json.loads((directory / "demo.json").read_text())
    report = json.loads((directory / "eval.json").read_text())
    body = report_markdown(state, report)
    lines = [ln for ln in body.splitlines()[2:] if not ln.startswith(("Video of episode", "![learning curve]"))]
    notes = (directory / "notes.md").read_text().strip() if (directory / "notes.md").exists() else "<!-- table -->"
    last = state["stages"]["evaluate"]["sessions"][-1]["ended"]
    return [f"## Measurement `demo/{directory.name}` ({state['started']} .. {last})", "",
            notes.replace("<!-- table -->", "\n".join(lines).strip()), ""]


def recipe_section(root: Path) -> list[str]:
    """How the demo's recipe was chosen: DIR/recipe_notes.md with scripts/demo_recipe.py's table of
    DIR/recipe_selection.jsonl at its `<!-- table -->` line."""
    notes, records = root / "recipe_notes.md", root / "recipe_selection.jsonl"
    if not (notes.exists() and records.exists()):
        return []
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from demo_recipe import table  # noqa: E402

    from bench_unet_widths import table as widths_table  # noqa: E402

    rows = [json.loads(ln) for ln in records.read_text().splitlines() if ln.strip()]
    text = notes.read_text().strip().replace("<!-- table -->", table(rows))
    if (root / "unet_widths.json").exists():
        text = text.replace("<!-- widths -->", widths_table(json.loads((root / "unet_widths.json").read_text())))
    return [text, ""]


def readme_loop_section(root: Path) -> list[str]:
    """The README-loop timings: DIR/readme_loop_notes.md with the table of DIR/readme_loop.json."""
    notes, records = root / "readme_loop_notes.md", root / "readme_loop.json"
    if not (notes.exists() and records.exists()):
        return []
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_readme_loop import table  # noqa: E402

    text = notes.read_text().strip()
    marker = next(ln for ln in text.splitlines() if ln.startswith("<!-- table:"))
    return ["", text.replace(marker, table(json.loads(records.read_text())).strip()), ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory", help="holds demo.json, eval.json, presets.json (and optionally notes.md)")
    args = ap.parse_args()
    root = Path(args.directory)
    state = json.loads((root / "demo.json").read_text())
    report = json.loads((root / "eval.json").read_text()) if (root / "eval.json").exists() else None
    presets = json.loads((root / "presets.json").read_text())
    notes = (root / "notes.md").read_text() if (root / "notes.md").exists() else ""
    from robolearn.demo import DEFAULTS, DEMO_PRESET, DEMO_TASK_OVERRIDES, DEMO_TRAIN_OVERRIDES

    out = ["# `robolearn demo` (the README quickstart's main job)", "",
           f"`robolearn demo` collects {DEFAULTS['episodes']} scripted {DEFAULTS['task']} demos with object-relative state "
           f"({', '.join(DEMO_TASK_OVERRIDES)}), trains `policies/{DEMO_PRESET}.yaml` with `{' '.join(DEMO_TRAIN_OVERRIDES)}` "
           f"(batch 64, lr 1e-3, {DEFAULTS['steps']} steps, re-planning every step), evaluates on "
           f"{DEFAULTS['eval_episodes']} seeds disjoint from the collection seeds and writes a report with success, its "
           "Wilson interval, and the seconds and load average of each stage. Each finished stage is recorded in "
           "`demo.json` and training checkpoints every 500 steps: `robolearn demo --resume [DIR]` continues an "
           "interrupted demo. Measurements below, newest first; each states the settings it ran with.", ""]
    measured = [d for d in root.glob("quiet_*") if (d / "demo.json").exists()]
    for directory in sorted(measured, key=lambda d: json.loads((d / "demo.json").read_text())["started"], reverse=True):
        out += extra_measurement(directory)
    out += recipe_section(root)
    out += ["## Measurement under load (`demo/demo.json`)", ""]
    if report is not None:  # the demo's own report, its figure and video paths made relative to docs/results/
        body = report_markdown(state, report).replace("](learning_curve.png)", f"]({root.name}/learning_curve.png)")
        out += [ln for ln in body.splitlines()[2:] if not ln.startswith("Video of episode")]
    else:
        stages = state["stages"]
        out += ["**Not finished**: the evaluation has not run. Stages so far (raw: `demo/demo.json`):", "",
                "| stage | seconds | sessions | done |", "|---|---|---|---|",
                *[f"| {k} | {v['seconds']:.1f} | {len(v['sessions'])} | {v.get('done')} |" for k, v in stages.items()]]
    out += ["", notes.strip(), "", "## Presets: seconds per training step", "",
            "Measured through the training code path (`scripts/bench_presets.py`, same sampler, prefetcher, loss and "
            "AdamW as `robolearn train` had on that date: per-tensor, before the fused AdamW of 2026-12-05, which "
            "makes small presets' steps ~10% faster) on 20 push_cube demos; raw: `demo/presets.json`.", "",
            presets_table(presets), ""]
    out += readme_loop_section(root)
    print("\n".join(out))


if __name__ == "__main__":
    main()
