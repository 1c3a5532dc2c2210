"""Random transition batches for the agent unit tests (test_rlpd.py, test_obac.py)."""
from __future__ import annotations

import numpy as np
import torch


def make_batch(rows: int, obs_dim: int, act_dim: int, seed: int = 0, mask: float | None = None,
               action_bound: float = 1.0) -> dict[str, np.ndarray]:
    """`rows` transitions: standard-normal obs/next_obs/reward, actions uniform in
    [-action_bound, action_bound], mask all `mask` or 1 with probability 0.9."""
    rng = np.random.default_rng(seed)
    return {"obs": rng.standard_normal((rows, obs_dim), np.float32),
            "action": rng.uniform(-action_bound, action_bound, (rows, act_dim)).astype(np.float32),
            "reward": rng.standard_normal(rows).astype(np.float32),
            "next_obs": rng.standard_normal((rows, obs_dim), np.float32),
            "mask": (np.full(rows, mask, np.float32) if mask is not None
                     else (rng.random(rows) > 0.1).astype(np.float32))}


def tensors(batch: dict) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in batch.items()}
