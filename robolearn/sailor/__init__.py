"""SAILOR (Jain et al., NeurIPS 2025): learning to search around a diffusion policy.

A latent world model (RSSM), a moment-matching reward model on its latent features, a critic
ensemble trained on imagined TD(lambda) returns of the base policy, and a residual MPPI planner
that corrects the base policy's action chunk at every step; expert iteration distills the
planner's corrections back into the diffusion policy. See `loop.py` for the training schedule.
"""
