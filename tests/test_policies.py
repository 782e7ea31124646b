"""Policies on tiny synthetic batches: overfitting, closed-loop queues, hierarchy, checkpoints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from robolearn.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_policy,
    load_tensors,
    save_checkpoint,
    save_policy,
)
from robolearn.config import ConfigError
from robolearn.data.schema import Feature
from robolearn.nn.ema import EMA
from robolearn.policies import POLICIES, make_policy, policy_classes
from robolearn.policies.bc.configuration import BCConfig
from robolearn.policies.configuration import PolicyConfig, VisionConfig, load_run_config
from robolearn.policies.diffusion.configuration import DiffusionConfig
from robolearn.policies.hierarchical.configuration import HierarchicalConfig

STATE_DIM, ACTION_DIM = 4, 2


def features(image_shape: tuple[int, ...] | None = None) -> dict[str, Feature]:
    feats = {"obs/state": Feature("float32", (STATE_DIM,), "obs"), "action": Feature("float32", (ACTION_DIM,), "action")}
    if image_shape is not None:
        feats["obs/image"] = Feature("uint8", image_shape, "obs")
    return feats


def stats_for(state: torch.Tensor, actions: torch.Tensor) -> dict[str, dict[str, np.ndarray]]:
    def one(x: torch.Tensor) -> dict[str, np.ndarray]:
        flat = x.reshape(-1, x.shape[-1]).double().numpy()
        return {"min": flat.min(0), "max": flat.max(0), "mean": flat.mean(0), "std": flat.std(0),
                "q01": np.quantile(flat, 0.01, axis=0), "q99": np.quantile(flat, 0.99, axis=0)}

    return {"obs/state": one(state), "action": one(actions)}


def chunk_batch(n_obs_steps: int, horizon: int, size: int = 32, seed: int = 0) -> dict:
    """Windows whose action chunk is a fixed smooth function of the current state."""
    gen = torch.Generator().manual_seed(seed)
    state = torch.rand(size, n_obs_steps, STATE_DIM, generator=gen) * 4.0 - 1.0
    t = torch.linspace(0, 1, horizon)[None]
    current = state[:, -1] / 2.0
    actions = torch.stack(
        [torch.sin(1.5 * t + 2.0 * current[:, :1]), current[:, 1:2] * t + current[:, 2:3] * current[:, 3:4] * (1 - t)], -1
    )
    return {
        "obs": {"state": state},
        "action": 3.0 * actions + 0.5,  # env units differ from the normalized [-1, 1] range
        "pad_mask": torch.ones(size, horizon, dtype=torch.bool),
        "weight": torch.ones(size),
    }


def build(name: str, config, batch: dict):
    config = config.with_features(features())
    return make_policy(name, config, stats_for(batch["obs"]["state"], batch["action"]))


def train(policy, batch: dict, steps: int, lr: float) -> tuple[float, float]:
    """(mean loss of the first 10 steps, of the last 10 steps)."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    losses = []
    policy.train()
    for _ in range(steps):
        loss = policy.compute_loss(batch)
        assert loss.shape == (batch["action"].shape[0],)
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
        losses.append(loss.mean().item())
    policy.eval()
    return float(np.mean(losses[:10])), float(np.mean(losses[-10:]))


def tiny_bc(**kw) -> BCConfig:
    return BCConfig(**{"n_obs_steps": 2, "horizon": 4, "n_action_steps": 2, "hidden_dims": [64, 64], **kw})


def tiny_diffusion(**kw) -> DiffusionConfig:
    return DiffusionConfig(
        **{"n_obs_steps": 2, "horizon": 8, "n_action_steps": 4, "down_dims": [16, 32], "diffusion_step_embed_dim": 32, **kw}
    )


# -- overfitting ------------------------------------------------------------------------------


def test_bc_deterministic_overfits():
    batch = chunk_batch(2, 4)
    policy = build("bc", tiny_bc(), batch)
    first, last = train(policy, batch, steps=300, lr=3e-3)
    assert last < first / 50
    error = (policy.predict_action(batch["obs"]) - batch["action"]).abs().max()
    assert error < 0.3  # actions span about [-2.5, 3.5] in env units


