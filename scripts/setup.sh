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
# X tools for the real-window teleop test (tests/test_teleop_window.py skips without them): only as
# root with apt-get, only when one is missing, and a failure never fails the setup.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
    && ! { command -v Xvfb && command -v xdotool && command -v import; } >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xdotool imagemagick; } >/dev/null 2>&1 \
        || echo "setup.sh: could not install xvfb xdotool imagemagick; the real-window teleop test will skip" >&2
fi
