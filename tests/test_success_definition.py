"""One success definition for every evaluation: the task's success held at some step of the episode."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from robolearn.tasks.rollout import EpisodeStats


def _step(episode: int, success: bool, done: bool) -> SimpleNamespace:
    info = {"success": np.array([success]), "failure_event": np.array([0]), "stage": np.array([0]),
            "done": np.array([done])}
    return SimpleNamespace(episode=np.array([episode]), reward=np.array([1.0]), done=np.array([done]), info=info)


def _run(successes: list[bool]) -> dict:
    engine = SimpleNamespace(device=torch.device("cpu"), num_envs=1, env=SimpleNamespace(on_device=False))
    stats = EpisodeStats(1, [7])
    stats.on_start(engine, None)
    for t, ok in enumerate(successes):
        stats.on_step(engine, _step(0, ok, t == len(successes) - 1), None, None, None)
    (record,) = stats.records()
    return record


def test_success_at_some_step_counts_even_if_lost_before_the_end():
    # a task that does not terminate on success: success at step 2, lost again at step 3
    record = _run([False, False, True, False])
    assert record["success"] is True and record["success_at_end"] is False
    assert record["score"] == 1.0 and record["length"] == 4 and record["seed"] == 7


def test_never_successful_and_successful_at_the_end():
    assert _run([False, False, False])["success"] is False
    end = _run([False, True])
    assert end["success"] is True and end["success_at_end"] is True

