"""Minari datasets <-> the store, through the `minari` package's own API.

Import (`MinariSource`): a local dataset by id (under MINARI_DATASETS_PATH, default
~/.minari/datasets; nothing is downloaded) or by path (the dataset directory or its `data/`).
An episode's `observations` has one entry more than its steps: obs = observations[:-1],
next_obs = observations[1:]; `terminations` / `truncations` become terminated / truncated as
they are. Observation spaces may be a Box or a Dict/Tuple of Boxes (flattened in the space's
key order, as `gymnasium.spaces.flatten` does); actions must be a Box. In a Dict space, a uint8
Box of shape (H, W, C) is a camera image: it becomes the store camera of that key (frames
stored once), not part of the state vector.

Export (`export_minari`): the completed episodes of the chosen sources become a Minari dataset
(hdf5 data format) that `minari.load_dataset` opens with observation space
Box(-inf, inf, [obs_dim]) and action space Box(action_low, action_high) from the store's spec;
a store with cameras gives Dict({"state": that Box, <camera>: Box(0, 255, (H, W, C), uint8)}),
which imports back as the same cameras.
An episode whose next_obs does not continue as the next row's obs (a row dropped on the robot,
e.g. on a stale observation) is split there, the first part truncated, since a Minari episode
is one unbroken observation sequence.
"""
from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
from minari.data_collector import EpisodeBuffer
from minari.dataset.minari_dataset import parse_dataset_id
from minari.storage.datasets_root_dir import get_dataset_path

from o2o_robot.data.importers.common import (ImportInputError, SourceEpisode, SourceFileError,
                                              source_spec)
from o2o_robot.data.schema import SOURCES, source_code
from o2o_robot.data.store import TransitionStore


def _cameras(space) -> dict[str, tuple[int, int, int]]:
    """The image entries of a Dict observation space: {key: (H, W, C)}."""
    if not isinstance(space, gym.spaces.Dict):
        return {}
    return {k: tuple(int(d) for d in s.shape) for k, s in space.spaces.items()
            if isinstance(s, gym.spaces.Box) and s.dtype == np.uint8 and len(s.shape) == 3}


def _state_space(space):
    """`space` without its camera entries."""
    cams = _cameras(space)
    if not cams:
        return space
    return gym.spaces.Dict({k: s for k, s in space.spaces.items() if k not in cams})


def _check_space(space, where: str) -> int:
    """Flat dimension of a Box, or Dict/Tuple of Boxes; ImportInputError naming `where` else."""
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        subs = space.spaces.values() if isinstance(space, gym.spaces.Dict) else space.spaces
        return sum(_check_space(s, where) for s in subs)
    raise ImportInputError(f"{where}: {space} is not supported (a Box, or a Dict/Tuple of Boxes)")


def _flatten(space, x, steps: int) -> np.ndarray:
    """[steps, flat_dim] float array of a Box / Dict / Tuple observation sequence."""
    if isinstance(space, gym.spaces.Box):
        return np.asarray(x).reshape(steps, -1)
    if isinstance(space, gym.spaces.Dict):
        parts = [_flatten(sub, x[k], steps) for k, sub in space.spaces.items()]
    else:
        parts = [_flatten(sub, x[i], steps) for i, sub in enumerate(space.spaces)]
    return np.concatenate(parts, axis=1)


class MinariSource:
    """A local Minari dataset (see the module docstring)."""

    format = "minari"

    def __init__(self, src: str):
        path = Path(src)
        try:
            if path.exists():
                self.dataset = minari.MinariDataset(path / "data" if (path / "data").is_dir() else path)
            else:
                self.dataset = minari.load_dataset(str(src))   # local only: download=False
        except FileNotFoundError:
            raise ImportInputError(f"{src}: no Minari dataset with this path, nor with this id "
                                   f"under {get_dataset_path()}") from None
        except Exception as e:  # noqa: BLE001 - whatever minari/h5py raise on a damaged dataset
            raise SourceFileError(f"{src}: cannot read the Minari dataset "
                                  f"({type(e).__name__}: {e})") from None
        self.path = Path(self.dataset.storage.data_path)
        self.obs_space, self.act_space = self.dataset.observation_space, self.dataset.action_space
        self.cameras = _cameras(self.obs_space)
        self.state_space = _state_space(self.obs_space)
        obs_dim = _check_space(self.state_space, "observation_space")
        if obs_dim == 0:
            raise ImportInputError("observation_space: images only; the store needs a state "
                                   "vector beside them")
        if not isinstance(self.act_space, gym.spaces.Box):
            raise ImportInputError(f"action_space: {self.act_space} is not supported (a Box)")
        spec = self.dataset.spec
        task = spec.env_spec.id if spec.env_spec is not None else spec.dataset_id
        self.spec = source_spec(obs_dim, int(np.prod(self.act_space.shape)), task=task,
                                low=self.act_space.low, high=self.act_space.high,
                                minari_dataset_id=spec.dataset_id)
        self.options: dict = {}

    def episodes(self) -> Iterator[SourceEpisode]:
        for ep in self.dataset.iterate_episodes():
            n = len(ep.rewards)
            obs = _flatten(self.state_space, ep.observations, n + 1)
            images = {k: np.asarray(ep.observations[k]) for k in self.cameras}
            yield SourceEpisode(frames={k: v[:-1] for k, v in images.items()} or None,
                                next_frames={k: v[1:] for k, v in images.items()} or None,
                                rows={
                "obs": obs[:-1], "next_obs": obs[1:],
                "action": np.asarray(ep.actions).reshape(n, -1),
                "reward": np.asarray(ep.rewards).reshape(n),
                "terminated": np.asarray(ep.terminations, bool).reshape(n),
                "truncated": np.asarray(ep.truncations, bool).reshape(n)})

    def stats(self) -> dict:
        return {"dataset_id": self.dataset.spec.dataset_id,
                "total_episodes": int(self.dataset.total_episodes),
                "total_steps": int(self.dataset.total_steps)}


