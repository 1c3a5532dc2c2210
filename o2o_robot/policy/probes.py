"""The observations a policy is tried on before it may drive the robot (numpy only).

Validation, export parity and `o2o-robot policy check` all use these: the stored observations
the learner has (at most MAX_STORED_PROBES, evenly spaced) and `n_random` drawn around them.
With cameras, each probe is an observation dict: the state probes above plus one uint8 image
per camera: the stored image of a stored row where the store gave one, else uniform random
pixels, with one all-black and one all-white image among the random rows (the extremes an
exposure change gives).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

N_RANDOM_PROBES, MAX_STORED_PROBES = 64, 256


def _kept(n: int) -> np.ndarray:
    """Indexes of the stored rows kept: at most MAX_STORED_PROBES, evenly spaced."""
    return np.linspace(0, n - 1, min(n, MAX_STORED_PROBES)).astype(int)


def probe_observations(obs_dim: int, stored: np.ndarray | None, rng: np.random.Generator,
                       n_random: int = N_RANDOM_PROBES) -> np.ndarray:
    """State vectors to try a policy on, float32 [n_stored + n_random, obs_dim].

    The kept stored observations followed by `n_random` drawn uniformly from the box centre
    +- 3 * scale, where centre and scale are the kept stored observations' per-dimension mean
    and std (+ 1e-3, so a constant dimension still varies), or 0 and 1 when none are stored (the
    box [-3, 3]^obs_dim): a policy must also behave on inputs somewhat outside what it was
    trained on.
    """
    if stored is not None and len(stored):
        stored = np.asarray(stored, np.float32).reshape(-1, obs_dim)
        stored = stored[_kept(len(stored))]
        centre, scale = stored.mean(0, dtype=np.float64), stored.std(0, dtype=np.float64) + 1e-3
    else:
        stored = np.zeros((0, obs_dim), np.float32)
        centre, scale = np.zeros(obs_dim), np.ones(obs_dim)
    random = centre + 3.0 * scale * rng.uniform(-1.0, 1.0, (n_random, obs_dim))
    return np.concatenate([stored, random.astype(np.float32)])


def probe_inputs(obs_dim: int, cameras: Mapping[str, tuple[int, int, int]], stored: Any,
                 rng: np.random.Generator, n_random: int = N_RANDOM_PROBES
                 ) -> np.ndarray | dict[str, np.ndarray]:
    """Probe observations for a policy with `cameras` ({name: (H, W, C*S)}): without cameras
    `probe_observations` (`stored` an array of states, or a dict with "state"); with cameras a
    dict {"state": [N, obs_dim], name: uint8 [N, H, W, C*S]} (module docstring). `stored` may
    then be a dict {"state": [M, obs_dim], name: uint8 [M, H, W, C*S]} (images optional)."""
    stored_state = stored.get("state") if isinstance(stored, Mapping) else stored
    states = probe_observations(obs_dim, stored_state, rng, n_random)
    if not cameras:
        return states
    n_stored = len(states) - n_random
    out: dict[str, np.ndarray] = {"state": states}
    for name, shape in cameras.items():
        images = rng.integers(0, 256, (len(states), *shape), dtype=np.uint8)
        if n_random >= 2:
            images[n_stored] = 0
            images[n_stored + 1] = 255
        given = stored.get(name) if isinstance(stored, Mapping) else None
        if given is not None and n_stored:
            given = np.asarray(given)
            if given.dtype != np.uint8 or given.shape[1:] != tuple(shape):
                raise ValueError(f"probe observations: {name} is {given.dtype} "
                                 f"{list(given.shape)}, expected uint8 [N, {', '.join(map(str, shape))}]")
            images[:n_stored] = given[_kept(len(given))]
        out[name] = images
    return out


def rows(obs: np.ndarray | Mapping[str, np.ndarray], index: int | slice) -> Any:
    """Row(s) of a probe batch: an array or an observation dict of arrays."""
    if isinstance(obs, Mapping):
        return {k: v[index] for k, v in obs.items()}
    return obs[index]


def count(obs: np.ndarray | Mapping[str, np.ndarray]) -> int:
    """Observations in a probe batch."""
    return len(obs["state"]) if isinstance(obs, Mapping) else len(obs)
