"""A training run's checkpoint, `checkpoints/last` in the run folder. Nothing pickled:

    model/, ema/                  the weights, checkpoint.py format (config.json + safetensors)
    optimizer.safetensors         the optimizer's moment tensors, named "<param id>.<key>"
    state.json                    step, world size, the optimizer's scalars and param groups
    rng.rank<r>.safetensors       the torch (and CUDA) RNG states of rank r

`save_checkpoint` (every rank calls it) writes checkpoints/.last.tmp, then swaps it in for
checkpoints/last; `load_checkpoint` restores all of it into a freshly built run, which is
what makes a resumed run repeat an uninterrupted one (train.py). `StopRequest` turns Ctrl-C
(or SIGTERM) into "finish this step, checkpoint it, stop".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from apprentice.learning.checkpoint import Policy, load_policy, save_policy
from apprentice.learning.train_config import LAST


def save_checkpoint(
    run_dir: Path, step: int, policy: Policy, ema_model: Policy | None,
    optim: torch.optim.Optimizer, rank: int, world_size: int, barrier: Callable[[], None],
) -> None:  # fmt: skip
    """Writes checkpoints/.last.tmp, then swaps it in for checkpoints/last. Each rank writes
    its RNG state; rank 0 writes the rest (the replicas' weights and optimizers are equal)."""
    final, tmp = run_dir / LAST, run_dir / "checkpoints" / ".last.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    save_file(_rng_tensors(), str(tmp / f"rng.rank{rank}.safetensors"))
    barrier()
    if rank == 0:
        save_policy(policy, tmp / "model")
        if ema_model is not None:
            save_policy(ema_model, tmp / "ema")
        tensors, scalars = _optimizer_to_files(optim)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = {"step": step, "world_size": world_size, "optimizer": scalars}
        (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
        old = run_dir / "checkpoints" / ".last.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


def load_checkpoint(
    ckpt: Path, policy: Policy, ema_model: Policy | None, optim: torch.optim.Optimizer,
    device: torch.device, rank: int, seed: int,
) -> int:  # fmt: skip
    """Restores the weights, EMA weights, optimizer state and this rank's RNG state saved in
    `ckpt` into a freshly built run (policy and EMA already on `device`, the optimizer over
    the policy's parameters); returns the step it was saved at. A rank with no saved RNG
    state (resumed with more processes than saved) gets a fresh, distinct stream."""
    state = json.loads((ckpt / "state.json").read_text())
    step = int(state["step"])
    policy.load_state_dict(load_policy(ckpt / "model").state_dict())
    if ema_model is not None:
        ema_model.load_state_dict(load_policy(ckpt / "ema").state_dict())
    tensors = load_file(str(ckpt / "optimizer.safetensors"), device=str(device))
    optim.load_state_dict(_optimizer_from_files(tensors, state["optimizer"]))
    rng_file = ckpt / f"rng.rank{rank}.safetensors"
    if rng_file.exists():
        _set_rng(load_file(str(rng_file)))
    else:  # resumed with more processes than saved: fresh, distinct streams
        torch.manual_seed(seed + 7919 * (step + 1) + rank)
    return step


def _optimizer_to_files(optim: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optim.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "state_scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], data: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in data["state_scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": data["param_groups"]}


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return out


def _set_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


class StopRequest:
    """While open, the first SIGINT or SIGTERM only sets `signal`: the training loop finishes
    its step, checkpoints it and stops (a resumed run then repeats an uninterrupted one). A
    second signal interrupts at once, as usual. Inert off the main thread and under DDP (a
    rank stopping alone would leave the others waiting in a collective)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if self.enabled:
            self._old = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
