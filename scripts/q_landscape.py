"""What a critic says about actions around its policy's, before and after online TD (issue 20, WSRL collapse).

WSRL's policy collapses within its first SAC updates on push_cube (docs/results/offline_to_online.md,
section 5.2); with the critic frozen it does not, and when only the critics learn first (finetune.critic_only)
the policy is intact until the actor starts following them. This script asks what online TD does to the
critic's action landscape at the states the pre-trained policy visits:

    python scripts/q_landscape.py run       # fine-tunes, 3 seeds: critic-only (online-only, 50/50 retention) and WSRL's first joint updates
    python scripts/q_landscape.py measure   # statistics per critic -> docs/results/offline_to_online/q_landscape.jsonl
    python scripts/q_landscape.py table     # the table, from the jsonl alone

`--setup pc10` does the same for the 10-critic pre-training (study pc10) with study pc10w's WSRL settings
(UTD 4, the reference SAC settings; records q_landscape_pc10.jsonl); `--joint` and `--critic-only` count env
steps, so at UTD 4 the critics have had four times as many updates.

For each critic (the pre-trained Cal-QL ensemble, each run's critics after `critic_only` env steps of
critic updates with the actor held, and the critics after the first `joint` updates of both, WSRL's and
the Cal-QL learner's with its penalty kept; the landscape always measured around the pre-trained actor) and the states of
`--episodes` deterministic episodes of the pre-trained policy (seeds disjoint from every evaluation's):
  q_mode        mean over states of Q(s, mu(s)), Q the ensemble's mean, mu the policy's mode
  d_sigma       mean over states and draws of Q(s, clip(mu + sigma eps)) - Q(s, mu), eps ~ N(0, I)
  d_uniform     the same for uniform random actions
  p_better      share of states where the best of `--draws` uniform actions has a higher Q than mu(s)
  grad_norm     mean norm of dQ/da at mu(s) over the directions mu can move in (not out past a bound):
                how hard the actor's gradient pushes away from mu
  at_bound      share of mu's components at a bound (|mu| > 0.999)
and against the truth, at a subset of those states where the mode and `TRUTH_DRAWS` uniform actions are each
rolled out (one action, then the policy's mode to the episode's end; discounted return):
  d_cand, p_better_cand   d_uniform and p_better over these candidates (the critic's, or the true returns')
  rank_corr     Spearman correlation of the critic's Q with the true return over the candidates, mean over states
                (rank_corr_se: its standard error over states)
  sign_agree    share of (state, candidate) pairs where critic and truth agree on whether it beats the mode
                (compare it with the base rate: a critic that always prefers the mode scores the truth's
                share of candidates that do not beat it)
A critic whose landscape is flat or tilted away from the policy's actions (d ~ 0, p_better large) gives
the actor a gradient that leaves the demonstrated behaviour; the truth says whether that is the task's
own landscape or the critic's error.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

SEEDS = (0, 1, 2)
STATE_SEED = 700_000  # episodes for the states: disjoint from evaluation (100_000+) and fine-tuning (seed * 1_000_003 + ep)
# label -> (fine-tuning algorithm, retained offline fraction, critic-only phase?): the critics after `--critic-only`
# env steps of critic-only updates, or after the first `--joint` env steps of updates of critics and actor together
# (WSRL's, and the Cal-QL learner's with its penalty kept online)
KINDS = {"online only (WSRL)": ("wsrl", 0.0, True), "50/50 retention": ("wsrl", 0.5, True),
         "WSRL, joint updates": ("wsrl", 0.0, False), "Cal-QL penalty kept, joint updates": ("calql", 0.0, False)}
# --setup -> the pre-trained checkpoint, where runs and records go, the fine-tuning settings every kind shares,
# which kinds it measures, and whether fine-tuning continues the pre-training's optimizers (its checkpoints/last)
SETUPS = {
    # study pc's 40k-step 2-critic Cal-QL (0.86), UTD 1 (sections 5.1-5.3)
    "pc": {"pretrained": "runs/rl_study/wsrl_pc/pretrain_calql/policy", "root": "runs/rl_study/q_landscape",
           "records": "docs/results/offline_to_online/q_landscape.jsonl", "label": "pre-trained Cal-QL",
           "overrides": ["agent.utd=1", "agent.num_qs=2", "agent.num_min_qs=2"], "kinds": list(KINDS), "optimizers": False},
    # study pc10's 40k-step 10-critic Cal-QL with study pc10w's WSRL settings: the paper's ensemble and UTD, and
    # the reference SAC settings probed together in pc_all (optimizers carried, actor on the critics' min)
    "pc10": {"pretrained": "runs/rl_study/wsrl_pc10/pretrain_calql/policy", "root": "runs/rl_study/q_landscape_pc10",
             "records": "docs/results/offline_to_online/q_landscape_pc10.jsonl", "label": "pre-trained Cal-QL (10 critics)",
             "overrides": ["agent.utd=4", "agent.num_qs=10", "agent.num_min_qs=2", "finetune.optimizer_state=checkpoint",
                           "agent.actor_lr=0.0001", "agent.temperature_lr=0.0001", "agent.backup_entropy=false",
                           "agent.actor_q=min"],
             "kinds": ["WSRL, joint updates"], "optimizers": True},
}
SIGMAS = (0.05, 0.2, 0.5)
TRUTH_STARTS = (0, 15, 30)  # steps into each episode where the true returns of candidate actions are rolled out
TRUTH_DRAWS = 16  # uniform candidate actions per such state (besides the policy's mode)


def _setup(a: argparse.Namespace) -> dict:
    """The --setup's settings with its paths as Paths."""
    st = dict(SETUPS[a.setup])
    for k in ("pretrained", "root", "records"):
        st[k] = Path(st[k])
    return st


