"""`robolearn train`: one training loop for every policy.

Reads windows from an episode store through the shared sampler, optimises the policy's
per-sample loss (weighted, so intervention-aware mixtures plug in), keeps an EMA copy, logs
metrics (JSON lines, optional wandb), evaluates on held-out episodes, and checkpoints everything
needed for an exact resume: model, EMA, optimizer, LR schedule, torch RNG and sampler position.

Run directory:
    config.yaml            the resolved configuration
    run.json               data path, task, command, world size
    metrics.jsonl          one JSON object per logged step (train loss, lr, val loss, eval)
    checkpoints/last/      latest full training state (EMA weights as the policy weights)
    checkpoints/step_N/    periodic snapshots
    policy/                the final policy (what `robolearn eval --checkpoint` loads)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from robolearn.config import ConfigError, project_root, to_dict

CHECKPOINT_TRAIN_GROUPS = ("train_model", "optimizer", "rng")


# ----------------------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available on this machine")
    return torch.device(name)


def lr_lambda(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warm-up, then constant or cosine decay to zero (diffusion_policy's schedule)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state into safetensors-able tensors and JSON (no pickle)."""
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{pid}.{key}"] = t
    return tensors, {"param_groups": state["param_groups"]}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class _LossModule(nn.Module):
    """Wraps a policy so DDP's forward hooks see the loss computation."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.policy.compute_loss(batch)


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return world, rank


class MetricLogger:
    """metrics.jsonl + optional wandb; only rank 0 writes."""

    def __init__(self, run_dir: Path, mode: str, config: dict[str, Any], name: str, enabled: bool, resume_step: int | None) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._wandb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # keep only what happened up to the resumed step, so the file reads as one run
            kept = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        if mode != "off":
            if mode not in ("offline", "online"):
                raise ConfigError(f"--wandb must be off, offline or online, got {mode!r}")
            import wandb  # heavy: only when asked for

            self._wandb = wandb.init(
                project="robolearn", name=name, dir=str(run_dir), mode=mode, config=config, reinit=True
            )

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


# ----------------------------------------------------------------------------------- data
def build_datasets(run_cfg: Any, store: Any, seed: int, extra_keys: list[str]) -> tuple[Any, Any, np.ndarray]:
    """Train/validation windows: the store's `train`/`valid` masks if present, else a seeded split."""
    from robolearn.data.mixtures import mixture_weights
    from robolearn.data.sampler import SequenceDataset, split_episodes

    pcfg = run_cfg.policy
    if "train" in store.mask_names() and "valid" in store.mask_names():
        train_eps, val_eps = np.flatnonzero(store.mask("train")), np.flatnonzero(store.mask("valid"))
    else:
        train_eps, val_eps = split_episodes(store.num_episodes, run_cfg.train.val_ratio, seed)
    mix = mixture_weights(store, run_cfg.data.mix, train_eps)
    common = dict(obs_keys=pcfg.obs_keys, n_obs_steps=pcfg.n_obs_steps, horizon=pcfg.horizon, extra_keys=extra_keys,
                  action_key=run_cfg.data.action_key)
    train_ds = SequenceDataset(store, episodes=mix.episodes, step_weights=mix.loss_weights, **common)
    sample_probs = mix.window_sampling_weights(train_ds)
    val_ds = SequenceDataset(store, episodes=val_eps, **common) if len(val_eps) else None
    return train_ds, val_ds, sample_probs


