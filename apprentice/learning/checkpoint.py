"""Policy checkpoints: `config.json` + `model.safetensors` (weights and normalization stats).

Loading deserializes no Python objects: the config is JSON, the tensors are safetensors, so a
checkpoint from an untrusted source cannot run code when loaded.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from apprentice.learning.act.config import ActConfig
from apprentice.learning.act.model import ActPolicy
from apprentice.learning.diffusion.config import DiffusionConfig
from apprentice.learning.diffusion.model import DiffusionPolicy

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FORMAT = "apprentice.policy_checkpoint/1"

Policy = ActPolicy | DiffusionPolicy
PolicyConfig = ActConfig | DiffusionConfig
# The one registry of policy types: checkpoints, export and runtimes all go through it.
POLICIES: dict[str, tuple[type[PolicyConfig], type[Policy]]] = {
    ActPolicy.policy_type: (ActConfig, ActPolicy),
    DiffusionPolicy.policy_type: (DiffusionConfig, DiffusionPolicy),
}


def config_to_json(cfg: PolicyConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)  # tuples become lists; configs turn them back


def config_from_json(policy_type: str, data: dict[str, Any]) -> PolicyConfig:
    if policy_type not in POLICIES:
        raise ValueError(f"unknown policy type {policy_type!r}; known: {sorted(POLICIES)}")
    config_cls = POLICIES[policy_type][0]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {policy_type} config keys: {sorted(unknown)}")
    return config_cls(**data)


def build_policy(cfg: PolicyConfig) -> Policy:
    for config_cls, policy_cls in POLICIES.values():
        if type(cfg) is config_cls:
            return policy_cls(cfg)
    raise TypeError(f"no policy registered for {type(cfg).__name__}")


def save_policy(policy: Policy, directory: str | Path) -> Path:
    """Writes `config.json` and `model.safetensors` into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    header = {
        "format": CHECKPOINT_FORMAT,
        "policy_type": policy.policy_type,
        "config": config_to_json(policy.cfg),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(header, indent=2) + "\n")
    tensors = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"policy_type": policy.policy_type})
    return directory


def load_policy(directory: str | Path) -> Policy:
    """Rebuilds the policy from its config and loads every tensor (strict); returns it in eval
    mode on the CPU."""
    directory = Path(directory)
    header = json.loads((directory / CONFIG_FILE).read_text())
    if header.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{directory / CONFIG_FILE}: not a {CHECKPOINT_FORMAT} checkpoint")
    policy = build_policy(config_from_json(header["policy_type"], header["config"]))
    state = load_file(str(directory / WEIGHTS_FILE), device="cpu")
    policy.load_state_dict(state, strict=True)
    return policy.eval()