def test_bc_gmm_overfits():
    # At lr 3e-3 the GMM NLL spiked by >1 nat many times as the stds shrank, so the last-10-step mean
    # landed on a random phase of that oscillation and only 5 of init seeds 0-9 passed. At lr 1e-3
    # all of seeds 0-9 pass with margin (NLL drop 2.23-3.89 nats after 600 steps, mse/var <= 0.042),
    # so any seed is a fair test; 0 is used.
    torch.manual_seed(0)
    batch = chunk_batch(2, 4)
    policy = build("bc", tiny_bc(head="gmm", gmm_num_modes=2, gmm_inference="mode", hidden_dims=[128, 128]), batch)
    first, last = train(policy, batch, steps=600, lr=1e-3)
    assert last < first - 1.5  # NLL per dimension (goes negative as stds shrink)
    mse = ((policy.predict_action(batch["obs"]) - batch["action"]) ** 2).mean()
    assert mse < 0.1 * batch["action"].var()


def test_diffusion_overfits():
    batch = chunk_batch(2, 8)
    policy = build("diffusion", tiny_diffusion(), batch)
    first, last = train(policy, batch, steps=500, lr=2e-3)
    assert last < first / 8
    predicted = policy.predict_action(batch["obs"], generator=torch.Generator().manual_seed(0))
    assert predicted.shape == batch["action"].shape
    assert ((predicted - batch["action"]) ** 2).mean() < 0.25 * batch["action"].var()


def test_loss_is_per_sample_so_callers_can_weight_it():
    batch = chunk_batch(2, 4, size=6)
    policy = build("bc", tiny_bc(), batch)
    losses = policy.compute_loss(batch)
    single = policy.compute_loss({"obs": {"state": batch["obs"]["state"][2:3]}, "action": batch["action"][2:3]})
    assert torch.allclose(losses[2:3], single, atol=1e-6)


# -- closed-loop execution ------------------------------------------------------------------------


def test_select_action_executes_the_queue_then_replans_per_env():
    batch = chunk_batch(2, 4, size=3)
    policy = build("bc", tiny_bc(), batch).eval()
    obs = batch["obs"]
    chunk = policy.predict_action(obs)
    start = policy.config.n_obs_steps - 1
    assert torch.allclose(policy.select_action(obs), chunk[:, start])
    other = {"state": obs["state"] + 1.0}
    # The second action still comes from the first chunk although observations changed.
    assert torch.allclose(policy.select_action(other), chunk[:, start + 1])
    new_chunk = policy.predict_action(other)
    assert torch.allclose(policy.select_action(other), new_chunk[:, start])
    # Resetting one environment replans only that one.
    policy.reset(torch.tensor([False, True, False]))
    action = policy.select_action(obs)
    assert torch.allclose(action[[0, 2]], new_chunk[[0, 2], start + 1])
    assert torch.allclose(action[1], chunk[1, start])
    policy.reset()
    assert torch.allclose(policy.select_action(obs), chunk[:, start])


# -- image mode -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bc", "diffusion"])
def test_image_mode_forward_backward(name):
    image_shape = (16, 16, 3)
    batch = chunk_batch(2, 8, size=4)
    batch["obs"]["image"] = torch.randint(0, 256, (4, 2, *image_shape), dtype=torch.uint8)
    vision = VisionConfig(crop_shape=[12, 12], channels=[8, 16], num_keypoints=4, feature_dim=8)
    kw = {"image_keys": ["image"], "vision": vision}
    config = tiny_bc(horizon=8, **kw) if name == "bc" else tiny_diffusion(**kw)
    config = config.with_features(features(image_shape))
    assert config.input_shapes["image"] == list(image_shape)
    policy = make_policy(name, config, stats_for(batch["obs"]["state"], batch["action"]))
    loss = policy.compute_loss(batch)
    assert loss.shape == (4,)
    loss.mean().backward()
    encoder = policy.obs_encoder.image_encoders["image"]
    assert encoder.stem[0].weight.grad is not None and encoder.stem[0].weight.grad.abs().sum() > 0
    policy.eval()
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    actions = policy.predict_action(batch["obs"], generator=gen())
    assert actions.shape == (4, 8, ACTION_DIM)
    assert torch.equal(actions, policy.predict_action(batch["obs"], generator=gen()))  # center crop in eval
    with pytest.raises(ValueError, match="observation 'image' must have shape"):
        policy.predict_action({**batch["obs"], "image": batch["obs"]["image"][:, :, :8]})


