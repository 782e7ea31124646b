"""CPU-sized presets (policies/*_small.yaml): each loads through the same typed loader as its
paper-sized (GPU) sibling, is smaller where it costs time, and the README's loop points at it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from robolearn.config import project_root

ROOT = project_root()


def test_diffusion_small_is_the_cpu_sized_diffusion():
    from robolearn.policies.configuration import load_run_config

    small = load_run_config(ROOT / "policies" / "diffusion_small.yaml")
    big = load_run_config(ROOT / "policies" / "diffusion.yaml")
    assert small.name == big.name == "diffusion"
    assert max(small.policy.down_dims) < max(big.policy.down_dims)
    assert small.train.batch_size < big.train.batch_size and small.train.steps < big.train.steps


def test_hierarchical_small_is_the_cpu_sized_hierarchical():
    from robolearn.policies.configuration import load_run_config

    small = load_run_config(ROOT / "policies" / "hierarchical_small.yaml")
    big = load_run_config(ROOT / "policies" / "hierarchical.yaml")
    assert small.name == big.name == "hierarchical"
    assert max(small.policy.bc.hidden_dims) < max(big.policy.bc.hidden_dims)
    assert max(small.policy.high_level_hidden_dims) < max(big.policy.high_level_hidden_dims)
    assert max(small.policy.termination_hidden_dims) < max(big.policy.termination_hidden_dims)
    assert small.train.steps < big.train.steps
    # overrides still apply on top of the preset, and an unknown key is still an error
    cfg = load_run_config(ROOT / "policies" / "hierarchical_small.yaml", ["policy.object_centric=true", "train.steps=50"])
    assert cfg.policy.object_centric is True and cfg.train.steps == 50
    from robolearn.config import ConfigError

    with pytest.raises(ConfigError, match="unknown key"):
        load_run_config(ROOT / "policies" / "hierarchical_small.yaml", ["policy.hiden_dims=[8]"])


def test_sailor_small_is_the_cpu_sized_sailor():
    from robolearn.sailor.configuration import load_sailor_config

    small = load_sailor_config(ROOT / "policies" / "sailor_small.yaml")
    big = load_sailor_config(None)
    wm_s, wm_b = small.agent.world_model, big.agent.world_model
    assert (wm_s.deter, wm_s.stoch, wm_s.classes, wm_s.units) < (wm_b.deter, wm_b.stoch, wm_b.classes, wm_b.units)
    assert small.agent.critic.units < big.agent.critic.units and small.agent.reward.units < big.agent.reward.units
    assert small.agent.planner.num_samples * small.agent.planner.iterations < big.agent.planner.num_samples * big.agent.planner.iterations
    # the schedule (model updates per env step, sequence length, warm start) is the official one
    assert small.loop.rounds_train_ratio == big.loop.rounds_train_ratio
    assert small.loop.warmstart_train_ratio == big.loop.warmstart_train_ratio
    assert small.agent.world_model.batch_length == big.agent.world_model.batch_length


def test_presets_are_train_choices():
    from robolearn.cli import policy_choices

    choices = policy_choices()
    assert {"diffusion_small", "hierarchical_small"} <= set(choices)


def _readme_loop() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"## The loop, command by command\n+```bash\n(.*?)```", text, re.S)
    assert match, "README.md lost its 'The loop, command by command' block"
    return match.group(1)


def test_readme_loop_uses_existing_cpu_presets():
    loop = _readme_loop()
    configs = re.findall(r"--config (policies/\S+)", loop)
    assert configs, "the loop names no --config"
    for path in configs:
        assert (ROOT / path).is_file(), f"README loop names {path}, which does not exist"
    commands = [ln for ln in loop.replace("\\\n", " ").splitlines() if ln.startswith("robolearn ")]
    for cmd in commands:
        if cmd.startswith(("robolearn train --policy diffusion", "robolearn train --policy hierarchical", "robolearn sailor --")) \
                and "--resume" not in cmd:
            assert re.search(r"--config policies/\w+_small\.yaml", cmd), f"not a CPU-sized preset: {cmd}"


def test_readme_loop_states_a_time_for_every_command():
    loop = _readme_loop().replace("\\\n", " ")
    for line in loop.splitlines():
        if line.startswith("robolearn "):
            comment = line.split("#", 1)[1] if "#" in line else ""
            assert re.search(r"\d+(\.\d+)?\s*(s|min|h)\b", comment), f"no measured time next to: {line[:80]}"


def _bench_module():
    """scripts/bench_readme_loop.py as a module (registered in sys.modules: it defines dataclasses)."""
    import importlib.util
    import sys

    if "bench_readme_loop" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_readme_loop", ROOT / "scripts" / "bench_readme_loop.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_readme_loop"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["bench_readme_loop"]


def test_bench_script_covers_the_readme_loop():
    """scripts/bench_readme_loop.py times exactly the README's commands (same text, same order)."""
    mod = _bench_module()
    loop = _readme_loop().replace("\\\n", " ")
    readme = [re.sub(r"\s+", " ", ln.split("#", 1)[0]).strip() for ln in loop.splitlines() if ln.startswith("robolearn ")]
    benched = [re.sub(r"\s+", " ", c.readme).strip() for c in mod.COMMANDS if not c.readme.startswith("(")]
    assert benched == readme


def test_bench_table_from_records(tmp_path: Path):
    mod = _bench_module()
    full = mod.Row("tasks", "robolearn tasks", "robolearn tasks", rc=0, wall_s=3.2, loadavg_start=[1.0, 1, 1], loadavg_end=[2.0, 1, 1])
    part = mod.Row("train", "robolearn train ...", "robolearn train ...", rc=-15, wall_s=60.0, loadavg_start=[3.0, 1, 1],
                   loadavg_end=[4.0, 1, 1], stopped_early=True, prefix=100, prefix_at_s=58.0, total=1000, rate_s=0.5,
                   estimate_s=58.0 + 900 * 0.5)
    doc = {"command": "x", "machine": "m", "date": "d", "rows": [vars(full), vars(part)]}
    text = mod.table(doc)
    assert "| `robolearn tasks` | 3.2 s | run to the end | 1.0 -> 2.0 |" in text
    assert "~8 min" in text and "extrapolated from 100 steps" in text
    seq = [(0.0, 0, 10), (1.0, 2, 10), (3.0, 6, 10)]
    assert mod.rate_over(seq, 2) == (0.5, [2, 6])


def test_train_refuses_policies_trained_by_their_own_command():
    import subprocess
    import sys

    for name, command in (("sailor", "robolearn sailor"), ("sailor_small", "robolearn sailor"), ("rl_actor", "robolearn offline")):
        out = subprocess.run([sys.executable, "-m", "robolearn", "train", "--policy", name, "--data", "x.zarr"],
                             capture_output=True, text=True)
        assert out.returncode == 2 and command in out.stderr, out.stderr
    from robolearn.cli import policy_choices

    assert {"bc", "diffusion", "hierarchical", "diffusion_small"} <= set(policy_choices())
    assert not {"sailor", "sailor_small", "rl_actor"} & set(policy_choices())
