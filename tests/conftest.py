import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).parent))


def pytest_configure(config):
    # The suite trains many tiny networks on a 2-core box: one intra-op torch thread avoids
    # oversubscription stalls (several test modules used to set this each on their own).
    import torch

    torch.set_num_threads(1)
