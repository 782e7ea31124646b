"""Read a robolearn `export-lerobot` output with LeRobot's own `LeRobotDataset` (lerobot 0.4.4, v3.0).

lerobot 0.4.4 (the last release for Python 3.11) pins torch<2.11 and imports torchvision, whose
compiled ops do not load beside this project's CPU torch 2.13, so it cannot be a dependency. This
check runs in a throwaway venv instead (never the project's environment):

    python3 -m venv --system-site-packages /tmp/lerobot_venv
    /tmp/lerobot_venv/bin/pip install --no-deps lerobot==0.4.4 accelerate psutil
    /tmp/lerobot_venv/bin/pip install "datasets>=4,<5" "huggingface-hub>=0.34.2,<0.36" "av>=15,<16" \
        jsonlines "deepdiff>=7,<9" draccus==0.10.0 termcolor
    robolearn data export-lerobot data/x.zarr /tmp/x_lerobot
    /tmp/lerobot_venv/bin/python scripts/check_lerobot_reader.py /tmp/x_lerobot

Two stand-ins, both outside the data path: an empty `torchvision` module so lerobot imports, and,
because lerobot's own pyav decoder goes through torchvision.io, video frames are decoded with
PyAV at exactly the timestamps LeRobotDataset asks for (its `from_timestamp` + frame timestamp,
with its own tolerance). Everything else -- info.json, tasks, episodes, stats, parquet frames,
the frame -> video timestamp mapping -- is lerobot's code. Prints the metadata and three items.
"""

import importlib.machinery
import json
import sys
import types
from pathlib import Path


def _stub_torchvision() -> None:
    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.v2 = types.ModuleType("torchvision.transforms.v2")
    tv.transforms.v2.functional = types.ModuleType("torchvision.transforms.v2.functional")

    def any_name(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *a, **k: None})

    for mod in (tv, tv.transforms, tv.transforms.v2, tv.transforms.v2.functional):
        mod.__getattr__ = any_name
        mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)
        sys.modules[mod.__name__] = mod


def main() -> None:
    _stub_torchvision()
    import av
    import numpy as np
    import torch
    import lerobot.datasets.lerobot_dataset as ld
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    def decode_pyav(video_path, timestamps, tolerance_s, backend=None):
        with av.open(str(video_path)) as container:
            frames = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
        out = []
        for ts in timestamps:
            i = int(np.argmin([abs(t - ts) for t, _ in frames]))
            assert abs(frames[i][0] - ts) < tolerance_s, (frames[i][0], ts)
            out.append(torch.from_numpy(frames[i][1]).permute(2, 0, 1).float() / 255)
        return torch.stack(out)

    ld.decode_video_frames = decode_pyav
    root = Path(sys.argv[1])
    meta = LeRobotDatasetMetadata("local/robolearn", root=root)
    print("meta:", meta.total_episodes, "episodes", meta.total_frames, "frames", meta.fps, "fps", meta.video_keys, list(meta.tasks.index))
    ds = LeRobotDataset("local/robolearn", root=root)
    print("len", len(ds), "episodes", ds.num_episodes)
    for idx in (0, len(ds) // 2, len(ds) - 1):
        item = ds[idx]
        shown = {k: (v.tolist() if getattr(v, "ndim", 2) <= 1 else list(v.shape)) if hasattr(v, "shape") else v for k, v in item.items()}
        for key in meta.video_keys:
            shown[key + " mean"] = float(item[key].mean())
        print(idx, json.dumps(shown, default=str))
    print("stats:", sorted(meta.stats))


if __name__ == "__main__":
    main()
