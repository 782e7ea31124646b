"""Typed feature schema: what each stored/consumed array is (dtype, per-step shape, role)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

ROLES = ("obs", "action", "reward", "done", "source", "stage", "sim_state", "aux")


@dataclass(frozen=True)
class Feature:
    """One per-step array: dtype name, shape of a single step, and its role."""

    dtype: str
    shape: tuple[int, ...] = field(default_factory=tuple)
    role: str = "aux"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        try:
            np.dtype(self.dtype)
        except TypeError:
            raise ValueError(f"feature dtype {self.dtype!r} is not a numpy dtype") from None
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        if self.role not in ROLES:
            raise ValueError(f"feature role {self.role!r} is not one of {', '.join(ROLES)}")

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "role": self.role}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Feature":
        try:
            return cls(dtype=data["dtype"], shape=tuple(data["shape"]), role=data.get("role", "aux"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed feature spec {data!r}: {exc}") from None


def features_to_json(features: dict[str, Feature]) -> dict[str, dict[str, Any]]:
    return {k: f.to_json() for k, f in features.items()}


def features_from_json(data: dict[str, Any]) -> dict[str, Feature]:
    if not isinstance(data, dict):
        raise ValueError("feature spec must be a mapping of key -> {dtype, shape, role}")
    return {k: Feature.from_json(v) for k, v in data.items()}


# Columns every store carries, whatever the task.
STANDARD_FEATURES: dict[str, Feature] = {
    "reward": Feature("float32", (), "reward"),
    "done": Feature("bool", (), "done"),
    "source": Feature("uint8", (), "source"),
    "stage": Feature("int32", (), "stage"),
}
