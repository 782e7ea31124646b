"""The one rollout engine: every closed loop over a batch of envs (eval on the host and on the
device, collect, RL evaluation, SAILOR's data collection) is `RolloutEngine` with an env adapter,
an actor and hooks.

    engine = RolloutEngine(HostBatch(sim, FixedSeeds(seeds)), PolicyActor(policy), hooks=[EpisodeStats(...)])
    records = engine.run()                     # until every scheduled episode has finished
    engine.run(max_steps=n)                    # or n env steps; envs persist across calls

Env adapters share one contract (`start()`, `step(action) -> Step`, `restart(step) -> obs`):
`HostBatch` drives a `TaskSim` or `GymTaskBatch` (numpy, on the host: images, perturbations,
stores, videos) and gives each finished slot the schedule's next episode; `DeviceBatch` drives a
`DeviceVectorEnv` whose per-step tensors stay on the device (finished slots are reset inside its
step from a pool of initial states). `Step.episode` is each slot's episode index during the step
(-1: idle). Schedules: `FixedSeeds` (eval, collect: episode k has seed k of a list; slots idle
when none is left) and `EndlessSeeds` (SAILOR, RL: seeds from a counter).

An actor has `reset(obs, rows)`, `observe(obs)` and `act(obs) -> action` (`PolicyActor` keeps a
policy's observation history, `ExpertActor` runs a scripted expert, `FunctionActor` wraps
`obs -> action`). Hooks get `on_start`, `on_step`, `on_episode_end` (host only, per finished
slot, before it restarts), `on_episode_discard`, `on_restart` and `on_close`; a hook without
`device_ok = True` is refused on a device env. The engine keeps the RNG draw order of the loops
it replaced: the same seeds give the same records, stores and reports.

Interactive runs (`robolearn intervene`) steer the engine from inside a step (host env only): an
actor may answer `EndEpisodes` instead of an action -- running episodes end before any step
(kept, or discarded, optionally replayed from the same seed) -- an actor's `last_source` labels
each step in the store, and any hook or actor may call `engine.stop()` to end the run after the
current step. An actor that pauses simply does not return from `act` until it resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


class _LazyTorch:
    """torch, imported on first use (importing this module stays cheap: `robolearn eval` checks
    its arguments before torch loads); the first access replaces it with the module."""

    def __getattr__(self, name: str) -> Any:
        import torch as module

        globals()["torch"] = module
        return getattr(module, name)


torch: Any = _LazyTorch()


# ----------------------------------------------------------------------------------- schedules
class FixedSeeds:
    """Episode k uses seeds[k]; `take()` returns None once all are handed out."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self.seeds = [int(s) for s in seeds]
        self.next = 0

    @property
    def total(self) -> int | None:
        return len(self.seeds)

    def take(self) -> tuple[int, int] | None:
        if self.next >= len(self.seeds):
            return None
        k = self.next
        self.next += 1
        return k, self.seeds[k]


class EndlessSeeds:
    """Episodes numbered 0, 1, ... with seeds from `next_seed()` (e.g. a counter kept by the caller)."""

    def __init__(self, next_seed: Callable[[], int]) -> None:
        self.next_seed = next_seed
        self.next = 0

    total = None

    def take(self) -> tuple[int, int]:
        k = self.next
        self.next += 1
        return k, int(self.next_seed())


# ----------------------------------------------------------------------------------- env adapters
@dataclass
class EndEpisodes:
    """An actor's answer instead of an action (host env): the running episodes of `rows` end now,
    before any step. Kept ones go to the hooks' `on_episode_end` (success: `success` per row, else
    the task's of the current state); with `discard` they go to `on_episode_discard` instead.
    `repeat`: the slots run the same episode (seed) again instead of the schedule's next one.
    `stop`: the run ends here (the slots are not restarted). EpisodeStats counts only episodes
    that end in a step (intervene, the one user, keeps its own metrics)."""

    rows: Sequence[int]
    success: Sequence[bool] | None = None
    discard: bool = False
    repeat: bool = False
    stop: bool = False