# ------------------------------------------------------------------------------------ export
def _pieces(rows: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Split one store episode where next_obs[i] != obs[i + 1] (the first part truncated)."""
    cuts = np.flatnonzero(np.any(rows["next_obs"][:-1] != rows["obs"][1:], axis=1)) + 1
    for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(rows["obs"])]])):
        piece = {k: v[lo:hi] for k, v in rows.items()}
        if hi != len(rows["obs"]) and not piece["terminated"][-1]:
            piece["truncated"] = piece["truncated"].copy()
            piece["truncated"][-1] = True
        yield piece


def export_minari(store_path, dataset_id: str, *, sources: list[str] | None = None,
                  author: str | None = None, description: str | None = None) -> dict:
    """Write the completed episodes of `sources` (default: all) of the store as the local Minari
    dataset `dataset_id`; returns a summary. Nothing is left behind on failure."""
    try:
        parse_dataset_id(dataset_id)
    except ValueError as e:
        raise ImportInputError(f"--minari: {e}") from None
    if get_dataset_path(dataset_id).exists():
        raise ImportInputError(f"--minari: a Minari dataset {dataset_id!r} already exists at "
                               f"{get_dataset_path(dataset_id)}; choose another name or version")
    try:
        codes = {source_code(s) for s in (sources or SOURCES)}
    except ValueError as e:
        raise ImportInputError(f"--source: {e}") from None
    store = TransitionStore.open(store_path, "r")
    eps = [e for e in store.episodes() if source_code(e["source"]) in codes]
    if not eps:
        raise ImportInputError(f"{store_path}: no completed episodes of source(s) "
                               f"{', '.join(sorted(SOURCES[c] for c in codes))}")
    low, high = store.spec.get("action_low"), store.spec.get("action_high")
    act_space = gym.spaces.Box(np.asarray(low if low else [-np.inf] * store.act_dim, np.float32),
                               np.asarray(high if high else [np.inf] * store.act_dim, np.float32))
    obs_space = gym.spaces.Box(-np.inf, np.inf, (store.obs_dim,), np.float32)
    if store.cameras:
        obs_space = gym.spaces.Dict({"state": obs_space, **{
            c: gym.spaces.Box(0, 255, shape, np.uint8) for c, shape in store.cameras.items()}})
    counts = {"episodes": 0, "steps": 0, "split": 0}

    def observations(p: dict, start: int, stop: int):
        """A piece's observations: its obs and the last next_obs (and each camera's frames)."""
        state = np.concatenate([p["obs"], p["next_obs"][-1:]])
        if not store.cameras:
            return state
        return {"state": state, **{c: np.concatenate([store.read_frames(c, start, stop),
                                                       store.read_next_frames(c, stop - 1, stop)])
                                   for c in store.cameras}}

    def buffers() -> Iterator[EpisodeBuffer]:   # streamed: one store episode in memory at a time
        for e in eps:
            rows = store.read(["obs", "action", "reward", "next_obs", "terminated", "truncated"],
                              e["start"], e["end"])
            pieces = list(_pieces(rows))
            counts["split"] += len(pieces) - 1
            start = e["start"]
            for p in pieces:
                stop = start + len(p["reward"])
                yield EpisodeBuffer(
                    id=counts["episodes"], observations=observations(p, start, stop),
                    actions=p["action"], rewards=p["reward"].astype(np.float64),
                    terminations=p["terminated"], truncations=p["truncated"], infos={})
                counts["episodes"] += 1
                counts["steps"] += len(p["reward"])
                start = stop

    task = store.spec.get("task")
    env = gym.spec(task) if task and task in gym.registry else None
    text = description or (f"Exported by o2o_robot from {store_path} "
                           f"(sources: {', '.join(sorted(SOURCES[c] for c in codes))})")
    try:
        with warnings.catch_warnings():   # minari nags about every unset optional field
            warnings.simplefilter("ignore", UserWarning)
            minari.create_dataset_from_buffers(
                dataset_id, buffers(), env=env, observation_space=obs_space,
                action_space=act_space, algorithm_name="o2o_robot", author=author,
                description=text, data_format="hdf5")
    except BaseException:
        shutil.rmtree(get_dataset_path(dataset_id), ignore_errors=True)
        raise
    finally:
        store.close()
    return {"dataset_id": dataset_id, "path": str(get_dataset_path(dataset_id)),
            "store": str(store_path), **counts}