# -- hierarchical -------------------------------------------------------------------------------------

NUM_PRIMITIVES = 3
DIRECTIONS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])


def stage_of(progress: torch.Tensor) -> torch.Tensor:
    return (progress * NUM_PRIMITIVES).long().clamp(0, NUM_PRIMITIVES - 1)


def staged_batch(size: int = 192, seed: int = 0) -> dict:
    """A task whose progress (state[0]) defines the primitive; each primitive moves one way.

    A third of the windows cross into the next stage, a sixth are failures that fall from stage 1
    back to stage 0 (labels go back to 0, like a cable slipping out of a clip).
    """
    gen = torch.Generator().manual_seed(seed)
    now = torch.rand(size, generator=gen)
    before = (now - 0.08 * torch.rand(size, generator=gen)).clamp(min=0)
    crossing = torch.arange(size) % 6 < 2
    boundary = torch.tensor([1 / 3, 2 / 3])[torch.randint(0, 2, (size,), generator=gen)]
    before = torch.where(crossing, boundary - 0.1 * torch.rand(size, generator=gen), before)
    now = torch.where(crossing, boundary + 0.1 * torch.rand(size, generator=gen), now)
    failure = torch.arange(size) % 6 == 2
    before = torch.where(failure, 0.4 + 0.25 * torch.rand(size, generator=gen), before)
    now = torch.where(failure, 0.3 * torch.rand(size, generator=gen), now)
    noise = torch.randn(size, 2, STATE_DIM - 1, generator=gen) * 0.1
    state = torch.cat([torch.stack([before, now], 1)[..., None], noise], -1)
    horizon = 4
    labels = torch.stack([stage_of(before)] + [stage_of(now)] * (horizon - 1), 1)
    actions = DIRECTIONS[stage_of(now)][:, None].repeat(1, horizon, 1)
    return {
        "obs": {"state": state},
        "action": actions,
        "pad_mask": torch.ones(size, horizon, dtype=torch.bool),
        "weight": torch.ones(size),
        "primitive": labels,
    }


def hierarchical_config(mode: str = "conditioned", **kw) -> HierarchicalConfig:
    return HierarchicalConfig(
        num_primitives=NUM_PRIMITIVES,
        low_level_mode=mode,
        bc=BCConfig(n_obs_steps=2, horizon=4, n_action_steps=2, hidden_dims=[64, 64]),
        high_level_hidden_dims=[64, 64],
        termination_hidden_dims=[64, 64],
        termination_pos_weight=2.0,
        **kw,
    )


def state_window(before: float, now: float) -> dict[str, torch.Tensor]:
    state = torch.zeros(1, 2, STATE_DIM)
    state[0, :, 0] = torch.tensor([before, now])
    return {"state": state}


@pytest.mark.parametrize("mode", ["conditioned", "per_primitive"])
def test_hierarchical_learns_selection_termination_and_retries(mode):
    batch = staged_batch()
    policy = build("hierarchical", hierarchical_config(mode), batch)
    first, last = train(policy, batch, steps=400, lr=3e-3)
    assert last < first / 20
    previous, current = batch["primitive"][:, 0], batch["primitive"][:, 1]
    with torch.no_grad():
        chosen = policy.primitive_logits(batch["obs"]).argmax(-1)
        ended = policy.termination_prob(batch["obs"], previous) > 0.5
    assert (chosen == current).float().mean() > 0.95
    assert (ended == (previous != current)).float().mean() > 0.95
    assert ended[previous != current].float().mean() > 0.9  # boundaries are rare yet learned

    # Closed loop: progress through stage 0 into stage 1, then a failure drops back to stage 0.
    trace = [(0.10, 0.10), (0.10, 0.20), (0.20, 0.45), (0.45, 0.55), (0.55, 0.15), (0.15, 0.20)]
    active, actions = [], []
    policy.reset()
    for before, now in trace:
        actions.append(policy.select_action(state_window(before, now))[0])
        active.append(int(policy.active_primitive[0]))
    assert active == [0, 0, 1, 1, 0, 0]  # the retry emerges: primitive 0 is re-selected
    for primitive, action in zip(active, actions):
        assert torch.allclose(action, DIRECTIONS[primitive], atol=0.15)