@dataclass
class Step:
    """What one engine step produced (arrays: numpy on the host, torch on a device)."""

    obs: Any  # observation after the step (finished slots: their last one, before restart)
    reward: Any
    terminated: Any
    truncated: Any
    info: dict[str, Any]
    episode: Any  # (N,) episode index of each slot during the step, -1 idle
    seed: Any = None  # (N,) seed of each slot's episode (host)
    done: Any = None  # (N,) bool: an active episode ended at this step
    restarted: Any = None  # (N,) bool, set by restart(): slots that began a new episode
    extra: dict[str, Any] = field(default_factory=dict)


class HostBatch:
    """A batch simulator on the host (TaskSim, GymTaskBatch: numpy obs/info) with slots and seeds.
    max_episode_steps: also truncate episodes at this many steps (below the task's horizon)."""

    on_device = False

    def __init__(self, sim: Any, schedule: FixedSeeds | EndlessSeeds, max_episode_steps: int | None = None) -> None:
        self.sim = sim
        self.schedule = schedule
        self.num_envs = sim.num_envs
        self.max_episode_steps = max_episode_steps
        self.slot_episode = np.full(self.num_envs, -1)
        self.slot_seed = np.full(self.num_envs, -1)
        self.status: dict[str, np.ndarray] = {}
        self.length = np.zeros(self.num_envs, np.int64)

    def _assign(self, rows: np.ndarray) -> np.ndarray:
        """Give rows the next episodes; returns the rows that got one (the others go idle)."""
        got = []
        for r in rows:
            nxt = self.schedule.take()
            if nxt is None:
                self.slot_episode[r] = -1
                continue
            self.slot_episode[r], self.slot_seed[r] = nxt
            got.append(int(r))
        return np.asarray(got, dtype=np.int64)

    def start(self) -> dict[str, np.ndarray]:
        rows = self._assign(np.arange(self.num_envs))
        mask = np.zeros(self.num_envs, bool)
        mask[rows] = True
        obs = self.sim.reset(torch.as_tensor(mask), seeds=[int(self.slot_seed[r]) for r in rows])
        self.status = self.sim.status()
        self.length[:] = 0
        return obs

    def get_state(self) -> np.ndarray:
        return np.asarray(self.sim.get_state())

    def step(self, action: np.ndarray) -> Step:
        obs, reward, term, trunc, info = self.sim.step(action)
        self.length += 1
        if self.max_episode_steps is not None:
            trunc = trunc | ((self.length >= self.max_episode_steps) & ~term)
        active = self.slot_episode >= 0
        return Step(obs, reward, term, trunc, info, self.slot_episode.copy(), self.slot_seed.copy(),
                    done=(term | trunc) & active)

    def restart(self, step: Step, repeat: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Finished slots take the next scheduled episodes (in slot order); the rest go idle.
        repeat: (N,) bool, finished slots that run their episode (and seed) again instead."""
        self.status = {k: np.array(v, copy=True) for k, v in step.info.items() if k in ("success", "stage", "failure_event", "t")}
        obs = step.obs
        fresh = step.done if repeat is None else step.done & ~repeat
        restart = self._assign(np.flatnonzero(fresh)) if fresh.any() else np.zeros(0, np.int64)
        mask = np.zeros(self.num_envs, bool)
        mask[restart] = True
        if repeat is not None:
            mask |= repeat & step.done
            restart = np.flatnonzero(mask)
        step.restarted = mask
        if len(restart):
            new = self.sim.reset(torch.as_tensor(mask), seeds=[int(self.slot_seed[r]) for r in restart])
            obs = {k: v.copy() for k, v in obs.items()}
            for k in obs:
                obs[k][mask] = new[k][mask]
            fresh = self.sim.status()
            for k in self.status:
                self.status[k][mask] = fresh[k][mask]
            self.length[mask] = 0
        return obs

    def close(self) -> None:
        self.sim.close()


class SingleEnv:
    """One env of the minimal RL protocol (`reset(seed) -> obs vector`, `step(action) -> (obs,
    reward, terminated, truncated, info)`, e.g. robolearn.rl.envs.RLEnv) as a batch of one."""

    num_envs = 1

    def __init__(self, env: Any) -> None:
        self.env = env
        self.t = np.zeros(1, np.int64)

    def reset(self, mask: Any = None, seeds: list[int] | None = None) -> dict[str, np.ndarray]:
        self._obs = np.asarray(self.env.reset(seed=None if not seeds else int(seeds[0])), np.float32)[None]
        self.t[:] = 0
        return {"state": self._obs}

    def status(self) -> dict[str, np.ndarray]:
        return {"success": np.zeros(1, bool), "stage": np.zeros(1, np.int32), "failure_event": np.zeros(1, np.int32),
                "t": self.t.copy()}

    def step(self, action: np.ndarray) -> tuple:
        obs, r, term, trunc, info = self.env.step(np.asarray(action)[0])
        self.t += 1
        success = bool(np.asarray(info.get("success", False)).reshape(-1)[0])
        out = {"success": np.array([success]), "stage": np.zeros(1, np.int32), "failure_event": np.zeros(1, np.int32),
               "t": self.t.copy()}
        self._obs = np.asarray(obs, np.float32)[None]
        return {"state": self._obs}, np.array([r], np.float64), np.array([bool(term)]), np.array([bool(trunc)]), out

    def get_state(self) -> np.ndarray:
        raise ValueError("this env does not expose its simulator state")

    def close(self) -> None:
        pass


class DeviceBatch:
    """A DeviceVectorEnv (every per-step tensor on its device) over a FixedSeeds schedule, or an
    EndlessSeeds one (online learners: episode k takes the schedule's k-th seed; every
    `refill_every` steps the adapter tops up the env's ring of initial states and checks it for
    NaN actions and simulator errors, its only host reads); finished slots are reset inside its
    step, so `restart` only reports which."""

    on_device = True

    def __init__(self, env: Any, schedule: FixedSeeds | EndlessSeeds, refill_every: int = 16) -> None:
        if not isinstance(schedule, (FixedSeeds, EndlessSeeds)):
            raise ValueError("the device env runs a FixedSeeds or EndlessSeeds schedule")
        self.env = env
        self.schedule = schedule
        self.endless = isinstance(schedule, EndlessSeeds)
        self.refill_every = max(1, int(refill_every))
        self._since_refill = 0
        self.num_envs = env.num_envs
        self.device = env.device

    def start(self) -> dict[str, torch.Tensor]:
        if self.endless:
            self.env.set_episode_source(lambda: self.schedule.take()[1], self.refill_every)
        else:
            self.env.set_episodes(self.schedule.seeds)
            self.schedule.next = len(self.schedule.seeds)
        self._since_refill = 0
        return {"state": self.env.reset()}

    def step(self, action: torch.Tensor) -> Step:
        obs, reward, term, trunc, info = self.env.step(action)
        episode = info["episode"]
        if self.endless:
            self._since_refill += 1
            if self._since_refill >= self.refill_every:
                self.env.top_up()
                self.env.check()
                self._since_refill = 0
        return Step({"state": obs}, reward, term, trunc, info, episode, done=info["done"] & (episode >= 0))

    def restart(self, step: Step) -> dict[str, torch.Tensor]:
        step.restarted = step.info["done"]
        return step.obs

    def check(self) -> None:
        self.env.check()

    def close(self) -> None:
        self.env.close()


# ----------------------------------------------------------------------------------- actors
class ObsHistory:
    """Per-env rolling window of the last To observations (edge-padded after a reset), numpy on
    the host, torch on a device."""

    def __init__(self, n_obs_steps: int, keys: list[str]) -> None:
        self.n = n_obs_steps
        self.keys = keys
        self.buf: dict[str, Any] = {}

    def reset(self, obs: dict[str, Any], rows: Any = None) -> None:
        for k in self.keys:
            if k not in obs:
                raise KeyError(f"the policy needs observation {k!r}, the task gives {', '.join(obs)}")
            v = obs[k]
            if rows is None or k not in self.buf:
                self.buf[k] = (v[:, None].repeat(1, self.n, *([1] * (v.ndim - 1))) if torch.is_tensor(v)
                               else np.repeat(v[:, None], self.n, axis=1))
            elif torch.is_tensor(v):
                m = rows.reshape(-1, *[1] * v.ndim)
                self.buf[k] = torch.where(m, v[:, None].expand_as(self.buf[k]), self.buf[k])
            else:
                self.buf[k][rows] = v[rows][:, None]

    def push(self, obs: dict[str, Any]) -> None:
        for k in self.keys:
            b, v = self.buf[k], obs[k]
            self.buf[k] = torch.cat([b[:, 1:], v[:, None]], 1) if torch.is_tensor(b) else np.concatenate([b[:, 1:], v[:, None]], axis=1)

    def torch(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v).to(device) for k, v in self.buf.items()}


def policy_obs_spec(policy: Any) -> tuple[int, list[str]]:
    """(n_obs_steps, obs keys) a policy reads (defaults: 1, ["state"])."""
    cfg = getattr(policy, "config", None)
    return int(getattr(cfg, "n_obs_steps", 1)), list(getattr(cfg, "obs_keys", ["state"]))


class PolicyActor:
    """Any policy with `config.n_obs_steps` / `config.obs_keys`, `select_action(history)` and
    `reset(mask)`. On the host the action comes back as float64 numpy and non-finite actions are
    refused at once; on a device it stays a tensor (the env flags non-finite rows).
    select_kwargs: extra keyword arguments of select_action (e.g. SAILOR's generator)."""

    def __init__(self, policy: Any, device: torch.device | str | None = None, **select_kwargs: Any) -> None:
        self.policy = policy
        if device is None:
            param = next(iter(policy.parameters()), None) if hasattr(policy, "parameters") else None
            device = param.device if param is not None else torch.device("cpu")
        self.device = device
        n_obs, keys = policy_obs_spec(policy)
        self.history = ObsHistory(n_obs, keys)
        self.select_kwargs = select_kwargs
        self.last_raw: Any = None

    def reset(self, obs: dict[str, Any], rows: Any = None) -> None:
        self.history.reset(obs, rows)
        if rows is None:
            self.policy.reset()
        else:
            self.policy.reset(torch.as_tensor(rows).to(self.device))

    def observe(self, obs: dict[str, Any]) -> None:
        self.history.push(obs)

    def act(self, obs: dict[str, Any]) -> Any:
        action = self.policy.select_action(self.history.torch(self.device), **self.select_kwargs)
        self.last_raw = action
        if any(torch.is_tensor(v) for v in obs.values()):
            return action  # device env: stays a tensor
        return action.detach().to("cpu", torch.float64).numpy()


class ExpertActor:
    """A scripted expert on the simulator's privileged state (collect, `data rollout --policy
    expert`); `last_primitive` / `last_clean` are the step's labels."""

    def __init__(self, expert: Any, sim: Any) -> None:
        self.expert, self.sim = expert, sim
        self.last_primitive: np.ndarray | None = None
        self.last_clean: np.ndarray | None = None

    def reset(self, obs: dict[str, Any], rows: np.ndarray | None = None) -> None:
        self.expert.reset() if rows is None else self.expert.reset(torch.as_tensor(rows))

    def observe(self, obs: dict[str, Any]) -> None:
        pass

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        action, prim = self.expert.act(self.sim.read())
        self.last_primitive = prim.numpy()
        self.last_clean = self.expert.last_clean_action.numpy()
        return action.numpy()


class FunctionActor:
    """`act(obs (N, D) state) -> (N, A)`: a plain function of the current state observation."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], on_reset: Callable[[], None] | None = None) -> None:
        self.fn, self.on_reset = fn, on_reset

    def reset(self, obs: dict[str, Any], rows: np.ndarray | None = None) -> None:
        if self.on_reset is not None:
            self.on_reset()

    def observe(self, obs: dict[str, Any]) -> None:
        pass

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        return np.asarray(self.fn(obs["state"]), np.float64).reshape(len(obs["state"]), -1)


# ----------------------------------------------------------------------------------- hooks
class Hook:
    """Per-step callbacks; see the module doc. `needs_state`: the engine reads the full simulator
    state before each step (`pre_state`). `device_ok`: the hook works on device tensors."""

    needs_state = False
    device_ok = False

    def on_start(self, engine: RolloutEngine, obs: Any) -> None: ...

    def on_step(self, engine: RolloutEngine, step: Step, pre_obs: Any, action: Any, pre_state: Any) -> None: ...

    def on_episode_end(self, engine: RolloutEngine, row: int, episode: int, seed: int, step: Step) -> None: ...

    def on_episode_discard(self, engine: RolloutEngine, row: int, episode: int, seed: int) -> None:
        """A running episode was dropped (an actor's `EndEpisodes(discard=True)`): forget its steps."""

    def on_restart(self, engine: RolloutEngine, step: Step, obs: Any) -> None: ...

    def on_close(self, engine: RolloutEngine) -> None: ...


class EpisodeStats(Hook):
    """Per-episode success, return, length, failure events, recoveries (events in a successful
    episode), highest stage and score, accumulated per slot and scattered into per-episode arrays
    with tensor ops (no host sync on a device). score_fn: a per-step (N,) score whose episode
    maximum is the episode's score (tasks with a step score); else the score is the success."""

    device_ok = True

    def __init__(self, episodes: int, seeds: Sequence[int], score_fn: Callable[[], Any] | None = None) -> None:
        self.E = episodes
        self.seeds = list(seeds)
        self.score_fn = score_fn
        self.extra: dict[int, dict[str, Any]] = {}

    def on_start(self, engine: RolloutEngine, obs: Any) -> None:
        dev = engine.device
        N, E = engine.num_envs, self.E
        self.ep = {k: torch.zeros(E + 1, dtype=dt, device=dev) for k, dt in
                   (("success", torch.bool), ("return", torch.float64), ("length", torch.int64),
                    ("events", torch.int64), ("max_stage", torch.int64), ("done", torch.bool), ("score", torch.float64),
                    ("success_once", torch.bool))}
        self.acc = {k: torch.zeros(N, dtype=dt, device=dev) for k, dt in
                    (("return", torch.float64), ("length", torch.int64), ("events", torch.int64),
                     ("max_stage", torch.int64), ("score", torch.float64), ("success_once", torch.bool))}

    def on_step(self, engine: RolloutEngine, step: Step, pre_obs: Any, action: Any, pre_state: Any) -> None:
        t = _as_tensor
        dev = engine.device
        episode = t(step.episode, dev)
        active = episode >= 0
        acc, info = self.acc, step.info
        acc["return"] += torch.where(active, t(step.reward, dev).to(torch.float64), 0.0)
        acc["length"] += active.to(torch.int64)
        acc["events"] += (active & (t(info["failure_event"], dev) > 0)).to(torch.int64)
        acc["max_stage"] = torch.maximum(acc["max_stage"], torch.where(active, t(info["stage"], dev).to(torch.int64), 0))
        if self.score_fn is not None:
            acc["score"] = torch.maximum(acc["score"], torch.where(active, t(self.score_fn(), dev).to(torch.float64), 0.0))
        done = t(step.done, dev)
        target = torch.where(done, episode, self.E)
        success = t(info["success"], dev).to(torch.bool)
        acc["success_once"] |= active & success
        self.ep["success"].scatter_(0, target, success)
        self.ep["done"].scatter_(0, target, done)
        if self.score_fn is None:  # without a step score an episode's score is its success
            acc["score"] = acc["success_once"].to(torch.float64)
        for k in acc:
            self.ep[k].scatter_(0, target, acc[k])
        ended = t(step.info["done"], dev) if engine.env.on_device else done
        for k in acc:
            acc[k] = torch.where(ended, torch.zeros_like(acc[k]), acc[k])

    def finished(self) -> int:
        return int(self.ep["done"][:self.E].sum())

    def records(self) -> list[dict[str, Any]]:
        host = {k: v[:self.E].cpu() for k, v in self.ep.items()}
        out = []
        for i in range(self.E):
            if not bool(host["done"][i]):
                continue
            # One success definition everywhere (eval, training evals, RL evaluation): the task's success
            # held at some step. It equals success at the last step when the task terminates on success
            # (every built-in task's default); `success_at_end` keeps the last step's flag.
            success, events = bool(host["success_once"][i]), int(host["events"][i])
            rec = {"episode": i, "seed": self.seeds[i], "success": success, "success_at_end": bool(host["success"][i]),
                   "return": float(host["return"][i]),
                   "length": int(host["length"][i]), "failure_events": events, "recoveries": events if success else 0,
                   "max_stage": int(host["max_stage"][i]), "score": float(host["score"][i])}
            rec.update(self.extra.get(i, {}))
            out.append(rec)
        return out


def _as_tensor(x: Any, device: Any) -> torch.Tensor:
    return x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x)).to(device)


class StoreWriter(Hook):
    """Writes each finished episode to an episode store, one commit per episode. Per step: the
    observation the actor saw (the store's obs keys), the executed (clipped) action, reward, done,
    and -- of the observed state, collect's convention -- stage, failure_event and sim_state; the
    actor's `last_primitive` (else -1) and `last_clean` (as `expert_action`) when the store has
    those columns; `source` is the actor's per-row `last_source` label where it has one, else
    `source`. metadata(row, steps, success) gives each episode's metadata (called before the
    commit, while the slot still holds the finished episode). An episode ended before its first
    step stores nothing; a discarded one is forgotten."""

    needs_state = True

    def __init__(self, store: Any, source: str, collector: str,
                 metadata: Callable[[int, dict[str, np.ndarray], bool], dict[str, Any]] | None = None) -> None:
        self.store, self.source, self.collector, self.metadata = store, source, collector, metadata
        self.features = store.features
        self.obs_keys = [k[4:] for k in self.features if k.startswith("obs/")]
        self.bufs: dict[int, dict[str, list]] = {}
        self.committed: list[tuple[int, int]] = []  # (episode index, steps)

    def on_step(self, engine: RolloutEngine, step: Step, pre_obs: Any, action: Any, pre_state: Any) -> None:
        status = engine.env.status  # of the observed state (restart() has not run yet)
        actor = engine.actor
        prim = getattr(actor, "last_primitive", None)
        clean = getattr(actor, "last_clean", None)
        label = getattr(actor, "last_source", None)
        executed = np.clip(action, -1.0, 1.0).astype(np.float32)
        for r in np.flatnonzero(step.episode >= 0):
            b = self.bufs.setdefault(int(r), {})
            for k in self.obs_keys:
                b.setdefault("obs/" + k, []).append(pre_obs[k][r])
            b.setdefault("action", []).append(executed[r])
            b.setdefault("reward", []).append(np.float32(step.reward[r]))
            b.setdefault("done", []).append(bool(step.terminated[r] or step.truncated[r]))
            b.setdefault("stage", []).append(np.int32(status["stage"][r]))
            if "failure_event" in self.features:
                b.setdefault("failure_event", []).append(np.int32(status["failure_event"][r]))
            if "sim_state" in self.features:
                b.setdefault("sim_state", []).append(pre_state[r])
            if "primitive" in self.features:
                b.setdefault("primitive", []).append(np.int32(prim[r]) if prim is not None else np.int32(-1))
            if "expert_action" in self.features and clean is not None:
                b.setdefault("expert_action", []).append(clean[r])
            if label is not None:
                b.setdefault("source", []).append(label[r])

    def take_steps(self, row: int) -> dict[str, np.ndarray] | None:
        """The running episode's recorded steps of `row` as arrays (None: no step yet), forgotten here."""
        buf = self.bufs.pop(row, None)
        if not buf:
            return None
        steps = {k: np.asarray(v) for k, v in buf.items()}
        if "source" not in steps:
            steps["source"] = np.full(len(steps["action"]), self.source)
        return steps

    def on_episode_discard(self, engine: RolloutEngine, row: int, episode: int, seed: int) -> None:
        self.bufs.pop(row, None)

    def on_episode_end(self, engine: RolloutEngine, row: int, episode: int, seed: int, step: Step) -> None:
        steps = self.take_steps(row)
        if steps is None:  # ended before its first step (EndEpisodes): nothing to store
            return
        success = bool(step.info["success"][row])
        meta = self.metadata(row, steps, success) if self.metadata else None
        self.store.append_episode(steps, success=success, collector=self.collector, seed=int(seed),
                                  **({"metadata": meta} if meta is not None else {}))
        self.committed.append((episode, len(steps["action"])))


class CallbackHook(Hook):
    """Plain functions as a hook (host): on_step(step, pre_obs, action) after every step and
    on_episode_end(row, seed, success) for each finished slot before it restarts -- what a data
    collector (SAILOR's replay, an RL buffer) needs."""

    def __init__(self, on_step: Callable[[Step, Any, Any], None] | None = None,
                 on_episode_end: Callable[[int, int, bool], None] | None = None) -> None:
        self._on_step, self._on_end = on_step, on_episode_end

    def on_step(self, engine: RolloutEngine, step: Step, pre_obs: Any, action: Any, pre_state: Any) -> None:
        if self._on_step is not None:
            self._on_step(step, pre_obs, action)

    def on_episode_end(self, engine: RolloutEngine, row: int, episode: int, seed: int, step: Step) -> None:
        if self._on_end is not None:
            self._on_end(row, seed, bool(step.info["success"][row]))


def persistent_rollout(sim: Any, actor: Any, next_seed: Callable[[], int], hooks: Sequence[Hook] = (),
                       max_episode_steps: int | None = None, refill_every: int = 16) -> RolloutEngine:
    """The narrow entry point for data collection whose envs persist across calls (SAILOR, online
    RL): `engine.run(max_steps=k)` advances every env k steps; a finished episode restarts at once
    with the seed `next_seed()` gives (slots in order), its actor rows reset; episodes are also
    truncated at `max_episode_steps`. Checkpointing reads `engine.obs`, the actor's history,
    `engine.env.slot_seed` / `.length` and the simulator state; `engine.resume(...)` puts them
    back (see RolloutEngine.resume). `sim` may also be a DeviceVectorEnv (`robolearn finetune` /
    `sailor --backend gpu|warp-cpu`): episode seeds are then drawn ahead, `refill_every` steps'
    worth at a time (DeviceBatch), and hooks must be `device_ok`."""
    if getattr(sim, "on_device", False):  # a DeviceVectorEnv: truncation is its own max_episode_steps
        return RolloutEngine(DeviceBatch(sim, EndlessSeeds(next_seed), refill_every), actor, hooks)
    return RolloutEngine(HostBatch(sim, EndlessSeeds(next_seed), max_episode_steps), actor, hooks)


# ----------------------------------------------------------------------------------- the engine
class RolloutEngine:
    """Steps an env adapter with an actor until the schedule's episodes are done (or for a number
    of steps), calling the hooks. sync_every: how often (steps) a device run reads the number of
    finished episodes back to the host (1 on the host)."""

    def __init__(self, env: HostBatch | DeviceBatch, actor: Any, hooks: Sequence[Hook] = (),
                 stats: EpisodeStats | None = None, sync_every: int | None = None,
                 progress: bool = False, desc: str = "rollout") -> None:
        self.env, self.actor = env, actor
        self.stats = stats
        self.hooks = ([stats] if stats is not None else []) + list(hooks)
        if env.on_device:
            bad = [type(h).__name__ for h in self.hooks if not h.device_ok]
            if bad:
                raise ValueError(f"{', '.join(bad)} cannot run on a device env (host-only hooks)")
        self.num_envs = env.num_envs
        self.device = getattr(env, "device", None) or torch.device("cpu")
        self.sync_every = sync_every or (1 if not env.on_device or self.device.type == "cpu" else 16)
        self.progress, self.desc = progress, desc
        self.obs: Any = None
        self.steps = 0
        self.episodes_done = 0
        self.episodes_discarded = 0
        self.successes = 0
        self.stopped = False
        self._needs_state = any(h.needs_state for h in self.hooks)

    @property
    def started(self) -> bool:
        return self.obs is not None

    def stop(self) -> None:
        """End `run()` after the current step (an operator's quit, a budget reached); slots whose
        episodes finished in that step are not restarted, and the engine does not run again."""
        self.stopped = True

    def start(self) -> None:
        self.obs = self.env.start()
        self.actor.reset(self.obs, None)
        for h in self.hooks:
            h.on_start(self, self.obs)

    def resume(self, obs: dict[str, Any], seeds: Sequence[int], lengths: Sequence[int] | None = None,
               history: dict[str, Any] | None = None) -> None:
        """Continue a host run whose simulator state was restored by the caller: the current
        observation, each slot's episode seed (and length), and the actor's observation history."""
        env = self.env
        env.slot_seed[:] = np.asarray(seeds)
        env.slot_episode[:] = np.arange(self.num_envs)
        env.schedule.next = self.num_envs
        env.length[:] = 0 if lengths is None else np.asarray(lengths)
        env.status = env.sim.status()
        self.obs = obs
        if history is not None and hasattr(self.actor, "history"):
            self.actor.history.buf = {k: np.array(v, copy=True) for k, v in history.items()}
        for h in self.hooks:
            h.on_start(self, obs)

    def run(self, max_steps: int | None = None) -> list[dict[str, Any]]:
        """Until every scheduled episode finished (FixedSeeds), or for max_steps env steps (each
        step advances every env); returns EpisodeStats' records when it is attached."""
        from tqdm import tqdm

        total = self.env.schedule.total
        if total is None and max_steps is None:
            raise ValueError("an endless schedule needs max_steps")
        if self.stopped:
            raise RuntimeError("this rollout was stopped; it does not run again")
        if not self.started:
            self.start()
        bar = tqdm(total=total if max_steps is None else max_steps, desc=self.desc, disable=not self.progress,
                   dynamic_ncols=True, leave=max_steps is None)
        shown, taken = 0, 0
        with torch.no_grad():
            while not self.stopped:
                if max_steps is not None and taken >= max_steps:
                    break
                if max_steps is None and taken % self.sync_every == 0 and taken and self._finished() >= total:
                    break
                self._step()
                taken += 1
                if max_steps is not None:
                    bar.update(1)
                elif taken % self.sync_every == 0:
                    now = self._finished()
                    if now > shown:  # redraw only when episodes finish
                        if self.episodes_done:
                            bar.set_postfix(success=f"{self.successes / self.episodes_done:.2f}", refresh=False)
                        bar.update(now - shown)
                        shown = now
        bar.close()
        return self.stats.records() if self.stats is not None and max_steps is None else []

    def _finished(self) -> int:
        if self.env.on_device:
            self.env.check()
            return self.stats.finished() if self.stats is not None else 0
        return self.episodes_done + self.episodes_discarded

    def _step(self) -> None:
        env, obs = self.env, self.obs
        pre_state = env.get_state() if self._needs_state else None
        action = self.actor.act(obs)
        if isinstance(action, EndEpisodes):
            self._end_episodes(action)
            return
        if not env.on_device and not np.all(np.isfinite(action)):
            bad = np.flatnonzero(~np.isfinite(action).all(1)).tolist()
            raise RuntimeError(f"the policy produced a NaN/inf action for env(s) {bad}")
        step = env.step(action)
        for h in self.hooks:
            h.on_step(self, step, obs, action, pre_state)
        if not env.on_device:
            for r in np.flatnonzero(step.done):
                self.episodes_done += 1
                self.successes += int(bool(step.info["success"][r]))
                for h in self.hooks:
                    h.on_episode_end(self, int(r), int(step.episode[r]), int(step.seed[r]), step)
        if self.stopped:  # a hook ended the run: finished slots stay as they are
            self.obs = step.obs
            self.steps += 1
            return
        new_obs = env.restart(step)
        self.actor.observe(new_obs)
        if env.on_device or step.restarted.any():
            self.actor.reset(new_obs, step.restarted)
        for h in self.hooks:
            h.on_restart(self, step, new_obs)
        self.obs = new_obs
        self.steps += 1

    def _end_episodes(self, cut: EndEpisodes) -> None:
        """An actor's EndEpisodes: end (or drop) the listed running episodes without a step, then
        restart their slots (the same episodes with `repeat`) unless the run stops."""
        env = self.env
        if env.on_device:
            raise ValueError("EndEpisodes needs a host env (a device env ends episodes inside its step)")
        if cut.repeat and not cut.discard:
            raise ValueError("EndEpisodes(repeat=True) replays a discarded episode: pass discard=True")
        rows = np.asarray(cut.rows, dtype=np.int64).reshape(-1)
        running = rows[env.slot_episode[rows] >= 0]
        info = {k: np.array(v, copy=True) for k, v in env.status.items()}
        if cut.success is not None:
            info["success"][rows] = np.asarray(cut.success, dtype=bool).reshape(-1)
        done = np.zeros(self.num_envs, bool)
        done[running] = True
        idle = np.zeros(self.num_envs, bool)
        step = Step(self.obs, np.zeros(self.num_envs, np.float32), idle, idle.copy(), info, env.slot_episode.copy(),
                    env.slot_seed.copy(), done=done)
        for r in running:
            episode, seed = int(step.episode[r]), int(step.seed[r])
            if cut.discard:
                self.episodes_discarded += 0 if cut.repeat else 1  # a replayed episode still runs
                for h in self.hooks:
                    h.on_episode_discard(self, int(r), episode, seed)
            else:
                self.episodes_done += 1
                self.successes += int(bool(info["success"][r]))
                for h in self.hooks:
                    h.on_episode_end(self, int(r), episode, seed, step)
        if cut.stop:
            self.stopped = True
        if self.stopped:
            return
        new_obs = env.restart(step, repeat=done if cut.repeat else None)
        if step.restarted.any():
            self.actor.reset(new_obs, step.restarted)
        for h in self.hooks:
            h.on_restart(self, step, new_obs)
        self.obs = new_obs

    def close(self) -> None:
        for h in self.hooks:
            h.on_close(self)
        self.env.close()