def _updates(kind: str, a: argparse.Namespace) -> int:
    """Env steps after the warm-up that this kind's critics have had (updates: that times the setup's UTD)."""
    return a.critic_only if KINDS[kind][2] else a.joint


def _run_dir(kind: str, seed: int, a: argparse.Namespace) -> Path:
    algo, retain, held = KINDS[kind]
    if held:
        return _setup(a)["root"] / f"{'retain' if retain else 'online'}_c{a.critic_only}_s{seed}"
    return _setup(a)["root"] / f"{'' if algo == 'wsrl' else algo + '_'}joint_u{a.joint}_s{seed}"


def run(a: argparse.Namespace) -> None:
    """Fine-tune: the warm-up, then `critic_only` env steps of critic-only updates (the actor held), or for the
    joint kinds the first `joint` updates of critics and actor (WSRL's, and the Cal-QL learner's)."""
    from robolearn.rl.wsrl import finetune

    from wsrl_finetune import _with_optimizers  # scripts/ is on the path when this script runs

    st = _setup(a)
    # the pre-training's final optimizer state lives in its checkpoints/last (checked to be the final step)
    start = _with_optimizers(st["pretrained"]) if st["optimizers"] else st["pretrained"]
    for seed in a.seeds:
        for kind in st["kinds"]:
            algo, retain, held = KINDS[kind]
            out, n = _run_dir(kind, seed, a), _updates(kind, a)
            if (out / "policy" / "checkpoint.json").exists():
                continue
            finetune(start, task="push_cube", algo=algo, warmup=a.warmup, retain_offline=retain,
                     steps=a.warmup + n, data=a.data if retain else None, out=out, wandb_mode="off", progress=False,
                     overrides=[*st["overrides"], "finetune.batch_size=256",
                                f"finetune.critic_only={n if held else 0}", f"finetune.eval_every={a.warmup + n}",
                                "finetune.eval_episodes=0", f"finetune.log_every={n}", f"finetune.seed={seed}"])
            print(f"{out} done at {time.strftime('%H:%M UTC', time.gmtime())}", flush=True)