def test_hierarchical_times_out_and_requeries():
    batch = staged_batch(size=12)
    policy = build("hierarchical", hierarchical_config(max_primitive_steps=3), batch).eval()
    calls = []
    original = policy.primitive_logits

    def counting(obs, stage=None):
        calls.append(1)
        return original(obs, stage)

    policy.primitive_logits = counting
    policy.termination_prob = lambda obs, primitive, stage=None: torch.zeros(primitive.shape[0])  # never ends
    for _ in range(7):
        policy.select_action(state_window(0.1, 0.1))
    assert len(calls) == 3  # steps 0, 3 and 6


def test_hierarchical_with_diffusion_low_level_trains_and_round_trips(tmp_path):
    batch = staged_batch(size=16)
    batch["action"] = batch["action"].repeat(1, 2, 1)
    batch["primitive"] = batch["primitive"].repeat(1, 2)
    config = HierarchicalConfig(
        num_primitives=NUM_PRIMITIVES,
        low_level_type="diffusion",
        diffusion=tiny_diffusion(),
        high_level_hidden_dims=[32],
        termination_hidden_dims=[32],
    )
    policy = build("hierarchical", config, batch)
    train(policy, batch, steps=3, lr=1e-3)
    save_policy(policy, tmp_path / "ckpt")
    loaded = load_policy(tmp_path / "ckpt")
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(policy.predict_action(batch["obs"], generator=gen()), loaded.predict_action(batch["obs"], generator=gen()))


def object_centric_batch(size: int = 256, seed: int = 0, horizon: int = 4) -> dict:
    """state = [robot, object 0, object 1, object 0 done]; the stage is the done flag and the
    action moves the robot towards the stage's object (first dim) and reports the robot (second)."""
    gen = torch.Generator().manual_seed(seed)
    state = torch.rand(size, 2, STATE_DIM, generator=gen) * 2 - 1
    stage = (torch.rand(size, generator=gen) < 0.5).long()
    state[:, :, 3] = stage[:, None].float()
    robot, target = state[:, -1, 0], state[:, -1, 1:3].gather(1, stage[:, None]).squeeze(1)
    actions = torch.stack([target - robot, robot], -1)[:, None].repeat(1, horizon, 1)
    return {
        "obs": {"state": state},
        "action": actions,
        "pad_mask": torch.ones(size, horizon, dtype=torch.bool),
        "weight": torch.ones(size),
        "primitive": torch.zeros(size, horizon, dtype=torch.long),
        "stage": stage[:, None].repeat(1, horizon),
    }


