"""The rollout engine's in-step control (what `robolearn intervene` runs on): an actor's
EndEpisodes ends, discards or replays running episodes without a step, per-step source labels
reach the store, and engine.stop() ends a run without restarting finished slots."""

from __future__ import annotations

import numpy as np
import pytest

from robolearn.data.store import SOURCE_CODES, EpisodeStore
from robolearn.tasks.collect import store_features
from robolearn.tasks.rollout import EndEpisodes, FixedSeeds, FunctionActor, Hook, HostBatch, RolloutEngine, StoreWriter
from robolearn.tasks.sim import TaskSim

TASK = "push_cube"


class ScriptedCuts(FunctionActor):
    """A deterministic state-feedback actor that answers EndEpisodes at planned (attempt, step)
    points and labels its steps 'correction' from step 2 on."""

    def __init__(self, action_dim: int, plan: dict[tuple[int, int], EndEpisodes]) -> None:
        super().__init__(lambda s: np.tanh(s[:, :action_dim] * 0.7 - 0.1))
        self.plan, self.attempt, self.t = plan, -1, 0
        self.last_source = ["policy"]

    def reset(self, obs, rows=None):
        self.attempt, self.t = self.attempt + 1, 0

    def observe(self, obs):
        self.t += 1

    def act(self, obs):
        cut = self.plan.get((self.attempt, self.t))
        if cut is not None:
            return cut
        self.last_source = ["correction" if self.t >= 2 else "policy"]
        return super().act(obs)


def run(tmp_path, name, seeds, plan, hooks=()):
    sim = TaskSim(TASK, num_envs=1)
    store = EpisodeStore.create(tmp_path / f"{name}.zarr", store_features(sim), task=TASK)
    env = HostBatch(sim, FixedSeeds(seeds))
    writer = StoreWriter(store, source="policy", collector="test")
    engine = RolloutEngine(env, ScriptedCuts(sim.action_dim, plan), hooks=[writer, *hooks])
    engine.run()
    return engine, store


def arrays(store):
    return {k: store.read(k) for k in store.features}


def test_a_discarded_and_replayed_episode_records_what_an_uncut_run_records(tmp_path):
    _, plain = run(tmp_path, "plain", [5, 6], {})
    engine, cut = run(tmp_path, "cut", [5, 6], {(0, 4): EndEpisodes([0], discard=True, repeat=True)})
    assert engine.episodes_done == 2 and cut.num_episodes == 2 and cut.column("seed").tolist() == [5, 6]
    a, b = arrays(plain), arrays(cut)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    src = cut.get_episode(0, ["source"])["source"]
    assert src[:2].tolist() == [SOURCE_CODES["policy"]] * 2 and set(src[2:].tolist()) == {SOURCE_CODES["correction"]}


def test_kept_cut_sets_success_an_empty_episode_stores_nothing_and_stop_ends_the_run(tmp_path):
    plan = {(0, 3): EndEpisodes([0], success=[True]), (1, 0): EndEpisodes([0])}
    engine, store = run(tmp_path, "keep", [7, 8, 9], plan)
    assert engine.episodes_done == 3 and store.num_episodes == 2  # seed 8 ended before its first step
    assert store.episode_lengths[0] == 3 and bool(store.column("success")[0])
    assert store.column("seed").tolist() == [7, 9]

    class StopAtFirstEnd(Hook):
        def on_episode_end(self, engine, row, episode, seed, step):
            engine.stop()

    engine, store = run(tmp_path, "stop", [7, 8, 9], {}, hooks=[StopAtFirstEnd()])
    assert store.num_episodes == 1 and engine.env.slot_seed[0] == 7  # the slot was not given seed 8
    with pytest.raises(RuntimeError, match="stopped"):
        engine.run()
    engine, store = run(tmp_path, "quit", [7, 8], {(0, 2): EndEpisodes([0], discard=True, stop=True)})
    assert store.num_episodes == 0 and engine.stopped and engine.episodes_done == 0
    with pytest.raises(ValueError, match="discard=True"):
        run(tmp_path, "bad", [7], {(0, 1): EndEpisodes([0], repeat=True)})
