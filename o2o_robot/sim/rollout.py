"""Roll a policy through whole episodes of a sim task and summarise them (evaluation, experts)."""
from __future__ import annotations

from collections.abc import Callable

import gymnasium
import numpy as np

# Evaluation reset seeds: far from any training episode's seed, so evaluation never replays one.
EVAL_SEED_BASE = 10**9


def run_episodes(env: gymnasium.Env, act: Callable[[np.ndarray], np.ndarray], episodes: int, *,
                 seed: int, on_reset: Callable[[], None] | None = None,
                 max_steps: int | None = None) -> dict:
    """Episode i resets with `seed + i` (then `on_reset()`), steps `act(obs)` until terminated,
    truncated or `max_steps`; returns success_rate (info['is_success'] at the end), return_mean,
    return_std, and success_signal: whether every episode's final info had 'is_success' (when
    it is False, success_rate counts a missing signal as failure and measures nothing)."""
    returns, successes, signal = [], [], True
    for i in range(episodes):
        obs, info = env.reset(seed=seed + i)
        if on_reset is not None:
            on_reset()
        total, done, steps = 0.0, False, 0
        while not done and (max_steps is None or steps < max_steps):
            obs, reward, terminated, truncated, info = env.step(act(obs))
            total, steps, done = total + float(reward), steps + 1, terminated or truncated
        returns.append(total)
        successes.append(bool(info.get("is_success", False)))
        signal = signal and "is_success" in info
    return {"success_rate": float(np.mean(successes)), "return_mean": float(np.mean(returns)),
            "return_std": float(np.std(returns)), "success_signal": signal}