def _episodes(agent, episodes: int, env_kwargs: dict) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    """(observations, actions) of deterministic episodes of the agent's (pre-trained) policy on push_cube, seeds
    STATE_SEED + episode: the states every critic is measured at, and the prefixes that restore them."""
    from robolearn.rl.envs import make_env

    env = make_env("push_cube", **env_kwargs)
    out = []
    for ep in range(episodes):
        obs, done, seen, actions = env.reset(seed=STATE_SEED + ep), False, [], []
        while not done:
            seen.append(obs)
            actions.append(agent.act(obs))
            obs, _, term, trunc, _ = env.step(actions[-1])
            done = term or trunc
        out.append((seen, actions))
    env.close()
    return out


def _true_returns(agent, episodes: list, env_kwargs: dict, starts: tuple[int, ...], draws: int, gamma: float, seed: int = 0) -> dict:
    """Ground truth for the critics: at the states `starts` steps into each of the deterministic `episodes`, the
    discounted return to the episode's end of taking the policy's mode, or one of `draws` uniform actions, and
    following the policy's mode after it (the env is restored by replaying the episode's actions from its seed)."""
    from robolearn.rl.envs import make_env

    sim = make_env("push_cube", **env_kwargs)
    g = np.random.default_rng(seed)

    def rollout(ep: int, prefix: list[np.ndarray], first: np.ndarray, start_obs: np.ndarray) -> float:
        obs = sim.reset(seed=STATE_SEED + ep)
        for act in prefix:
            obs = sim.step(act)[0]
        if not np.array_equal(obs, start_obs):
            raise RuntimeError(f"episode {ep}: replaying {len(prefix)} actions did not reproduce the state (non-deterministic env)")
        ret, k, action, done = 0.0, 0, first, False
        while not done:
            obs, r, term, trunc, _ = sim.step(action)
            ret += gamma**k * r
            k += 1
            done = term or trunc
            action = agent.act(obs)
        return ret

    obs_out, cands, returns = [], [], []
    for ep, (seen, actions) in enumerate(episodes):
        for t in (t for t in starts if t < len(seen)):
            mu = actions[t]
            cand = np.concatenate([mu[None], g.uniform(-1, 1, (draws, mu.shape[0])).astype(np.float32)])
            obs_out.append(seen[t])
            cands.append(cand)
            returns.append([rollout(ep, actions[:t], a, seen[t]) for a in cand])
    sim.close()
    return {"obs": np.asarray(obs_out, np.float32), "actions": np.asarray(cands, np.float32), "returns": np.asarray(returns)}


def agreement(agent, truth: dict) -> dict[str, float]:
    """How well a critic orders the candidate actions of `truth` at each state: Spearman correlation of Q with the
    true return over the candidates (mean over states), and the share of (state, uniform action) pairs where
    Q and the truth agree on whether the action beats the mode."""
    import torch

    obs, acts, ret = truth["obs"], truth["actions"], truth["returns"]  # (S, D), (S, 1 + draws, A), (S, 1 + draws)
    s, c, a_dim = acts.shape
    with torch.no_grad():
        x = agent.norm(torch.as_tensor(np.repeat(obs, c, 0)))
        q = agent.critic(x, torch.as_tensor(acts.reshape(s * c, a_dim))).mean(0).reshape(s, c).numpy()

    def ranks(v: np.ndarray) -> np.ndarray:
        """Ranks within each row, tied values sharing their average rank (Spearman's convention)."""
        out = np.empty(v.shape, float)
        for i, row in enumerate(v):
            ordinal = np.empty(len(row))
            ordinal[np.argsort(row, kind="stable")] = np.arange(len(row))
            _, group, count = np.unique(row, return_inverse=True, return_counts=True)
            out[i] = np.bincount(group, weights=ordinal)[group] / count[group]
        return out

    rq, rt = ranks(q), ranks(ret)
    rq, rt = rq - rq.mean(1, keepdims=True), rt - rt.mean(1, keepdims=True)
    spearman = (rq * rt).sum(1) / np.sqrt((rq**2).sum(1) * (rt**2).sum(1) + 1e-12)
    agree = (q[:, 1:] > q[:, :1]) == (ret[:, 1:] > ret[:, :1])
    return {"d_cand": float((q[:, 1:] - q[:, :1]).mean()), "p_better_cand": float((q[:, 1:].max(1) > q[:, 0]).mean()),
            "rank_corr": float(spearman.mean()), "rank_corr_se": float(spearman.std(ddof=1) / np.sqrt(len(spearman))),
            "sign_agree": float(agree.mean())}


