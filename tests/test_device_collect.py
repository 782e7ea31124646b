"""`robolearn collect --backend warp-cpu`: the scripted expert batched on MuJoCo Warp (Warp's CPU
device) writes the same store as the host collector (MuJoCo C) for the same seeds.

Kernels come from Warp's kernel cache (~/.cache/warp/<version>); a cold cache adds ~1-2 min.
"""

from __future__ import annotations

import numpy as np
import pytest

from robolearn.data.store import EpisodeStore
from robolearn.tasks.collect import collect
from robolearn.tasks.registry import build_model, load_task_config

try:
    import mujoco_warp  # noqa: F401
    import warp  # noqa: F401

    HAVE_WARP = True
except ImportError:
    HAVE_WARP = False

pytestmark = pytest.mark.skipif(not HAVE_WARP, reason="MuJoCo Warp not installed (extra 'gpu')")


def _layout(task):
    from robolearn.tasks.base import ModelLayout

    return ModelLayout(build_model(task, load_task_config(task, []))[1])


def test_device_collect_matches_host_collector(tmp_path):
    """pick_place, 5 episodes on 2 envs (slots restart mid-run and go idle at the end), noise 0.1
    (DART labels and the noise stream): same episodes, lengths, seeds, successes, expert modes,
    primitives and stages; actions, obs and qpos/qvel of sim_state within float32 tolerance."""
    kw = dict(num_envs=2, noise=0.1, seed=5, progress=False)
    host = collect("pick_place", 5, tmp_path / "host", **kw)
    dev = collect("pick_place", 5, tmp_path / "dev", backend="warp-cpu", **kw)
    assert {k: host[k] for k in ("episodes", "steps", "successes")} == {k: dev[k] for k in ("episodes", "steps", "successes")}
    a, b = EpisodeStore.open(tmp_path / "host"), EpisodeStore.open(tmp_path / "dev")
    assert set(a.features) == set(b.features)
    for k in a.features:
        assert (a.features[k].shape, a.features[k].dtype) == (b.features[k].shape, b.features[k].dtype), k
    np.testing.assert_array_equal(a.episode_lengths, b.episode_lengths)
    ta, tb = a.episode_table(), b.episode_table()
    for col in ("seed", "success", "collector"):
        np.testing.assert_array_equal(ta[col], tb[col])
    assert b.task == "pick_place"
    layout = _layout("pick_place")
    phys = np.r_[layout.state_slices["qpos"], layout.state_slices["qvel"]]
    modes = set()
    for i in range(a.num_episodes):
        ma, mb = a.episode_metadata(i), b.episode_metadata(i)
        assert mb.pop("backend") == "warp-cpu"
        assert ma == mb
        modes.add(ma["expert_mode"])
        ea, eb = a.get_episode(i), b.get_episode(i)
        for k in ("primitive", "stage", "failure_event", "done", "source"):
            np.testing.assert_array_equal(ea[k], eb[k], err_msg=k)
        for k, tol in (("action", 1e-4), ("expert_action", 1e-4), ("obs/state", 1e-3), ("reward", 1e-3)):
            np.testing.assert_allclose(ea[k], eb[k], atol=tol, err_msg=k)
        np.testing.assert_allclose(ea["sim_state"][:, phys], eb["sim_state"][:, phys], atol=5e-3)
    assert modes == {0, 1}  # both grasp modes drawn: the mode stream is the host's


def test_device_collect_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="perturbations"):
        collect("push_cube", 2, tmp_path / "p", perturb=0.05, backend="warp-cpu", progress=False)
    with pytest.raises(ValueError, match="state observations"):
        collect("push_cube", 2, tmp_path / "i", image=True, backend="warp-cpu", progress=False)
    assert not (tmp_path / "p").exists() and not (tmp_path / "i").exists()
