#!/usr/bin/env bash
# Install robolearn and everything its test suite needs on a fresh machine (CPU).
#   dev: pytest; gpu: MuJoCo Warp (its tests run on Warp's CPU device without a GPU).
# robomimic is only a reference for the window-equality test; its declared deps pull torchvision,
# which does not work beside our CPU torch, so it is installed without them.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e ".[dev,gpu]"
python3 -m pip install -q --no-deps robomimic==0.3.0
python3 -m pip install -q termcolor
