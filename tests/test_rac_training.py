"""Training as RaC does: fine-tuning from the base checkpoint (weights and normalizer), for the MLP,
diffusion (chunked) and hierarchical policies, and mixtures that leave out the policy's failing
segments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robolearn.checkpoint import load_tensors, read_meta
from robolearn.data.mixtures import mixture_weights
from robolearn.data.store import EpisodeStore, Feature
from robolearn.tasks.collect import collect
from robolearn.training import train

TINY = {
    "bc": ["policy.hidden_dims=[16,16]"],
    "diffusion": ["policy.down_dims=[16,32]", "policy.diffusion_step_embed_dim=16", "policy.horizon=8",
                  "policy.n_action_steps=4"],
    "hierarchical": ["policy.bc.hidden_dims=[16,16]", "policy.high_level_hidden_dims=[16]",
                     "policy.termination_hidden_dims=[16]"],
}
COMMON = ["train.batch_size=16", "train.val_ratio=0.0", "train.eval_episodes=0", "train.device=cpu", "train.num_workers=0"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("rac_train")
    collect("pick_place", episodes=3, out=root / "a.zarr", num_envs=3, seed=0, progress=False)
    collect("pick_place", episodes=3, out=root / "b.zarr", num_envs=3, seed=100, perturb=0.2, progress=False)
    return root


@pytest.mark.parametrize("policy", ["bc", "diffusion", "hierarchical"])
def test_fine_tuning_starts_from_the_base_weights_and_keeps_its_normalizer(stores, tmp_path, policy):
    base = train(policy, stores / "a.zarr", task="pick_place", out=tmp_path / "base", wandb_mode="off", progress=False,
                 overrides=[*TINY[policy], *COMMON, "train.steps=5"]) / "policy"
    # one step at a negligible learning rate on other data: the weights stay the base's
    tuned = train(policy, stores / "b.zarr", task="pick_place", out=tmp_path / "tuned", wandb_mode="off", progress=False,
                  overrides=[*TINY[policy], *COMMON, "train.steps=1", "train.lr=1e-12", "train.lr_warmup_steps=0"],
                  init_from=base) / "policy"
    scratch = train(policy, stores / "b.zarr", task="pick_place", out=tmp_path / "scratch", wandb_mode="off", progress=False,
                    overrides=[*TINY[policy], *COMMON, "train.steps=1", "train.lr=1e-12", "train.lr_warmup_steps=0",
                               "train.seed=7"])
    wb, wt, ws = (load_tensors(p) for p in (base, tuned, scratch / "policy"))
    assert set(wb) == set(wt)
    assert all(torch.allclose(wb[k].float(), wt[k].float(), atol=1e-5) for k in wb)
    assert not all(torch.allclose(wb[k].float(), ws[k].float(), atol=1e-5) for k in wb if k in ws)
    assert read_meta(tuned)["normalizer"] == read_meta(base)["normalizer"]
    assert read_meta(scratch / "policy")["normalizer"] != read_meta(base)["normalizer"]


def test_init_from_refuses_another_policy_or_other_shapes(stores, tmp_path):
    base = train("bc", stores / "a.zarr", task="pick_place", out=tmp_path / "base", wandb_mode="off", progress=False,
                 overrides=[*TINY["bc"], *COMMON, "train.steps=2"]) / "policy"
    with pytest.raises(ValueError, match="holds policy 'bc'"):
        train("diffusion", stores / "a.zarr", task="pick_place", out=tmp_path / "d", wandb_mode="off", progress=False,
              overrides=[*TINY["diffusion"], *COMMON, "train.steps=1"], init_from=base)
    with pytest.raises(ValueError, match="do not fit"):
        train("bc", stores / "a.zarr", task="pick_place", out=tmp_path / "w", wandb_mode="off", progress=False,
              overrides=["policy.hidden_dims=[8,8]", *COMMON, "train.steps=1"], init_from=base)


def test_intervention_mixtures_leave_out_the_failing_policy_segment(tmp_path):
    store = EpisodeStore.create(tmp_path / "m.zarr", {"obs/state": Feature("float32", (2,), "obs"),
                                                      "action": Feature("float32", (2,), "action")})
    # a demo; a policy segment that failed (then recovery + correction); a fully autonomous success
    eps = [(["demo"] * 4, True, 0), (["policy"] * 5 + ["recovery"] * 2 + ["correction"] * 3, False, 1),
           (["policy"] * 4, True, 0)]
    for src, success, n_int in eps:
        T = len(src)
        store.append_episode({"obs/state": np.zeros((T, 2), np.float32), "action": np.zeros((T, 2), np.float32),
                              "source": np.array(src)}, success=success, intervention_count=n_int)
    every = np.arange(3)
    failing = np.arange(4, 9)
    rac = mixture_weights(store, "rac", every).sampling
    hg = mixture_weights(store, "hg_dagger", every).sampling
    assert np.all(rac[failing] == 0) and np.all(rac[9:14] > 0) and np.all(rac[:4] > 0)
    assert np.all(rac[14:] > 0)  # RaC keeps the policy's own autonomous successes
    assert np.all(hg[failing] == 0) and np.all(hg[14:] == 0)
    sirius = mixture_weights(store, "sirius", every).loss_weights
    assert sirius[4:9].max() < sirius[9:14].min()  # pre-intervention steps weighted down
    iwr = mixture_weights(store, "iwr", every).sampling
    assert iwr[9:14].sum() == pytest.approx(iwr[np.r_[0:9, 14:18]].sum())  # half of each batch
