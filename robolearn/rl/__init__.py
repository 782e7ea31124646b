"""Offline and offline-to-online RL: IQL, CQL/Cal-QL, TD3+BC, SAC, WSRL fine-tuning.

One readable module per algorithm (iql.py, cql.py, td3bc.py, sac.py) on shared pieces:
replay.py (transitions from an EpisodeStore, online ring buffer), weighting.py (uniform / RW /
AW / top-k trajectory samplers), networks.py (tanh-Gaussian actor, LayerNorm Q ensembles, V net),
envs.py (a minimal env protocol over our tasks and gymnasium), metrics.py (continual-evaluation
metrics), offline.py / wsrl.py (the two training loops behind `robolearn offline` and
`robolearn finetune`).
"""
