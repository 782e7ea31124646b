"""Checkpoints: named groups of tensors as safetensors files plus one JSON file of metadata.

Layout of a checkpoint directory:
    model.safetensors        the weights (group "model"); other groups (optimizer, ema, ...) as
    <group>.safetensors      further files, listed in checkpoint.json
    checkpoint.json          format version, robolearn version, each group's file, sha256 and
                             tensor names/shapes/dtypes, plus the caller's metadata (policy name,
                             config, normalizer stats, feature spec, task, step, ...)

Nothing is ever unpickled. A checkpoint is written whole into a hidden sibling directory
(tensor files first, checkpoint.json last) and then exchanged with the target directory in one
atomic rename, so a crash mid-save leaves the previous checkpoint intact (or none).

Loading trusts nothing: checkpoint.json carries a sha256 of its own content (format version 2),
every tensor file's safetensors header is read first and must match the JSON's tensor list, the
file's size and a size limit, and a policy's config is checked against those header shapes by
building the model on torch's `meta` device (no memory) before any real module exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

FORMAT = "robolearn-checkpoint"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no content hash
META_FILE = "checkpoint.json"
MODEL_GROUP = "model"
CONTENT_HASH = "content_sha256"
RESERVED_KEYS = ("format", "format_version", "robolearn_version", "tensor_files", CONTENT_HASH)
MAX_TENSOR_BYTES = 64 << 30  # one checkpoint's tensors; far beyond any model here, far below a crafted one
MAX_HEADER_BYTES = 100 << 20
MAX_META_BYTES = 256 << 20
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

    directory.parent.mkdir(parents=True, exist_ok=True)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"cannot save a checkpoint to {directory}: it is a file")
    _remove_abandoned_saves(directory)
    staging = directory.with_name(f".{directory.name}.saving-{os.getpid()}-{os.urandom(4).hex()}")
    staging.mkdir()
    try:
        _write_files(staging, groups, meta_text, safetensors_bytes, robolearn.__version__)
        _publish_checkpoint(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return directory


def _remove_abandoned_saves(directory: Path) -> None:
    """Staging directories of saves whose process is gone (killed mid-save) were never published."""
    pattern = re.compile(rf"^\.{re.escape(directory.name)}\.saving-(\d+)-[0-9a-f]{{8}}$")
    for entry in directory.parent.iterdir():
        m = pattern.match(entry.name)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            pass


def _publish_checkpoint(staging: Path, directory: Path) -> None:
    """Put a complete checkpoint in place in one rename: `directory` holds the old checkpoint or
    the new one, never a mix (a kill mid-save used to leave new tensor files next to the old
    JSON, which no resume could read). Anything else in an existing directory (e.g. videos) is
    carried over."""
    from robolearn.data.store import swap_dirs

    if not directory.exists():
        os.rename(staging, directory)
    else:
        for entry in directory.iterdir():
            if entry.name != META_FILE and not entry.name.endswith(".safetensors") and not entry.name.startswith("."):
                if not (staging / entry.name).exists():
                    os.rename(entry, staging / entry.name)
        swap_dirs(staging, directory)  # staging now holds the old checkpoint
    _fsync_dir(directory.parent)


def _write_files(directory: Path, groups: Mapping[str, Mapping[str, torch.Tensor]], meta_text: str, to_bytes: Any,
                 version: str) -> None:
    """The tensor files, then checkpoint.json (with its content hash) last."""
    tensor_files: dict[str, Any] = {}
    for name, tensors in groups.items():
        # Cloning detaches shared storage (safetensors refuses aliased tensors) and moves to CPU.
        cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
        data = to_bytes(cpu)
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
        "robolearn_version": version,
        "tensor_files": tensor_files,
        **json.loads(meta_text),
    }
    record[CONTENT_HASH] = content_hash(record)
    _atomic_write(directory / META_FILE, json.dumps(record, indent=1, allow_nan=False).encode())
    _fsync_dir(directory)


def content_hash(record: Mapping[str, Any]) -> str:
    """sha256 of a checkpoint.json record (without its own hash), in a canonical JSON form."""
    body = {k: v for k, v in record.items() if k != CONTENT_HASH}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()).hexdigest()


def verify_content(directory: str | Path, meta: Mapping[str, Any]) -> None:
    """checkpoint.json must match the hash it carries (version 2); version 1 has none."""
    if meta.get("format_version") == 1:
        return
    stored = meta.get(CONTENT_HASH)
    if not isinstance(stored, str):
        raise CheckpointError(f"{Path(directory) / META_FILE} has no {CONTENT_HASH}: the checkpoint is incomplete or was modified")
    try:
        actual = content_hash(meta)
    except (TypeError, ValueError):
        actual = ""
    if actual != stored:
        raise CheckpointError(f"{Path(directory) / META_FILE} does not match its {CONTENT_HASH}: it was modified or corrupted")


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """(tensor name -> {dtype, shape, data_offsets}, bytes of tensor data) from a safetensors
    file's header alone, checked against the file's size: a truncated file fails here."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise CheckpointError(f"{path} is not a safetensors file (shorter than its header)")
            n = int.from_bytes(raw_len, "little")
            if n <= 0 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(f"{path} is not a valid safetensors file (header length {n} for a {size}-byte file)")
            header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is not a valid safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a valid safetensors file (header is not a mapping)")
    header.pop("__metadata__", None)
    data_bytes = 0
    for name, spec in header.items():
        try:
            start, end = (int(x) for x in spec["data_offsets"])
            shape = [int(d) for d in spec["shape"]]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed safetensors header entry for {name!r}") from None
        if start < 0 or end < start or any(d < 0 for d in shape):
            raise CheckpointError(f"{path}: malformed safetensors header entry for {name!r}")
        data_bytes = max(data_bytes, end)
    if data_bytes > MAX_TENSOR_BYTES:
        raise CheckpointError(f"{path} declares {data_bytes} bytes of tensors, over the {MAX_TENSOR_BYTES >> 30} GiB limit")
    if 8 + n + data_bytes != size:
        raise CheckpointError(f"{path} is {size} bytes but its header describes {8 + n + data_bytes}: the file is truncated or padded")
    return header, data_bytes