def test_object_centric_hierarchical_acts_on_the_selected_stage_object(tmp_path):
    batch = object_centric_batch()
    config = HierarchicalConfig(num_primitives=1, bc=BCConfig(n_obs_steps=2, horizon=4, n_action_steps=2, hidden_dims=[64, 64]),
                                high_level_hidden_dims=[64, 64], termination_hidden_dims=[32],
                                object_centric=True, stage_obs_columns=[[0, 1, 3], [0, 2, 3]])
    assert config.extra_batch_keys == ("primitive", "stage")
    policy = build("hierarchical", config, batch)
    assert policy.low_level[0].obs_encoder.out_dim == 2 * 3  # robot, the stage's object, flag; 2 steps
    first, last = train(policy, batch, steps=500, lr=3e-3)
    assert last < first / 10
    policy.eval()
    with torch.no_grad():
        stage = policy.stage_logits(batch["obs"]).argmax(-1)
        actions = policy.predict_action(batch["obs"])
    assert (stage == batch["stage"][:, 0]).float().mean() > 0.95
    assert (actions - batch["action"]).abs().mean() < 0.1
    # In stage 0 the low level never sees object 1: moving it changes nothing.
    obs = {"state": batch["obs"]["state"][:4].clone()}
    zero = torch.zeros(4, dtype=torch.long)
    before = policy.predict_action(obs, primitive=zero, stage=zero)
    obs["state"][:, :, 2] += 0.7
    assert torch.equal(before, policy.predict_action(obs, primitive=zero, stage=zero))
    save_policy(policy, tmp_path / "ckpt")
    loaded = load_policy(tmp_path / "ckpt")
    assert loaded.config.stage_obs_columns == [[0, 1, 3], [0, 2, 3]]
    assert torch.equal(policy.predict_action(batch["obs"]), loaded.predict_action(batch["obs"]))


def test_stage_sliced_heads_judge_the_selected_object_only():
    """The primitive to run depends on the stage's object (its sign); the heads see only its slice."""
    batch = object_centric_batch(size=512, seed=1)
    state, stage = batch["obs"]["state"], batch["stage"][:, 0]
    primitive = (state[:, -1, 1:3].gather(1, stage[:, None]).squeeze(1) > 0).long()
    batch["primitive"] = primitive[:, None].repeat(1, batch["action"].shape[1])
    config = HierarchicalConfig(num_primitives=2, bc=BCConfig(n_obs_steps=2, horizon=4, n_action_steps=2, hidden_dims=[64, 64]),
                                high_level_hidden_dims=[64, 64], termination_hidden_dims=[32], object_centric=True,
                                stage_sliced_heads=True, stage_obs_columns=[[0, 1, 3], [0, 2, 3]])
    policy = build("hierarchical", config, batch)
    assert policy.selector.in_dim == 2 * 3 and policy.stage_selector.in_dim == 2 * STATE_DIM
    train(policy, batch, steps=400, lr=3e-3)
    policy.eval()
    with torch.no_grad():
        assert (policy.primitive_logits(batch["obs"]).argmax(-1) == primitive).float().mean() > 0.95
        obs = {"state": state[:8].clone()}
        zero = torch.zeros(8, dtype=torch.long)
        before = policy.primitive_logits(obs, zero), policy.termination_prob(obs, zero, zero)
        obs["state"][:, :, 2] += 0.7  # object 1 moves: stage 0's heads do not see it
        after = policy.primitive_logits(obs, zero), policy.termination_prob(obs, zero, zero)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    with pytest.raises(ConfigError, match="needs object_centric"):
        HierarchicalConfig(stage_sliced_heads=True)


def test_first_not_done_stage_head_reads_each_object_on_its_own():
    """Stage = first object not done; each object's "done" logit comes from its own slice."""
    batch = object_centric_batch(size=512, seed=2)
    state = batch["obs"]["state"]
    state[:, :, 3] = 0.0  # no stage flag: object k is done when its value is above 0.5
    stage = (state[:, -1, 1] > 0.5).long()
    state[:, :, 2] = state[:, :, 2].clamp(max=0.5)  # the last object is never done before the end
    batch["stage"] = stage[:, None].repeat(1, batch["action"].shape[1])
    config = HierarchicalConfig(num_primitives=1, bc=BCConfig(n_obs_steps=2, horizon=4, n_action_steps=2, hidden_dims=[64, 64]),
                                high_level_hidden_dims=[64, 64], termination_hidden_dims=[32], object_centric=True,
                                stage_head="first_not_done", stage_obs_columns=[[0, 1, 3], [0, 2, 3]])
    policy = build("hierarchical", config, batch)
    assert policy.stage_selector.in_dim == 2 * 3 and policy.stage_selector.out_dim == 1  # one shared done head
    train(policy, batch, steps=500, lr=3e-3)
    policy.eval()
    with torch.no_grad():
        stage = policy.stage_logits(batch["obs"]).argmax(-1)
        done = policy.object_done_logits(batch["obs"])
    assert (stage == batch["stage"][:, 0]).float().mean() > 0.95
    assert ((done[:, 0] > 0) == (batch["stage"][:, 0] > 0)).float().mean() > 0.95  # object 0 done <=> stage 1
    with pytest.raises(ConfigError, match="stage_head must be one of"):
        HierarchicalConfig(object_centric=True, stage_head="nearest")


