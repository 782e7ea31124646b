"""Typed configs: YAML + overrides, unknown keys and bad types are errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from robolearn.config import ConfigError, load_config, parse_overrides


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Cfg:
    steps: int = 10
    name: str = "x"
    use_ema: bool = True
    horizon: int | None = None
    optim: Optim = field(default_factory=Optim)
    keys: list[str] = field(default_factory=lambda: ["state"])


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 20\noptim:\n  lr: 0.01\n")
    cfg = load_config(Cfg, p, ["optim.lr=3e-4", "use_ema=false", "keys=[state,image]", "horizon=16"])
    assert cfg.steps == 20 and cfg.optim.lr == 3e-4 and cfg.use_ema is False
    assert cfg.keys == ["state", "image"] and cfg.horizon == 16 and cfg.optim.betas == (0.9, 0.999)


def test_unknown_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*stpes"):
        load_config(Cfg, None, ["stpes=3"])
    with pytest.raises(ConfigError, match="unknown key.*lrr"):
        load_config(Cfg, None, ["optim.lrr=3"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(Cfg, None, ["steps=abc"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["steps"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Cfg, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "missing.yaml")
