"""`robolearn data retrieve`: query a prior store with target demos, write the merged store."""

from __future__ import annotations

import argparse

from robolearn.retrieval.core import METHODS


def _retrieve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robolearn.data.store import EpisodeStore
    from robolearn.retrieval.core import RetrievalConfig, retrieve
    from robolearn.retrieval.store_io import write_retrieval_store

    out = Path(args.out)
    if out.exists() and not args.overwrite:  # fail before any work
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    cfg = RetrievalConfig(method=args.method, fraction=args.fraction, threshold=args.threshold, top_k=args.top_k,
                          seed=args.seed, obs_keys=args.obs_keys, target_share=args.target_share,
                          similarity=args.similarity, strap_features=args.strap_features, segment_len=args.segment_len,
                          density=args.density, vae_epochs=args.vae_epochs)
    prior = EpisodeStore.open(args.prior, mode="r")
    target = EpisodeStore.open(args.target, mode="r")
    result = retrieve(prior, target, cfg)
    store = write_retrieval_store(out, prior, target, result.mask, result.scores, result.info,
                                  target_share=cfg.target_share, overwrite=args.overwrite)
    i = result.info
    print(f"{cfg.method}: retrieved {i['retrieved_steps']} of {i['prior_steps']} prior steps "
          f"({100 * i['fraction_retrieved']:.1f}%) in {i['seconds']:.1f} s -> {store.path} "
          f"({store.num_episodes} episodes, {store.num_steps} steps; train with data.mix=retrieval)")
    return 0


def register_retrieve(sub: argparse._SubParsersAction) -> None:
    """Add `retrieve` to the `robolearn data` subcommands."""
    p = sub.add_parser("retrieve", help="retrieve prior steps like the target demos (br, strap, importance) into a merged store")
    p.add_argument("--prior", required=True, help="large unlabeled store to retrieve from")
    p.add_argument("--target", required=True, help="the few target demonstrations")
    p.add_argument("--method", required=True, choices=METHODS)
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--fraction", type=float, help="keep this share of the prior's steps (default 0.25 for br/importance)")
    sel.add_argument("--threshold", type=float, help="keep steps scoring at least this (br: cosine; strap: exp(-cost/median); importance: log ratio)")
    sel.add_argument("--top-k", type=int, help="br/importance: k best steps; strap: k best segments per target sub-trajectory (default 100)")
    p.add_argument("--out", required=True, help="merged store to write (target + prior, mask, weights, scores)")
    p.add_argument("--target-share", type=float, default=0.5, help="share of each batch drawn from the target demos (paper: 0.5)")
    p.add_argument("--obs-keys", nargs="+", help="low-dim obs keys to embed (default: all shared)")
    p.add_argument("--similarity", default="cosine", choices=["cosine", "l2"], help="br score")
    p.add_argument("--strap-features", default="embedding", choices=["embedding", "state"])
    p.add_argument("--segment-len", type=int, default=16, help="strap: target sub-trajectory length")
    p.add_argument("--density", default="kde", choices=["kde", "classifier"], help="importance: density-ratio estimator")
    p.add_argument("--vae-epochs", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output store")
    p.set_defaults(func=_retrieve)