@pytest.mark.parametrize("requery", [False, True])
def test_object_centric_policy_requeries_when_the_stage_changes(requery):
    batch = object_centric_batch(size=16)
    config = HierarchicalConfig(num_primitives=1, bc=BCConfig(n_obs_steps=2, horizon=4, n_action_steps=1, hidden_dims=[16]),
                                high_level_hidden_dims=[16], termination_hidden_dims=[16], object_centric=True,
                                requery_on_stage_change=requery, stage_obs_columns=[[0, 1, 3], [0, 2, 3]])
    policy = build("hierarchical", config, batch).eval()
    calls = []
    current = [0]

    def stage_logits(obs):
        return torch.nn.functional.one_hot(torch.full((obs["state"].shape[0],), current[0]), 2).float()

    original = policy.primitive_logits
    policy.stage_logits = stage_logits
    policy.primitive_logits = lambda obs, stage=None: calls.append(int(stage[0])) or original(obs, stage)
    policy.termination_prob = lambda obs, primitive, stage=None: torch.zeros(primitive.shape[0])  # never ends
    obs = {"state": batch["obs"]["state"][:1]}
    for step in range(5):
        current[0] = 0 if step < 2 else 1
        policy.select_action(obs)
    assert calls == ([0, 1] if requery else [0])  # re-queried on the step the stage changed
    assert int(policy._active_stage[0]) == (1 if requery else 0)


def test_object_centric_columns_come_from_the_task():
    config = HierarchicalConfig(num_primitives=5, object_centric=True)
    sort3 = config.with_task("sort", {"num_cubes": 3})
    assert sort3.num_stages == 3 and all(len(c) == 14 for c in sort3.stage_obs_columns)
    assert sort3.stage_obs_columns[2][5:] == [19, 20, 21, 22, 23, 24, 25, 30, 31]  # cube 2 pose, bin 2 xy
    reordered = HierarchicalConfig(num_primitives=5, object_centric=True, stage_obs_others=True).with_task(
        "sort", {"num_cubes": 3}).stage_obs_columns
    assert all(sorted(c) == list(range(32)) for c in reordered)  # every column, the stage's object first
    assert reordered[1][:14] == sort3.stage_obs_columns[1]
    with pytest.raises(ConfigError, match="does not define"):
        config.with_task("push_cube")
    with pytest.raises(ConfigError, match="same, non-zero number"):
        HierarchicalConfig(object_centric=True, stage_obs_columns=[[0, 1], [0]])
    assert HierarchicalConfig().with_task("push_cube").stage_obs_columns == []  # off: untouched


def test_hierarchical_needs_labels_and_history():
    batch = staged_batch(size=8)
    policy = build("hierarchical", hierarchical_config(), batch)
    assert policy.config.extra_batch_keys == ("primitive",) and tiny_bc().extra_batch_keys == ()
    with pytest.raises(KeyError, match="no 'primitive' labels"):
        policy.compute_loss({k: v for k, v in batch.items() if k != "primitive"})
    bad = dict(batch, primitive=batch["primitive"] + NUM_PRIMITIVES)
    with pytest.raises(ValueError, match="num_primitives"):
        policy.compute_loss(bad)
    unknown = dict(batch, primitive=torch.full_like(batch["primitive"], -1))
    assert torch.equal(policy.compute_loss(unknown), torch.zeros(8))
    with pytest.raises(ConfigError, match="n_obs_steps must be >= 2"):
        HierarchicalConfig(bc=BCConfig(n_obs_steps=1))


# -- checkpoints ------------------------------------------------------------------------------------