def landscape(agent, actor_agent, obs: np.ndarray, draws: int, seed: int = 0) -> dict[str, float]:
    """The statistics of the docstring for `agent`'s critics around `actor_agent`'s policy mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = agent.norm(torch.as_tensor(obs))
    mu = torch.as_tensor(actor_agent.act(obs))

    def q(actions: torch.Tensor) -> torch.Tensor:  # (B, A) -> (B,), ensemble mean
        return agent.critic(x, actions).mean(0)

    a_mu = mu.clone().requires_grad_(True)
    q_mu = q(a_mu)
    (grad,) = torch.autograd.grad(q_mu.sum(), a_mu)
    q_mu = q_mu.detach()
    # only directions the actor can move in: a mode at the bound (tanh saturated) cannot go further out
    pinned = (mu.abs() > 0.999) & (torch.sign(grad) == torch.sign(mu))
    out = {"states": int(len(obs)), "q_mode": float(q_mu.mean()), "grad_norm": float(grad.masked_fill(pinned, 0).norm(dim=-1).mean()),
           "at_bound": float((mu.abs() > 0.999).float().mean())}
    with torch.no_grad():
        for sigma in SIGMAS:
            d = [q((mu + sigma * torch.randn(mu.shape, generator=g)).clamp(-1, 1)) - q_mu for _ in range(draws)]
            out[f"d_sigma{sigma}"] = float(torch.stack(d).mean())
        uni = torch.stack([q(torch.rand(mu.shape, generator=g) * 2 - 1) for _ in range(draws)])  # (draws, B)
        out["d_uniform"] = float((uni - q_mu).mean())
        out["p_better"] = float((uni.max(0).values > q_mu).float().mean())
    return out


def measure(a: argparse.Namespace) -> None:
    """One record per critic: the pre-trained one, then each finished run's (appended, atomically rewritten)."""
    import torch

    from robolearn.rl.algos import load_agent

    torch.set_num_threads(1)
    st = _setup(a)
    pre, meta = load_agent(st["pretrained"])
    env_kwargs = dict(meta.get("env_kwargs") or {})
    episodes = _episodes(pre, a.episodes, env_kwargs)
    obs = np.asarray([o for seen, _ in episodes for o in seen], np.float32)
    truth = _true_returns(pre, episodes, env_kwargs, TRUTH_STARTS, TRUTH_DRAWS, pre.cfg.discount)
    ret = truth["returns"]
    true_rec = {"critic": "true returns (rollouts)", "seed": None, "critic_only": 0, "dir": None, "states": int(len(ret)),
                "d_cand": float((ret[:, 1:] - ret[:, :1]).mean()), "p_better_cand": float((ret[:, 1:].max(1) > ret[:, 0]).mean()),
                "return_mode": float(ret[:, 0].mean()), "abs_d_median": float(np.median(np.abs(ret[:, 1:] - ret[:, :1]))),
                "abs_d_p90": float(np.percentile(np.abs(ret[:, 1:] - ret[:, :1]), 90)),
                "share_d_zero": float((ret[:, 1:] == ret[:, :1]).mean()), "truth_starts": list(TRUTH_STARTS),
                "truth_draws": TRUTH_DRAWS}
    rows = [{"critic": st["label"], "seed": None, "critic_only": 0, "dir": str(st["pretrained"])}]
    for seed in a.seeds:
        for kind in st["kinds"]:
            d = _run_dir(kind, seed, a)
            if (d / "policy" / "checkpoint.json").exists():
                held = KINDS[kind][2]
                rows.append({"critic": kind, "seed": seed, "critic_only": a.critic_only if held else 0,
                             "joint_updates": 0 if held else a.joint, "dir": str(d / "policy")})
    def stamp() -> dict:
        return {"episodes": a.episodes, "state_seed": STATE_SEED, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}

    records = [{**true_rec, **stamp(), "draws": TRUTH_DRAWS}]
    print(json.dumps(records[-1]), flush=True)
    for row in rows:
        agent, _ = load_agent(row["dir"])
        records.append({**row, **landscape(agent, pre, obs, a.draws), **agreement(agent, truth), "draws": a.draws, **stamp()})
        print(json.dumps(records[-1]), flush=True)
    out = st["records"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, out)
    print(f"wrote {out}: {len(records)} critics")