# ----------------------------------------------------------------------------------- main loop
def train(
    policy_name: str,
    data: str | Path,
    task: str | None = None,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    wandb_mode: str = "offline",
    resume: str | Path | None = None,
    config_path: str | Path | None = None,
    progress: bool = True,
    task_overrides: list[str] | None = None,
    overwrite: bool = False,
    skip_damaged: bool = False,
    init_from: str | Path | None = None,
) -> Path:
    """Train a policy on a store; returns the run directory.

    `out` must be new (or an empty directory); an existing run is replaced only with `overwrite`.
    A damaged store is refused unless `skip_damaged`, which trains on its healthy episodes.
    `init_from`: fine-tune -- start from this checkpoint's weights (same policy and shapes), its
    normalizer included, instead of a fresh initialisation (RaC-style rounds).
    """
    from tqdm import tqdm

    from robolearn.checkpoint import load_tensors, read_meta, save_policy, saved_step
    from robolearn.data.normalizer import compute_stats
    from robolearn.data.store import EpisodeStore
    from robolearn.nn.ema import EMA
    from robolearn.policies import make_policy
    from robolearn.policies.configuration import load_run_config

    world, rank = _dist_info()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    resume_dir: Path | None = None
    preset: str | None = None  # the policies/ preset named instead of a registered policy
    if resume is not None:
        resume_dir = Path(resume)
        saved = resume_dir / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume {resume_dir}: no config.yaml (not a robolearn run directory)")
        run_cfg = load_run_config(saved, overrides)
        run_json = json.loads((resume_dir / "run.json").read_text())
        data, task, policy_name = run_json["data"], run_json["task"], run_cfg.name
        run_dir = resume_dir
    else:
        path = Path(config_path) if config_path else project_root() / "policies" / f"{policy_name}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"no config for policy {policy_name!r} at {path}")
        # a preset (policies/diffusion_small.yaml) configures the registered policy its YAML names
        from robolearn.cli import policy_presets

        presets = policy_presets()  # globs and parses policies/*.yaml: once
        preset = policy_name if policy_name in presets else None
        policy_name = presets.get(policy_name, policy_name)
        run_cfg = load_run_config(path, overrides, name=policy_name)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(out) if out else Path("runs") / f"{policy_name}-{task or Path(data).stem}-{stamp}"
        check_out_dir(run_dir, overwrite)
    from robolearn.validation import check_config_values

    check_config_values(run_cfg, "config")
    tcfg = run_cfg.train
    device = resolve_device(tcfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))

    store = EpisodeStore.open(data, mode="r", skip_damaged=skip_damaged)
    if store.skipped_episodes and rank == 0:
        print(f"robolearn train: warning: skipping {len(store.skipped_episodes)} damaged episode(s) of {data}: "
              f"{store.skipped_episodes[:10]} (`robolearn data verify {data}` lists the damage)", file=sys.stderr)
    # Evaluation rollouts run the task as the data was collected (its structural fields, e.g. sort's
    # num_cubes), then --set overrides.
    eval_task_overrides: list[str] = []
    if task:
        from robolearn.tasks.registry import structural_overrides

        eval_task_overrides = structural_overrides(task, store.env_kwargs) + list(task_overrides or [])
    if store.num_episodes == 0:
        raise ValueError(f"{data} holds no episodes to train on")
    pcfg = run_cfg.policy.with_features(store.features)
    if hasattr(pcfg, "with_task"):  # configs that read the task's layout (object-centric hierarchical)
        pcfg = pcfg.with_task(task or store.task, store.env_kwargs)
    run_cfg = dataclasses.replace(run_cfg, policy=pcfg)
    extra_keys = list(pcfg.extra_batch_keys)  # per-step labels the policy reads (e.g. primitive)
    missing = [k for k in extra_keys if k not in store.features]
    if missing:
        raise ValueError(f"policy {policy_name!r} needs per-step {', '.join(missing)} labels, which {data} lacks")

    action_key = run_cfg.data.action_key
    if action_key not in store.features:
        raise ValueError(f"data.action_key={action_key}: {data} has no such column (collect with --noise > 0 writes "
                         "expert_action)")
    torch.manual_seed(tcfg.seed + rank)
    np.random.seed(tcfg.seed + rank)
    train_ds, val_ds, sample_probs = build_datasets(run_cfg, store, tcfg.seed, extra_keys)
    if len(train_ds) == 0:
        raise ValueError(f"{data}: no training windows (episodes shorter than the horizon?)")
    # Normalize what is imitated; the policy knows it as `action` either way.
    stat_keys = [action_key if k == "action" else k for k in pcfg.normalizer_modes()]
    stats = {("action" if k == action_key else k): v for k, v in compute_stats(store, stat_keys).items()}
    initial = initial_weights(policy_name, init_from) if init_from is not None and resume_dir is None else None
    if initial is not None:  # fine-tuning keeps the base policy's normalization
        stats = initial[0]
    policy = make_policy(policy_name, pcfg, stats).to(device)
    if initial is not None:
        load_initial_weights(policy, initial[1], init_from)
    ema = EMA(policy, power=tcfg.ema_power, max_decay=tcfg.ema_max_decay) if tcfg.ema else None
    # fused: one kernel for all parameters; the per-tensor loop took ~12% of a small policy's CPU step
    opt = torch.optim.AdamW(policy.parameters(), lr=tcfg.lr, betas=tuple(tcfg.betas), weight_decay=tcfg.weight_decay,
                            fused=device.type in ("cpu", "cuda"))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, tcfg.lr_warmup_steps, tcfg.steps, tcfg.lr_schedule)
    )
    from robolearn.data.sampler import WeightedWindowSampler

    sampler = WeightedWindowSampler(sample_probs, seed=tcfg.seed * 1000 + rank, replacement=True)
    if tcfg.num_workers < 0:
        raise ConfigError(f"train.num_workers must be >= 0, got {tcfg.num_workers}")
    start_step = 0
    if resume_dir is not None:
        ckpt = resume_dir / "checkpoints" / "last"
        meta = read_meta(ckpt)
        policy.load_state_dict(load_tensors(ckpt, "train_model", meta))
        if ema is not None:
            ema.load_state_dict(load_tensors(ckpt, "model", meta), meta["train_state"]["ema_updates"])
        optimizer_from_tensors(opt, load_tensors(ckpt, "optimizer", meta), meta["train_state"]["optimizer"])
        sched.load_state_dict(meta["train_state"]["scheduler"])
        sampler.load_state_dict(meta["train_state"]["sampler"])
        torch.set_rng_state(load_tensors(ckpt, "rng", meta)["torch"])
        start_step = saved_step(ckpt, meta)
        if start_step >= tcfg.steps:
            raise ValueError(f"run {resume_dir} already finished ({start_step} of {tcfg.steps} steps)")

    is_main = rank == 0
    if is_main:
        if resume_dir is None and overwrite and (run_dir / "run.json").is_file():
            from robolearn.data.store import remove_tree

            remove_tree(run_dir)  # --overwrite: no step directories of the old run mixed in
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(run_cfg), sort_keys=False))
        if resume_dir is None:
            (run_dir / "run.json").write_text(
                json.dumps(
                    {
                        "data": data if "://" in str(data) else str(Path(data).resolve()),  # URLs as given
                        "task": task,
                        "policy": policy_name,
                        **({"preset": preset} if preset else {}),  # e.g. diffusion_small (train --policy PRESET)
                        "command": " ".join(sys.argv),
                        "world_size": world,
                        **({"init_from": str(init_from)} if init_from is not None else {}),
                        "started": dt.datetime.now().isoformat(timespec="seconds"),
                    },
                    indent=1,
                )
            )
    logger = MetricLogger(run_dir, wandb_mode, to_dict(run_cfg), run_dir.name, is_main, start_step if resume_dir else None)
    model: nn.Module = _LossModule(policy)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def save(step: int, directory: Path, final: bool = False) -> None:
        if not is_main:
            return
        opt_tensors, opt_meta = optimizer_to_tensors(opt)
        weights = ema.state_dict() if ema is not None else policy.state_dict()
        extra = {"task_config": store.env_kwargs, "train_state": {
            "optimizer": opt_meta,
            "scheduler": sched.state_dict(),
            "sampler": consumed_sampler_state,  # after the last batch trained on (not those prefetched)
            "ema_updates": ema.num_updates if ema is not None else 0,
        }}
        groups = {"train_model": policy.state_dict(), "optimizer": opt_tensors, "rng": {"torch": torch.get_rng_state()}}
        save_policy(policy, directory, step=step, task=task, weights=weights, extra_meta=extra, extra_groups=None if final else groups)

    def validate() -> float | None:
        if val_ds is None or len(val_ds) == 0:
            return None
        net = ema.model if ema is not None else policy
        idx = np.linspace(0, len(val_ds) - 1, min(len(val_ds), 512)).astype(np.int64)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(12345)
            was_training = net.training
            net.eval()
            losses = []
            for chunk in np.array_split(idx, max(1, len(idx) // tcfg.batch_size)):
                losses.append(net.compute_loss(val_ds.torch_batch(chunk, device)).mean().item() * len(chunk))
            net.train(was_training)
        return float(sum(losses) / len(idx))

    from robolearn.data.sampler import BatchPrefetcher

    consumed_sampler_state = sampler.state_dict()
    batches = BatchPrefetcher(train_ds, sampler, tcfg.batch_size, tcfg.num_workers, device)
    train_ds.warm_cache()  # images: decode the store into the cache in the background
    policy.train()
    bar = tqdm(range(start_step, tcfg.steps), initial=start_step, total=tcfg.steps, disable=not (progress and is_main), desc=f"train {policy_name}", dynamic_ncols=True)
    running = []
    for step in bar:
        batch, consumed_sampler_state = batches.next()
        per_sample = model(batch)
        weight = batch["weight"].to(per_sample.dtype)
        loss = (per_sample * weight).mean()
        if not torch.isfinite(loss):
            raise RuntimeError(f"training diverged: loss is {loss.item()} at step {step + 1}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tcfg.grad_clip_norm:
            nn.utils.clip_grad_norm_(policy.parameters(), tcfg.grad_clip_norm)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(policy)
        done = step + 1
        running.append(loss.item())
        if done % tcfg.log_every == 0 or done == tcfg.steps:
            record: dict[str, Any] = {"train_loss": float(np.mean(running)), "lr": sched.get_last_lr()[0]}
            running = []
            if done % tcfg.eval_every == 0 or done == tcfg.steps:
                val = validate()
                if val is not None:
                    record["val_loss"] = val
                if task and is_main and tcfg.eval_episodes > 0:
                    record.update(_rollout_eval(ema.model if ema is not None else policy, task, tcfg, done, eval_task_overrides))
            logger.log(done, record)
            bar.set_postfix(loss=f"{record['train_loss']:.4f}")
        if done % tcfg.save_every == 0 or done == tcfg.steps:
            save(done, run_dir / "checkpoints" / "last")
            if done % tcfg.save_every == 0 and is_main:
                dst = run_dir / "checkpoints" / f"step_{done:07d}"
                if dst.exists():
                    shutil.rmtree(dst)
                shutil.copytree(run_dir / "checkpoints" / "last", dst)
    batches.close()
    train_ds.close()
    save(tcfg.steps, run_dir / "policy", final=True)
    logger.close()
    if world > 1:
        torch.distributed.barrier()
    return run_dir


def initial_weights(policy_name: str, checkpoint: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Fine-tuning: a checkpoint's normalizer stats and (EMA) weights, checked to be `policy_name`'s."""
    from robolearn.checkpoint import load_tensors, read_meta
    from robolearn.data.normalizer import Normalizer
    from robolearn.evaluation import resolve_checkpoint

    ckpt = resolve_checkpoint(checkpoint)
    meta = read_meta(ckpt)
    if meta.get("policy") != policy_name:
        raise ValueError(f"--init-from {checkpoint} holds policy {meta.get('policy')!r}, not {policy_name!r}")
    return Normalizer.from_json(meta["normalizer"]).stats, load_tensors(ckpt, meta=meta)


def load_initial_weights(policy: nn.Module, weights: dict[str, torch.Tensor], checkpoint: str | Path) -> None:
    """Copy initial weights into a freshly built policy whose config must give the same shapes."""
    own = policy.state_dict()
    bad = [k for k in own if k not in weights or tuple(weights[k].shape) != tuple(own[k].shape)]
    if bad or len(weights) != len(own):
        raise ValueError(f"--init-from {checkpoint}: weights do not fit this policy's config (first mismatch: "
                         f"{(bad or sorted(set(weights) - set(own)))[0]})")
    policy.load_state_dict(weights)


def _rollout_eval(policy: nn.Module, task: str, tcfg: Any, step: int, task_overrides: list[str] | None = None) -> dict[str, float]:
    """Periodic closed-loop evaluation during training (own RNG so training is unaffected)."""
    from robolearn.evaluation import evaluate_policy

    with torch.random.fork_rng(devices=[]):
        was_training = policy.training
        policy.eval()
        report = evaluate_policy(policy, task, episodes=tcfg.eval_episodes, seed=10_000, num_envs=min(tcfg.eval_episodes, 10),
                                 progress=False, task_overrides=task_overrides)
        policy.train(was_training)
    return {"eval_success_rate": report["success_rate"], "eval_mean_return": report["mean_return"], "eval_score": report["score"]}


def check_out_dir(run_dir: Path, overwrite: bool = False) -> None:
    """`train --out` never silently replaces anything: an existing run needs --resume or
    --overwrite; an episode store, a file, or a non-empty directory that is not a run is refused."""
    from robolearn.data.store import _is_store_dir

    resolved = run_dir.resolve()
    for parent in (resolved, *resolved.parents):
        if _is_store_dir(parent):
            raise ValueError(f"--out {run_dir} is {'an episode store' if parent == resolved else f'inside the episode store {parent}'}, "
                             "not a run directory")
    if not os.path.lexists(run_dir):
        return
    if not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} is a file, not a run directory")
    if (run_dir / "run.json").is_file() or (run_dir / "config.yaml").is_file():
        if not overwrite:
            raise ValueError(f"--out {run_dir} is an existing run: pass --resume {run_dir} to continue it, or --overwrite to replace it")
        return
    if any(run_dir.iterdir()):
        raise ValueError(f"--out {run_dir} is a non-empty directory that is not a robolearn run; choose a new path")


# ----------------------------------------------------------------------------------- CLI
def run_cli(args: argparse.Namespace) -> int:
    """`robolearn train` (arguments: robolearn.cli.register_train)."""
    if args.resume is None and (args.policy is None or args.data is None):
        raise ConfigError("train needs --policy and --data (or --resume DIR)")
    run_dir = train(
        args.policy,
        args.data,
        task=args.task,
        out=args.out,
        overrides=args.overrides,
        wandb_mode=args.wandb,
        resume=args.resume,
        config_path=args.config,
        task_overrides=args.task_overrides,
        overwrite=getattr(args, "overwrite", False),
        skip_damaged=getattr(args, "skip_damaged", False),
        init_from=getattr(args, "init_from", None),
    )
    if _dist_info()[1] == 0:
        print(f"run directory: {run_dir}")
        print(f"policy checkpoint: {run_dir / 'policy'}")
    return 0


if __name__ == "__main__":  # torchrun -m robolearn.training ... (same as torchrun -m robolearn train ...)
    from robolearn.cli import main

    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(["train", *sys.argv[1:]]))