def _trained(name: str):
    if name == "hierarchical":
        batch = staged_batch(size=16)
        policy = build(name, hierarchical_config(), batch)
    elif name == "diffusion":
        batch = chunk_batch(2, 8, size=8)
        policy = build(name, tiny_diffusion(), batch)
    else:
        batch = chunk_batch(2, 4, size=8)
        policy = build("bc", tiny_bc(head="gmm") if name == "bc_gmm" else tiny_bc(), batch)
    train(policy, batch, steps=5, lr=1e-3)
    return policy, batch


@pytest.mark.parametrize("name", ["bc", "bc_gmm", "diffusion", "hierarchical"])
def test_save_load_gives_identical_actions(tmp_path, name):
    policy, batch = _trained(name)
    path = save_policy(policy, tmp_path / "ckpt", step=5, task="push_cube")
    loaded = load_policy(path)
    assert type(loaded) is type(policy) and loaded.config == policy.config
    assert not loaded.training
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert torch.equal(policy.predict_action(batch["obs"], generator=gen()), loaded.predict_action(batch["obs"], generator=gen()))
    g1, g2 = gen(), gen()
    for _ in range(3):
        assert torch.equal(policy.select_action(batch["obs"], generator=g1), loaded.select_action(batch["obs"], generator=g2))
    meta = json.loads((path / "checkpoint.json").read_text())
    assert meta["policy"] == policy.name and meta["step"] == 5 and meta["task"] == "push_cube"
    assert meta["features"]["action"] == {"dtype": "float32", "shape": [ACTION_DIM], "role": "action"}
    assert set(meta["normalizer"]["stats"]) == {"obs/state", "action"}


