"""Policy registry: name -> (config class, policy class), as "module:attribute" strings.

Entries are resolved on first use so `import robolearn.policies` stays cheap (diffusion pulls in
diffusers only when a diffusion policy is built). Adding a policy means adding one line here.
"""

from __future__ import annotations

import importlib
from typing import Any

POLICIES: dict[str, tuple[str, str]] = {
    "bc": ("robolearn.policies.bc.configuration:BCConfig", "robolearn.policies.bc.modeling:BCPolicy"),
    "diffusion": (
        "robolearn.policies.diffusion.configuration:DiffusionConfig",
        "robolearn.policies.diffusion.modeling:DiffusionPolicy",
    ),
    "hierarchical": (
        "robolearn.policies.hierarchical.configuration:HierarchicalConfig",
        "robolearn.policies.hierarchical.modeling:HierarchicalPolicy",
    ),
    "sailor": ("robolearn.sailor.configuration:SailorConfig", "robolearn.sailor.agent:SailorPolicy"),
    "rl_actor": ("robolearn.policies.rl_actor.configuration:RLActorConfig", "robolearn.policies.rl_actor.modeling:RLActorPolicy"),
}

# Registered policies that `robolearn train` does not train (their own commands do): they are
# loadable and evaluable like any policy, but `train --policy` refuses them with the right command.
TRAINED_ELSEWHERE: dict[str, str] = {"sailor": "robolearn sailor", "rl_actor": "robolearn offline / robolearn finetune"}


def resolve_entry(target: str) -> Any:
    """Import the object a registry names as "module:attribute" (registries stay import-free)."""
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def policy_classes(name: str) -> tuple[type, type]:
    """(config class, policy class) registered under `name`."""
    if name not in POLICIES:
        raise KeyError(f"unknown policy {name!r} (known: {', '.join(POLICIES)})")
    config_target, policy_target = POLICIES[name]
    return resolve_entry(config_target), resolve_entry(policy_target)


def make_policy(name: str, config: Any, stats: dict[str, dict[str, Any]]) -> Any:
    """Build a fresh policy from its config (shapes filled in) and dataset normalization stats."""
    _, policy_cls = policy_classes(name)
    return policy_cls.from_stats(config, stats)