def check_tensor_files(directory: str | Path, meta: Mapping[str, Any]) -> None:
    """Every listed tensor file exists and its header (shapes, size) matches checkpoint.json."""
    directory = Path(directory)
    for group, entry in meta["tensor_files"].items():
        try:
            filename, expected = entry["file"], entry["tensors"]
            if not isinstance(filename, str) or "/" in filename or filename.startswith(".") or not isinstance(expected, dict):
                raise TypeError
        except (KeyError, TypeError):
            raise CheckpointError(f"{directory / META_FILE}: malformed entry for tensor group {group!r}") from None
        path = directory / filename
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory} is missing {filename}")
        header, _ = read_header(path)
        missing = sorted(set(expected) - set(header))
        unexpected = sorted(set(header) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"{path}: tensors missing {_few(missing)}, unexpected {_few(unexpected)} (vs {META_FILE})")
        for name, spec in expected.items():
            if not isinstance(spec, dict) or list(header[name]["shape"]) != spec.get("shape"):
                raise CheckpointError(f"{path}: tensor {name!r} has shape {header[name]['shape']}, {META_FILE} says "
                                      f"{spec.get('shape') if isinstance(spec, dict) else spec}")


def read_meta(directory: str | Path, verify: bool = True) -> dict[str, Any]:
    """The validated checkpoint.json of a checkpoint directory.

    With `verify` (default) its content hash and every tensor file's header are checked too;
    `load_policy` runs those checks itself, after the config checks that name what is wrong.
    """
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"checkpoint {directory} does not exist")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} is not a directory")
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{directory} is not a robolearn checkpoint (no {META_FILE})")
    if meta_path.stat().st_size > MAX_META_BYTES:
        raise CheckpointError(f"{meta_path} is larger than {MAX_META_BYTES >> 20} MiB: not a robolearn checkpoint")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a robolearn checkpoint (format is {meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{meta_path} has format version {version!r}; this robolearn reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    files = meta.get("tensor_files")
    if not isinstance(files, dict) or MODEL_GROUP not in files:
        raise CheckpointError(f"{meta_path} lists no '{MODEL_GROUP}' tensor file")
    if verify:
        verify_content(directory, meta)
        check_tensor_files(directory, meta)
    return meta


def saved_step(directory: str | Path, meta: dict[str, Any]) -> int:
    """The training step a checkpoint was saved at (`save_policy` records it); a missing or non-integer
    one means a damaged checkpoint.json, named in one line rather than failing later in `int()`."""
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        raise CheckpointError(f"{Path(directory) / META_FILE}: step is {step!r}, not an integer")
    return step


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
    """Rebuild the policy saved in `directory` (in eval mode, on `device`) via the registry.

    Order: checkpoint.json parsed; policy, config and normalizer validated; the config's model
    built on the `meta` device and its shapes compared with the safetensors headers; the JSON's
    content hash verified; only then weights read and the real module built.
    """
    from robolearn.config import ConfigError, from_dict
    from robolearn.data.normalizer import Normalizer
    from robolearn.policies import POLICIES, policy_classes
    from robolearn.validation import config_problems

    meta = read_meta(directory, verify=False)
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
    except (ConfigError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {directory}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    problems = config_problems(config, f"{META_FILE}:config")
    if problems:
        raise CheckpointError(f"checkpoint {directory}: {problems[0]}")
    check_tensor_files(directory, meta)
    stored = {k: v["shape"] for k, v in meta["tensor_files"][MODEL_GROUP]["tensors"].items()}
    try:
        with torch.device("meta"):  # shapes only: a crafted config allocates nothing here
            skeleton = policy_cls(config, normalizer)
        own = {k: list(v.shape) for k, v in skeleton.state_dict().items()}
        del skeleton
    except (ValueError, TypeError, RuntimeError, NotImplementedError, KeyError, IndexError) as exc:
        raise CheckpointError(f"checkpoint {directory}: its config does not build a {name} policy: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    missing = sorted(set(own) - set(stored))
    unexpected = sorted(set(stored) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {directory} does not fit a {name} policy with its config: "
            f"weights missing {_few(missing)}, unexpected {_few(unexpected)}"
        )
    wrong = [f"{k} {stored[k]} vs {v}" for k, v in own.items() if stored[k] != v]
    if wrong:
        raise CheckpointError(f"checkpoint {directory}: weight shapes differ from the config's model: {_few(wrong)}")
    verify_content(directory, meta)
    tensors = load_tensors(directory, MODEL_GROUP, meta)
    policy = policy_cls(config, normalizer)
    policy.load_state_dict(tensors)
    return policy.to(device).eval()