def test_ema_weights_and_extra_groups_round_trip(tmp_path):
    policy, batch = _trained("bc")
    ema = EMA(policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    for _ in range(3):
        optimizer.zero_grad()
        policy.compute_loss(batch).mean().backward()
        optimizer.step()
        ema.update(policy)
    extra = {"rng": {"torch": torch.get_rng_state()}}
    save_policy(policy, tmp_path / "ckpt", weights=ema.state_dict(), extra_groups=extra, extra_meta={"ema_updates": ema.num_updates})
    loaded = load_policy(tmp_path / "ckpt")
    assert torch.equal(loaded.predict_action(batch["obs"]), ema.model.predict_action(batch["obs"]))
    assert torch.equal(load_tensors(tmp_path / "ckpt", "rng")["torch"], extra["rng"]["torch"])
    _, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta["ema_updates"] == 3 and set(meta["tensor_files"]) == {"model", "rng"}
    with pytest.raises(CheckpointError, match="no tensor group 'optimizer'"):
        load_tensors(tmp_path / "ckpt", "optimizer")


@pytest.fixture()
def saved_bc(tmp_path):
    policy, _ = _trained("bc")
    return save_policy(policy, tmp_path / "ckpt")


def _edit_meta(path, **changes):
    meta = json.loads((path / "checkpoint.json").read_text())
    for key, value in changes.items():
        node, *rest = key.split(".")
        if rest:
            meta[node][rest[0]] = value
        else:
            meta[node] = value
    (path / "checkpoint.json").write_text(json.dumps(meta))


def test_bad_checkpoints_give_clear_errors(tmp_path, saved_bc):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a robolearn checkpoint"):
        load_policy(tmp_path / "empty")

    weights = (saved_bc / "model.safetensors").read_bytes()
    (saved_bc / "model.safetensors").write_bytes(weights[:-8] + b"\x00" * 8)
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_policy(saved_bc)
    (saved_bc / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load_policy(saved_bc)
    (saved_bc / "model.safetensors").write_bytes(weights)
    load_policy(saved_bc)

    text = (saved_bc / "checkpoint.json").read_text()
    (saved_bc / "checkpoint.json").write_text(text[:-20])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_policy(saved_bc)
    (saved_bc / "checkpoint.json").write_text(text)

    _edit_meta(saved_bc, format_version=99)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_policy(saved_bc)
    (saved_bc / "checkpoint.json").write_text(text)

    _edit_meta(saved_bc, policy="transformer")
    with pytest.raises(CheckpointError, match="'transformer', which is not registered"):
        load_policy(saved_bc)
    (saved_bc / "checkpoint.json").write_text(text)

    _edit_meta(saved_bc, **{"config.hidden_dims": [32, 32]})
    with pytest.raises(CheckpointError, match="weight shapes differ"):
        load_policy(saved_bc)
    _edit_meta(saved_bc, **{"config.hidden_dims": [64, 64, 64]})
    with pytest.raises(CheckpointError, match="weights missing head.net.6.bias, head.net.6.weight, unexpected none"):
        load_policy(saved_bc)
    (saved_bc / "checkpoint.json").write_text(text)

    _edit_meta(saved_bc, **{"config.hiden_dims": [64]})
    with pytest.raises(CheckpointError, match="unknown key"):
        load_policy(saved_bc)
    (saved_bc / "checkpoint.json").write_text(text)

    _edit_meta(saved_bc, normalizer={"modes": {}})
    with pytest.raises(CheckpointError, match="normalizer"):
        load_policy(saved_bc)


def test_save_checkpoint_rejects_bad_metadata(tmp_path):
    tensors = {"w": torch.zeros(2)}
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(tmp_path / "a", tensors, {"format_version": 2})
    with pytest.raises(CheckpointError, match="not JSON-serializable"):
        save_checkpoint(tmp_path / "b", tensors, {"bad": object()})
    with pytest.raises(CheckpointError, match="not JSON-serializable"):
        save_checkpoint(tmp_path / "c", tensors, {"bad": math.nan})
    path = save_checkpoint(tmp_path / "d", tensors, {"stats": np.arange(3.0), "n": np.int64(4)})
    loaded, meta = load_checkpoint(path)
    assert torch.equal(loaded["w"], tensors["w"]) and meta["stats"] == [0.0, 1.0, 2.0] and meta["n"] == 4
    assert sorted(p.name for p in path.iterdir()) == ["checkpoint.json", "model.safetensors"]  # no temp files left


# -- configs ------------------------------------------------------------------------------------------


def test_registry_and_default_yamls_load():
    assert {"bc", "diffusion", "hierarchical"} <= set(POLICIES)
    for name in ("bc", "diffusion", "hierarchical"):  # the `robolearn train` policies (others load from checkpoints)
        run = load_run_config(f"policies/{name}.yaml")
        assert isinstance(run.policy, policy_classes(name)[0]) and run.name == name
    run = load_run_config("policies/diffusion.yaml", ["policy.num_inference_steps=16", "train.lr=3e-4"])
    assert run.policy.num_inference_steps == 16 and run.train.lr == 3e-4
    assert (run.policy.n_obs_steps, run.policy.horizon, run.policy.n_action_steps) == (2, 16, 8)


def test_bad_configs_give_clear_errors():
    with pytest.raises(ConfigError, match="unknown key"):
        load_run_config("policies/bc.yaml", ["policy.hiden_dims=[8]"])
    with pytest.raises(ConfigError, match="is a 'bc' config, expected 'diffusion'"):
        load_run_config("policies/bc.yaml", name="diffusion")
    with pytest.raises(KeyError, match="unknown policy 'gpt'"):
        load_run_config(None, ["name=gpt"])
    with pytest.raises(ConfigError, match="must cover the executed actions"):
        PolicyConfig(n_obs_steps=2, horizon=4, n_action_steps=4)
    with pytest.raises(ConfigError, match="multiple of 4"):
        DiffusionConfig(horizon=10, down_dims=[16, 32, 64])
    with pytest.raises(ConfigError, match="head must be one of"):
        BCConfig(head="flow")
    with pytest.raises(ConfigError, match="with_features"):
        policy_classes("bc")[1].from_stats(tiny_bc(), {})
    with pytest.raises(ConfigError, match="lacks features obs/image"):
        tiny_bc(image_keys=["image"]).with_features(features())
    with pytest.raises(KeyError, match="stats lack obs/state"):
        make_policy("bc", tiny_bc().with_features(features()), {})
