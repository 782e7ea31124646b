"""Checkpoints: named groups of tensors as safetensors files plus one JSON file of metadata.

Layout of a checkpoint directory:
    model.safetensors        the weights (group "model"); other groups (optimizer, ema, ...) as
    <group>.safetensors      further files, listed in checkpoint.json
    checkpoint.json          format version, robolearn version, each group's file, sha256 and
                             tensor names/shapes/dtypes, plus the caller's metadata (policy name,
                             config, normalizer stats, feature spec, task, step, ...)

Nothing is ever unpickled. Each file is written to a temporary name and renamed into place;
checkpoint.json is written last, so it is the commit point: a crash mid-save leaves either the
previous checkpoint (whose JSON hashes then expose any half-replaced tensor file) or no JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

FORMAT = "robolearn-checkpoint"
FORMAT_VERSION = 1
META_FILE = "checkpoint.json"
MODEL_GROUP = "model"
RESERVED_KEYS = ("format", "format_version", "robolearn_version", "tensor_files")
_GROUP_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


class CheckpointError(ValueError):
    """A missing, malformed, incompatible or inconsistent checkpoint (message is one line)."""


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "to_json"):
        return value.to_json()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    directory: str | Path,
    model_state: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    extra_groups: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> Path:
    """Write `model_state` (+ optional named tensor groups) and `meta` to `directory` atomically.

    `meta` must be JSON-serializable (numpy arrays/scalars are converted); keys in
    RESERVED_KEYS are written by this function and may not be passed. Returns the directory.
    """
    from safetensors.torch import save as safetensors_bytes

    import robolearn

    directory = Path(directory)
    clash = [k for k in RESERVED_KEYS if k in meta]
    if clash:
        raise CheckpointError(f"checkpoint metadata may not set reserved keys {', '.join(clash)}")
    groups = {MODEL_GROUP: model_state, **(extra_groups or {})}
    for name in groups:
        if not _GROUP_NAME.match(name):
            raise CheckpointError(f"tensor group name {name!r} must be letters, digits, '_' or '-'")
    try:
        meta_text = json.dumps(dict(meta), default=_json_default, allow_nan=False, indent=1)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata is not JSON-serializable: {exc}") from None

    directory.mkdir(parents=True, exist_ok=True)
    tensor_files: dict[str, Any] = {}
    for name, tensors in groups.items():
        # Cloning detaches shared storage (safetensors refuses aliased tensors) and moves to CPU.
        cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
        data = safetensors_bytes(cpu)
        filename = f"{name}.safetensors"
        _atomic_write(directory / filename, data)
        tensor_files[name] = {
            "file": filename,
            "sha256": hashlib.sha256(data).hexdigest(),
            "tensors": {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)} for k, v in cpu.items()},
        }
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "robolearn_version": robolearn.__version__,
        "tensor_files": tensor_files,
        **json.loads(meta_text),
    }
    _atomic_write(directory / META_FILE, json.dumps(record, indent=1, allow_nan=False).encode())
    _fsync_dir(directory)
    return directory


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The validated checkpoint.json of a checkpoint directory."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"checkpoint {directory} does not exist")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} is not a directory")
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{directory} is not a robolearn checkpoint (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a robolearn checkpoint (format is {meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path} has format version {version!r}; this robolearn reads version {FORMAT_VERSION}"
        )
    files = meta.get("tensor_files")
    if not isinstance(files, dict) or MODEL_GROUP not in files:
        raise CheckpointError(f"{meta_path} lists no '{MODEL_GROUP}' tensor file")
    return meta


def load_tensors(directory: str | Path, group: str = MODEL_GROUP, meta: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """One tensor group, checked against the hash and tensor list recorded in checkpoint.json."""
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    directory = Path(directory)
    meta = read_meta(directory) if meta is None else meta
    files = meta["tensor_files"]
    if group not in files:
        raise CheckpointError(f"checkpoint {directory} has no tensor group {group!r} (has: {', '.join(files)})")
    entry = files[group]
    try:
        path = directory / entry["file"]
        expected_hash, expected = entry["sha256"], entry["tensors"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{directory / META_FILE}: malformed entry for tensor group {group!r}") from None
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} is missing {entry['file']}")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected_hash:
        raise CheckpointError(f"{path} does not match {META_FILE} (sha256 differs): the checkpoint is incomplete or was modified")
    try:
        tensors = safetensors_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file: {exc}") from None
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: tensors missing {_few(missing)}, unexpected {_few(unexpected)}")
    for name, spec in expected.items():
        if list(tensors[name].shape) != spec.get("shape"):
            raise CheckpointError(f"{path}: tensor {name!r} has shape {list(tensors[name].shape)}, {META_FILE} says {spec.get('shape')}")
    return tensors


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model tensors, metadata) of a checkpoint; metadata is checkpoint.json as a dict."""
    meta = read_meta(directory)
    return load_tensors(directory, MODEL_GROUP, meta), meta


def _few(names: list[str], limit: int = 5) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def save_policy(
    policy: Any,
    directory: str | Path,
    *,
    step: int = 0,
    task: str | None = None,
    weights: Mapping[str, torch.Tensor] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
    extra_groups: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> Path:
    """Save a policy so `load_policy` can rebuild it: weights + name, config, normalizer, features.

    `weights` overrides the policy's own state (e.g. pass the EMA weights); `extra_groups` carries
    training state such as optimizer tensors.
    """
    from robolearn.config import to_dict
    from robolearn.data.schema import features_to_json

    meta = {
        "policy": policy.name,
        "config": to_dict(policy.config),
        "normalizer": policy.normalizer.to_json(),
        "features": features_to_json(policy.config.feature_spec()),
        "task": task,
        "step": int(step),
        **dict(extra_meta or {}),
    }
    state = policy.state_dict() if weights is None else weights
    return save_checkpoint(directory, state, meta, extra_groups)


def load_policy(directory: str | Path, device: str | torch.device = "cpu") -> Any:
    """Rebuild the policy saved in `directory` (in eval mode, on `device`) via the registry."""
    from robolearn.config import ConfigError, from_dict
    from robolearn.data.normalizer import Normalizer
    from robolearn.policies import POLICIES, policy_classes

    tensors, meta = load_checkpoint(directory)
    name = meta.get("policy")
    if name not in POLICIES:
        raise CheckpointError(f"checkpoint {directory} holds policy {name!r}, which is not registered (known: {', '.join(POLICIES)})")
    for key in ("config", "normalizer"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"checkpoint {directory} has no '{key}' entry in {META_FILE}")
    config_cls, policy_cls = policy_classes(name)
    try:
        config = from_dict(config_cls, meta["config"], where=f"{directory}/{META_FILE}:config")
        normalizer = Normalizer.from_json(meta["normalizer"])
    except (ConfigError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {directory}: {exc}") from None
    policy = policy_cls(config, normalizer)
    own = policy.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {directory} does not fit a {name} policy with its config: "
            f"weights missing {_few(missing)}, unexpected {_few(unexpected)}"
        )
    wrong = [f"{k} {list(tensors[k].shape)} vs {list(v.shape)}" for k, v in own.items() if tensors[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"checkpoint {directory}: weight shapes differ from the config's model: {_few(wrong)}")
    policy.load_state_dict(tensors)
    return policy.to(device).eval()
