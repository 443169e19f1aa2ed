"""Randomness that resumes exactly: every micro-batch re-seeds the global generators from (seed, rank, micro-step),
so a run's numbers never depend on how many draws came before a restart."""
from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def step_seed(seed: int, rank: int, micro_step: int) -> int:
    """A 63-bit seed for one micro-batch, independent of how many draws came before it."""
    digest = hashlib.sha256(f"repro:{seed}:{rank}:{micro_step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The global generators' states (python, numpy, torch, CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
