"""HDF5 datasets -> store episodes: the D4RL layout, or robomimic's `data/demo_*` groups.

D4RL (flat arrays on one time axis, as `d4rl`'s `get_dataset()` and the D4RL-era files give):

    observations [N, obs_dim]  actions [N, act_dim]  rewards [N]  terminals [N]
    timeouts [N] (optional)    next_observations [N, obs_dim] (optional)

An episode ends at a row with `terminals` (-> terminated) or `timeouts` (-> truncated: a time
limit is never a terminal); rows after the last end form a final episode cut by the end of the
file (its last row truncated). Without `next_observations`, next_obs is the following row's
observation; the last row of an episode then has no true successor: a terminal row keeps its
own observation as next_obs (never bootstrapped from), a timeout row is dropped and the row
before it becomes the truncated one (as D4RL's `qlearning_dataset` drops it).

robomimic: `data/demo_<k>/{actions, rewards, dones, obs/<key>, next_obs/<key>}`; `obs_keys`
(required: other keys are left out) picks the observation keys. Image keys (uint8 [N, H, W, C],
e.g. `agentview_image`) become the store's cameras, named by the key; the others, in the given
order, form the state vector (at least one is needed). `dones` marks a terminal; a
demonstration's last row is otherwise truncated. Without `next_obs` the next frame of a row is
the next row's, as for the state vector.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from o2o_robot.data.importers.common import (ImportInputError, SourceEpisode, SourceFileError,
                                              source_spec)

D4RL_REQUIRED = ("observations", "actions", "rewards", "terminals")


class Hdf5Source:
    """A D4RL- or robomimic-layout HDF5 file (see the module docstring)."""

    format = "hdf5"

    def __init__(self, path, *, obs_keys: list[str] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ImportInputError(f"{self.path}: no such file")
        self.obs_keys = list(obs_keys or [])
        self.options = {"obs_keys": self.obs_keys}
        self.cameras: dict[str, tuple[int, int, int]] = {}
        self.counts = {"rows_dropped": 0}
        with self._open() as f:
            if "observations" in f:
                self.layout = "d4rl"
                self._check_d4rl(f)
            elif "data" in f and isinstance(f["data"], h5py.Group):
                self.layout = "robomimic"
                self._check_robomimic(f)
            else:
                raise SourceFileError(f"{self.path}: neither the D4RL layout (top-level "
                                      f"'observations', ...) nor robomimic's ('data/demo_*'); "
                                      f"top-level keys: {sorted(f.keys())}")

    def _open(self) -> h5py.File:
        try:
            return h5py.File(self.path, "r")
        except OSError as e:
            raise SourceFileError(f"{self.path}: cannot read as HDF5 ({e})") from None

    def _array(self, f, key: str, ndim: int) -> h5py.Dataset:
        if key not in f or not isinstance(f[key], h5py.Dataset):
            raise SourceFileError(f"{self.path}: missing dataset '{key}'")
        d = f[key]
        if d.ndim != ndim and not (ndim == 1 and d.ndim == 2 and d.shape[1] == 1):   # [N, 1] too
            want = "[N]" if ndim == 1 else "[N, dim]"
            raise SourceFileError(f"{self.path}: '{key}': expected shape {want}, got {list(d.shape)}")
        return d

    # ------------------------------------------------------------------------------ D4RL
    def _check_d4rl(self, f) -> None:
        obs, act = self._array(f, "observations", 2), self._array(f, "actions", 2)
        n = obs.shape[0]
        keys = list(D4RL_REQUIRED) + [k for k in ("timeouts", "next_observations") if k in f]
        for key in keys:
            d = self._array(f, key, 2 if key in ("observations", "actions", "next_observations") else 1)
            if d.shape[0] != n:
                raise SourceFileError(f"{self.path}: '{key}' has {d.shape[0]} rows, "
                                      f"'observations' has {n}")
        if "next_observations" in f and f["next_observations"].shape[1] != obs.shape[1]:
            raise SourceFileError(f"{self.path}: 'next_observations' has {f['next_observations'].shape[1]} "
                                  f"columns, 'observations' has {obs.shape[1]}")
        task = f.attrs.get("env_name") or self.path.stem
        task = task.decode() if isinstance(task, bytes) else str(task)
        self.spec = source_spec(obs.shape[1], act.shape[1], task=task)

    def _d4rl_episodes(self) -> Iterator[SourceEpisode]:
        with self._open() as f:
            terminals = np.asarray(f["terminals"][:], bool).reshape(-1)
            timeouts = (np.asarray(f["timeouts"][:], bool).reshape(-1) if "timeouts" in f
                        else np.zeros_like(terminals))
            ends = np.flatnonzero(terminals | timeouts) + 1
            n = len(terminals)
            if n == 0:
                return
            if not len(ends) or ends[-1] != n:
                ends = np.append(ends, n)                 # a final episode cut by the end of file
            has_next = "next_observations" in f
            start = 0
            for end in ends:
                sl = slice(int(start), int(end))
                obs = np.asarray(f["observations"][sl])
                nxt = np.asarray(f["next_observations"][sl]) if has_next else None
                rows = {"obs": obs, "action": np.asarray(f["actions"][sl]),
                        "reward": np.asarray(f["rewards"][sl]).reshape(-1),
                        "terminated": terminals[sl].copy(), "truncated": timeouts[sl] & ~terminals[sl]}
                rows["truncated"][-1] |= not rows["terminated"][-1]   # time limit or end of file
                ep = self._finish(rows, nxt)
                start = end
                if ep is not None:
                    yield ep

    # ------------------------------------------------------------------------- robomimic
    def _demos(self, f) -> list[str]:
        demos = [k for k in f["data"].keys() if isinstance(f["data"][k], h5py.Group)]
        return sorted(demos, key=lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)])

    def _check_robomimic(self, f) -> None:
        demos = self._demos(f)
        if not demos:
            raise SourceFileError(f"{self.path}: 'data' holds no demonstration groups")
        first = f["data"][demos[0]]
        available = sorted(first["obs"].keys()) if "obs" in first else []
        if not self.obs_keys:
            raise ImportInputError(f"--obs-keys: robomimic files need the observation keys, in "
                                   f"order; {demos[0]} has: {', '.join(available)}")
        unknown = [k for k in self.obs_keys if k not in available]
        if unknown:
            raise ImportInputError(f"--obs-keys: {', '.join(unknown)} not in {demos[0]}/obs "
                                   f"(has: {', '.join(available)})")
        obs = first["obs"]
        self.cameras = {k: tuple(int(d) for d in obs[k].shape[1:]) for k in self.obs_keys
                        if obs[k].ndim == 4 and obs[k].dtype == np.uint8}
        self.state_keys = [k for k in self.obs_keys if k not in self.cameras]
        if not self.state_keys:
            raise ImportInputError(f"--obs-keys: {', '.join(self.obs_keys)} are all images; "
                                   f"name at least one low-dimensional key (e.g. robot0_eef_pos)")
        obs_dim = sum(int(np.prod(obs[k].shape[1:])) for k in self.state_keys)
        act = self._array(first, "actions", 2)
        try:
            task = json.loads(f["data"].attrs.get("env_args", "{}")).get("env_name")
        except (TypeError, ValueError):
            task = None
        self.spec = source_spec(obs_dim, act.shape[1], task=str(task or self.path.stem),
                                obs_names=self.state_keys)

    def _robomimic_episodes(self) -> Iterator[SourceEpisode]:
        flat = lambda g: np.concatenate(  # noqa: E731
            [np.asarray(g[k][:]).reshape(len(g[k]), -1) for k in self.state_keys], axis=1)
        images = lambda g: {k: self._image(g, k) for k in self.cameras}  # noqa: E731
        with self._open() as f:
            for name in self._demos(f):
                demo = f["data"][name]
                try:
                    if len(demo["actions"]) == 0:
                        raise SourceFileError(f"{self.path}: data/{name}: an empty demo (0 rows)")
                    obs, frames = flat(demo["obs"]), images(demo["obs"])
                    has_next = "next_obs" in demo
                    nxt = flat(demo["next_obs"]) if has_next else None
                    next_frames = images(demo["next_obs"]) if has_next and self.cameras else None
                    done = np.asarray(demo["dones"][:], bool).reshape(-1)
                    rows = {"obs": obs, "action": np.asarray(demo["actions"][:]),
                            "reward": np.asarray(demo["rewards"][:]).reshape(-1),
                            "terminated": done, "truncated": np.zeros_like(done)}
                except KeyError as e:
                    raise SourceFileError(f"{self.path}: data/{name}: missing {e}") from None
                rows["truncated"][-1] = not done[-1]
                ep = self._finish(rows, nxt, frames, next_frames)
                if ep is not None:
                    yield ep

    # ----------------------------------------------------------------------------- common
    def _image(self, group, key: str) -> np.ndarray:
        d = group[key]
        if d.dtype != np.uint8 or tuple(d.shape[1:]) != self.cameras[key]:
            raise SourceFileError(f"{self.path}: {d.name}: expected uint8 [N, "
                                  f"{', '.join(map(str, self.cameras[key]))}], got {d.dtype} "
                                  f"{list(d.shape)}")
        return np.asarray(d[:])

    def _finish(self, rows: dict, nxt: np.ndarray | None, frames: dict | None = None,
                next_frames: dict | None = None) -> SourceEpisode | None:
        """Fill next_obs and next frames (module docstring); None when nothing is left of the
        episode."""
        if nxt is None:
            obs = rows["obs"]
            nxt = np.concatenate([obs[1:], obs[-1:]])   # the last entry: see below
            if frames:
                next_frames = {k: np.concatenate([f[1:], f[-1:]]) for k, f in frames.items()}
            if not rows["terminated"][-1]:              # no true successor of a cut row: drop it
                rows = {k: v[:-1] for k, v in rows.items()}
                nxt = nxt[:-1]
                if frames:
                    frames = {k: f[:-1] for k, f in frames.items()}
                    next_frames = {k: f[:-1] for k, f in next_frames.items()}
                self.counts["rows_dropped"] += 1
                if len(rows["obs"]):
                    rows["truncated"][-1] = True
        rows["next_obs"] = nxt
        if not len(rows["obs"]):
            return None
        return SourceEpisode(rows, frames=frames or None, next_frames=next_frames or None)

    def episodes(self) -> Iterator[SourceEpisode]:
        self.counts["rows_dropped"] = 0
        return self._d4rl_episodes() if self.layout == "d4rl" else self._robomimic_episodes()

    def stats(self) -> dict:
        return {"layout": self.layout, **self.counts}
