"""Policy adapters: an exported policy folder behind one `predict` for the chunk executors, on
the execution provider the config asks for (numpy + onnxruntime only: never torch here).

`open_policy` picks the adapter by the card's policy type. Every adapter maps a synchronized
observation history to a raw action chunk whose first action targets the newest observation's
time: ACT returns its K actions; diffusion returns chunk[action_start:] (the rest of its
prediction horizon), sampled with RTC guidance when a chunk executor provides it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from apprentice.learning.runtime import ActOnnxRunner, DiffusionOnnxRunner, open_session
from apprentice.policy_server.card import PolicyRefused, load_card
from apprentice.policy_server.chunking import inpainted_ddim_sample

# Requested provider → onnxruntime's preference list (it falls back along the list).
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def provider_list(requested: str) -> list[str]:
    """'auto': CUDA when this onnxruntime build has it, else CPU. Whether a GPU is really there
    shows only once a session exists (`get_available_providers` lists CUDA without a GPU)."""
    if requested == "auto":
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        return PROVIDERS["cuda" if has_cuda else "cpu"]
    if requested not in PROVIDERS:
        raise PolicyRefused(f"unknown execution provider {requested!r}; use auto or {PROVIDERS}")
    return PROVIDERS[requested]


class _ProviderSessions:
    """Builds the runners' sessions on the chosen providers, with the runtime's CPU settings."""

    providers: list[str]
    threads: int

    def _graph(self, name: str) -> ort.InferenceSession:
        path = self.directory / self.card["graphs"][name]["file"]  # type: ignore[attr-defined]
        return open_session(path, self.threads, self.providers)


class _ActRunner(_ProviderSessions, ActOnnxRunner):
    def __init__(self, directory: Path, card: dict[str, Any], threads: int, providers: list[str]):
        self.providers = providers
        super().__init__(directory, card, threads)


class _DiffusionRunner(_ProviderSessions, DiffusionOnnxRunner):
    def __init__(self, directory: Path, card: dict[str, Any], threads: int, providers: list[str]):
        self.providers = providers
        super().__init__(directory, card, threads)


class PolicyAdapter(ABC):
    def __init__(self, card: dict[str, Any]) -> None:
        self.card = card
        self.n_obs_steps = int(card["n_obs_steps"])
        self.dt = 1.0 / float(card["control_rate_hz"])  # s between the chunk's actions

    @property
    @abstractmethod
    def horizon(self) -> int:
        """Actions per predicted chunk."""

    @property
    @abstractmethod
    def provider(self) -> str:
        """The execution provider the session actually runs on."""

    @abstractmethod
    def predict(
        self,
        state: np.ndarray,
        images: np.ndarray,
        prefix: np.ndarray | None = None,
        weights: np.ndarray | None = None,
    ) -> np.ndarray:
        """state (To, S) raw joint positions, images (To, N, 3, H, W) float32 in [0, 1], oldest
        first → raw chunk (horizon, A). prefix (horizon, A) / weights (horizon,): RTC guidance
        (ignored by policies that cannot be guided)."""


class ActAdapter(PolicyAdapter):
    def __init__(self, runner: ActOnnxRunner) -> None:
        super().__init__(runner.card)
        self.runner = runner

    @property
    def horizon(self) -> int:
        return int(self.card["chunk_size"])

    @property
    def provider(self) -> str:
        return self.runner.session.get_providers()[0]

    def predict(self, state, images, prefix=None, weights=None) -> np.ndarray:
        return self.runner.predict(state[-1:], images[-1:])[0]  # (K, A)


class DiffusionAdapter(PolicyAdapter):
    def __init__(self, runner: DiffusionOnnxRunner, seed: int = 0) -> None:
        super().__init__(runner.card)
        self.runner = runner
        self.start = int(self.card["action_start"])
        self.rng = np.random.default_rng(seed)

    @property
    def horizon(self) -> int:
        return int(self.card["chunk_size"]) - self.start

    @property
    def provider(self) -> str:
        return self.runner.denoiser.get_providers()[0]

    def predict(self, state, images, prefix=None, weights=None) -> np.ndarray:
        r = self.runner
        cond = r.encode(r.state_stats.normalize(state)[None], images[None])  # (1, G)
        tp, a = int(self.card["chunk_size"]), len(self.card["joint_names"])
        noise = self.rng.standard_normal((1, tp, a), dtype=np.float32)  # (1, Tp, A)
        full_prefix, full_w = None, np.zeros(tp)
        if prefix is not None and weights is not None:
            # rows before action_start are past observation steps: never guided
            full_prefix = np.zeros((tp, a), dtype=np.float32)
            full_prefix[self.start :] = r.action_stats.normalize(prefix)
            full_w[self.start :] = weights

        def denoise(x: np.ndarray, t: int) -> np.ndarray:
            return r.denoise(x, t, cond)

        x0 = inpainted_ddim_sample(
            denoise, noise, r.schedule, r.num_inference_steps, r.clip_range, full_prefix, full_w
        )  # (1, Tp, A) normalized
        return r.action_stats.unnormalize(x0[0])[self.start :]  # (Tp - start, A)


def open_policy(directory: str | Path, provider: str = "auto", threads: int = 1) -> PolicyAdapter:
    """Loads and checks the folder; raises PolicyRefused when the card or a graph is unusable
    or an explicitly requested GPU provider cannot run."""
    directory = Path(directory)
    card = load_card(directory)
    providers = provider_list(provider)
    try:
        if card["policy_type"] == "act":
            adapter: PolicyAdapter = ActAdapter(_ActRunner(directory, card, threads, providers))
        else:
            adapter = DiffusionAdapter(_DiffusionRunner(directory, card, threads, providers))
    except Exception as exc:  # onnxruntime raises its own types for corrupt or odd graphs
        raise PolicyRefused(f"{directory}: cannot load the policy graphs: {exc}") from exc
    if provider not in ("auto", "cpu") and adapter.provider == "CPUExecutionProvider":
        raise PolicyRefused(f"execution provider {provider!r} requested but only CPU is usable")
    return adapter