def table(a: argparse.Namespace) -> list[str]:
    """Per critic kind: each statistic as the mean over seeds and (min..max)."""
    recs = [json.loads(line) for line in _setup(a)["records"].read_text().splitlines() if line.strip()]
    keys = ["q_mode", *[f"d_sigma{s}" for s in SIGMAS], "d_uniform", "p_better", "grad_norm", "d_cand", "p_better_cand",
            "rank_corr", "rank_corr_se", "sign_agree"]
    lines = ["| critic | seeds | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
    for kind in dict.fromkeys(r["critic"] for r in recs):
        rows = [r for r in recs if r["critic"] == kind]
        seeds = ", ".join(str(r["seed"]) for r in rows if r["seed"] is not None) or "-"

        def cell(k: str) -> str:
            v = [r[k] for r in rows if k in r]
            if not v:
                return "-"
            return f"{np.mean(v):.3g}" + (f" ({min(v):.3g}..{max(v):.3g})" if len(v) > 1 else "")

        lines.append(f"| {kind} | {seeds} | " + " | ".join(cell(k) for k in keys) + " |")
    n = next(r for r in recs if r["dir"])
    t = next(r for r in recs if not r["dir"])
    lines.append(f"\nColumns q_mode..grad_norm: {n['states']} states from {n['episodes']} episodes of the pre-trained policy (seeds "
                 f"{n['state_seed']}+), {n['draws']} uniform draws per state. Columns d_cand..sign_agree: {t['states']} of those states "
                 f"({t['truth_starts']} steps into each episode) with the mode and {t['truth_draws']} uniform candidate actions, "
                 f"each rolled out with the policy's mode to the episode's end (true discounted return of the mode there: "
                 f"{t['return_mode']:.3g}; |true return of a candidate - the mode's|: median {t['abs_d_median']:.3g}, 90th "
                 f"percentile {t['abs_d_p90']:.3g}, exactly 0 for {t['share_d_zero']:.0%} of the pairs). Critic-only env steps: {sorted({r['critic_only'] for r in recs if r['critic_only']})}; joint updates: "
                 f"{sorted({r['joint_updates'] for r in recs if r.get('joint_updates')}) or '-'}. The actor is the pre-trained one "
                 "for every critic (for the joint kinds their own actor has moved; the landscape is still measured around "
                 "the pre-trained mode)")
    print("\n".join(lines))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["run", "measure", "table"])
    ap.add_argument("--setup", choices=list(SETUPS), default="pc", help="which pre-training and fine-tuning settings (see SETUPS)")
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("--warmup", type=int, default=5000)
    ap.add_argument("--critic-only", type=int, default=2500, help="env steps of critic-only updates after the warm-up")
    ap.add_argument("--joint", type=int, default=250, help="first updates of critics and actor for the joint kinds (WSRL, Cal-QL penalty kept)")
    ap.add_argument("--data", default="data/o2o/push_cube_mix0.5.zarr", help="offline store the retention runs draw from")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--draws", type=int, default=32)
    a = ap.parse_args()
    {"run": run, "measure": measure, "table": table}[a.action](a)


if __name__ == "__main__":
    main()
