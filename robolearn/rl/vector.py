"""The online RL loop's interaction with many envs at once (`robolearn finetune` with
`finetune.num_envs > 1` or `--backend gpu|warp-cpu`).

It is the project's one rollout engine (robolearn.tasks.rollout.persistent_rollout) with SAC's
actor (`RLActor`) and a hook (`ReplayHook`) that writes every env's transition of a step into the
online replay buffer:

- host (`--backend cpu`, `finetune.num_envs=K`): a `TaskSim` of K MuJoCo C envs (numpy), replay
  on the host;
- device (`--backend gpu|warp-cpu`): a `DeviceVectorEnv` on MuJoCo Warp; observations, actions,
  rewards, done flags and the replay buffer (robolearn.rl.replay.ReplayBuffer with `device=`) stay
  torch tensors on the device. The host reads the device only every `refill_every` steps (to top
  up the ring of initial states and check for NaN actions / simulator errors, DeviceBatch) and
  when the loop logs its training returns.

Episodes restart at once in the env that finished them, with the seeds the loop hands out
(episode k: `seed(k)`); a finished episode's transition keeps its true last observation as
`next_obs` (the host's pre-restart observation; on the device the env's `final_obs`), and only a
termination (success) is a terminal transition, a time limit is bootstrapped, exactly as the
one-env loop does.

Checkpoints (`state_dict` / `load_state_dict`): on the host the envs' physics, generators, step
counters, observations and episode seeds are saved, so a resumed run continues them exactly; the
device envs are not saved (MuJoCo Warp's solver state is not part of the state vector): a resumed
device run starts fresh episodes.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from robolearn.tasks.rollout import Hook, RolloutEngine, Step


class RLActor:
    """SAC's stochastic actor (or uniform random actions during a random warm-up) over a batch of
    state observations: numpy in and out on the host, device tensors on a device env. Draws come
    from `generator` (on the agent's device)."""

    def __init__(self, agent: Any, generator: torch.Generator) -> None:
        self.agent, self.generator = agent, generator
        self.random = False  # uniform actions in [-1, 1] (the random warm-up of finetune.init=scratch)

    def reset(self, obs: dict[str, Any], rows: Any = None) -> None:
        pass

    def observe(self, obs: dict[str, Any]) -> None:
        pass

    def act(self, obs: dict[str, Any]) -> Any:
        x = obs["state"]
        host = not torch.is_tensor(x)
        agent = self.agent
        x = torch.as_tensor(x, dtype=torch.float32).to(agent.device)
        if self.random:
            a = torch.rand(x.shape[0], agent.action_dim, generator=self.generator, device=self.generator.device) * 2.0 - 1.0
        else:
            a, _ = agent.actor.sample(agent.norm(x), generator=self.generator)
        return a.cpu().numpy().astype(np.float64) if host else a


class ReplayHook(Hook):
    """Every env's (s, a, r * scale + bias, s', terminated) of each step into the replay buffer
    (one `add_batch`), plus the finished episodes' returns summed where the env lives (read by
    `take_returns`). A buffer that keeps returns-to-go (Cal-QL) gets its finished episodes' rows
    filled at each step where one ends: one more host read per step (whether any env finished)."""

    device_ok = True

    def __init__(self, buffer: Any, reward_scale: float, reward_bias: float, discount: float = 0.99) -> None:
        self.buffer, self.scale, self.bias, self.discount = buffer, float(reward_scale), float(reward_bias), float(discount)

    def on_start(self, engine: RolloutEngine, obs: Any) -> None:
        dev = engine.device
        self.length = torch.zeros(engine.num_envs, dtype=torch.int64, device=dev)  # steps of each env's running episode
        self.running = torch.zeros(engine.num_envs, dtype=torch.float64, device=dev)
        self.finished_sum = torch.zeros((), dtype=torch.float64, device=dev)
        self.finished_count = torch.zeros((), dtype=torch.int64, device=dev)

    def on_step(self, engine: RolloutEngine, step: Step, pre_obs: Any, action: Any, pre_state: Any) -> None:
        if engine.env.on_device:
            next_obs = step.info["final_obs"]  # the env already holds the next episode's first state
            reward, done = step.reward.to(torch.float64), step.done
            act = action.to(torch.float32)
        else:
            next_obs = step.obs["state"]  # finished slots: their last observation (restart comes later)
            reward, done = torch.as_tensor(np.asarray(step.reward, np.float64)), torch.as_tensor(step.done)
            act = np.asarray(action, np.float32)
        scaled = reward * self.scale + self.bias
        self.buffer.add_batch(pre_obs["state"], act, scaled.to(torch.float32) if engine.env.on_device
                              else scaled.numpy().astype(np.float32), next_obs, step.terminated)
        self.running += reward.to(self.running.device)
        done = done.to(self.running.device)
        self.length += 1
        if self.buffer.mc_return is not None and bool(done.any()):
            ended = torch.nonzero(done).reshape(-1)
            self.buffer.close_episodes(ended, self.length[ended], engine.num_envs, self.discount)
        self.length = torch.where(done, torch.zeros_like(self.length), self.length)
        self.finished_sum += torch.where(done, self.running, 0.0).sum()
        self.finished_count += done.sum()
        self.running = torch.where(done, torch.zeros_like(self.running), self.running)

    def take_returns(self) -> tuple[float, int]:
        """(sum, count) of the returns of episodes finished since the last call (host read)."""
        total, count = float(self.finished_sum), int(self.finished_count)
        self.finished_sum.zero_()
        self.finished_count.zero_()
        return total, count


class VectorInteraction:
    """K envs of one task on a backend ("cpu": MuJoCo C TaskSim; "gpu" / "warp-cpu": MuJoCo Warp
    DeviceVectorEnv) stepped by the rollout engine; `step()` advances every env once and stores the
    K transitions in `buffer`."""

    def __init__(self, task: str, env_kwargs: dict[str, Any], backend: str, num_envs: int, agent: Any,
                 buffer: Any, generator: torch.Generator, next_seed: Callable[[], int], refill_every: int = 16) -> None:
        from robolearn.tasks.registry import load_task_config
        from robolearn.tasks.rollout import persistent_rollout

        overrides = {k: v for k, v in env_kwargs.items() if k != "task"}
        cfg = load_task_config(task, overrides)
        if backend == "cpu":
            from robolearn.tasks.sim import TaskSim

            self.sim: Any = TaskSim(task, cfg=cfg, num_envs=num_envs)
        else:
            from robolearn.tasks.device_env import DeviceVectorEnv

            self.sim = DeviceVectorEnv(task, num_envs, backend=backend, cfg=cfg, final_obs=True)
        self.num_envs = num_envs
        self.obs_dim, self.action_dim = int(self.sim.obs_dim), int(self.sim.action_dim)
        self.device = getattr(self.sim, "device", torch.device("cpu")) if backend != "cpu" else torch.device("cpu")
        self.actor = RLActor(agent, generator)
        self.hook = ReplayHook(buffer, agent.cfg.reward_scale, agent.cfg.reward_bias, agent.cfg.discount)
        self.engine = persistent_rollout(self.sim, self.actor, next_seed, [self.hook], refill_every=refill_every)

    def step(self, random_actions: bool) -> None:
        self.actor.random = random_actions
        self.engine.run(max_steps=1)

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON meta) of where the envs are: the returns being summed and, on the host,
        everything `load_state_dict` needs to continue the running episodes exactly."""
        hook = self.hook
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {"exact": False, "backend": "cpu" if not self.engine.env.on_device else "device",
                                "num_envs": self.num_envs}
        if not self.engine.started:
            return tensors, meta
        tensors.update(running=hook.running.cpu().clone(), length=hook.length.cpu().clone(), finished_sum=hook.finished_sum.cpu().reshape(1),
                       finished_count=hook.finished_count.cpu().reshape(1))
        if not self.engine.env.on_device:
            sim, env = self.sim, self.engine.env
            tensors.update(sim_state=torch.from_numpy(np.asarray(sim.get_state(), np.float64).copy()),
                           sim_gens=torch.stack([g.get_state() for g in sim.gens]), sim_t=sim.t.clone())
            for k, v in self.engine.obs.items():
                tensors[f"obs.{k}"] = torch.from_numpy(np.ascontiguousarray(v))
            meta.update(exact=True, seeds=[int(x) for x in env.slot_seed], sim_seeds=[int(x) for x in sim.seeds],
                        lengths=[int(x) for x in env.length])
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bool:
        """Continue the checkpoint's envs (host envs of the same count: exactly; returns True), or
        leave them to start fresh episodes at the first step (returns False)."""
        if not (meta.get("exact") and not self.engine.env.on_device and meta.get("num_envs") == self.num_envs):
            return False
        sim = self.sim
        sim.reset(seeds=meta["sim_seeds"])
        sim.set_state(tensors["sim_state"].numpy())
        sim.t[:] = tensors["sim_t"]
        for gen, state in zip(sim.gens, tensors["sim_gens"]):
            gen.set_state(state.clone())
        obs = {k[4:]: v.numpy().copy() for k, v in tensors.items() if k.startswith("obs.")}
        self.engine.resume(obs, meta["seeds"], lengths=meta["lengths"])  # (re)starts the hook's sums
        hook = self.hook
        hook.running = tensors["running"].to(hook.running.device, hook.running.dtype).clone()
        lengths = tensors["length"] if "length" in tensors else torch.as_tensor(meta["lengths"])  # older checkpoints: the envs' own count
        hook.length = lengths.to(hook.length.device, torch.int64).clone()
        hook.finished_sum.fill_(float(tensors["finished_sum"][0]))
        hook.finished_count.fill_(int(tensors["finished_count"][0]))
        return True

    def close(self) -> None:
        self.engine.close()
