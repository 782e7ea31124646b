"""Exact-resume checks shared by the RL fine-tuning tests: kill a run right after it writes its
`last` checkpoint, then compare the resumed run with an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch


class Interrupted(Exception):
    """Raised in place of a crash right after a checkpoint is saved."""


def interrupt_after_checkpoint(monkeypatch: pytest.MonkeyPatch, run: Callable[[], Any]) -> None:
    """Call `run()` with robolearn.rl.algos.save_agent dying right after the `last` checkpoint is written."""
    import robolearn.rl.algos as algos

    real_save = algos.save_agent

    def save_then_die(agent, directory, **kwargs):
        real_save(agent, directory, **kwargs)
        if Path(directory).name == "last":
            raise Interrupted

    monkeypatch.setattr(algos, "save_agent", save_then_die)
    try:
        with pytest.raises(Interrupted):
            run()
    finally:
        monkeypatch.setattr(algos, "save_agent", real_save)


def assert_same_run(full: Path, part: Path) -> dict[str, Any]:
    """Metrics, continual-evaluation history and final weights identical; returns continual.json."""
    from robolearn.checkpoint import load_tensors

    assert (full / "metrics.jsonl").read_text() == (part / "metrics.jsonl").read_text()
    a, b = json.loads((full / "continual.json").read_text()), json.loads((part / "continual.json").read_text())
    assert a == b
    x, y = load_tensors(full / "policy", "agent"), load_tensors(part / "policy", "agent")
    assert set(x) == set(y)
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=0, atol=0, msg=k)
    return a


def file_bytes(root: Path) -> dict[Path, bytes]:
    """Every file under `root` with its content: equal before and after means a refused resume changed nothing."""
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
