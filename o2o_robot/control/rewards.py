"""Reward sources for online transitions (`control.reward` in the config).

Every source answers `reward(obs, action, next_obs, *, success) -> float | None` once per
completed transition (the tick after the action was sent); None means "no usable reward", and
the caller drops that transition rather than store a made-up value.

* "sim" / "topic": the latest value received on the reward topic (`update(value)` from the
  node's callback), consumed once: a transition with no new value since the last one gets 0.0,
  counted as `missing`; two values between ticks keep the newer one, counted as `overwritten`.
* "function": `package.module:function(obs, action, next_obs) -> float`, imported and probed
  when the node starts (`load_reward_function`), so a typo fails at start, not mid-episode.
* "success_button": 1.0 on the transition the operator marked as a success, else 0.0.
"""
from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Protocol

import numpy as np

from o2o_robot.config import RewardConfig

RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


class RewardFunctionError(ValueError):
    """A configured reward function that cannot be used; the message names the path."""


class RewardSource(Protocol):
    """What ControlCore needs from a reward source."""

    kind: str

    def reward(self, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, *,
               success: bool) -> float | None: ...

    def stats(self) -> dict: ...


def as_reward(value) -> float:
    """`value` as a finite float; TypeError / ValueError saying what was wrong otherwise.

    Accepts Python and numpy numbers (bool too: `return dist < 0.05` is a fine sparse reward)
    and one-element arrays; rejects None, strings, vectors and NaN/inf.
    """
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf" or arr.size != 1:
        raise TypeError(f"returned {type(value).__name__} {value!r:.60}, expected a real number")
    out = float(arr.reshape(()))
    if not np.isfinite(out):
        raise ValueError(f"returned {out}, expected a finite number")
    return out


def import_callable(path: str, where: str, error: type[ValueError] = ValueError) -> Callable:
    """The callable `package.module:function` (or `module:Class.method`) names; `error`
    naming `where` and the problem otherwise: a bad format, an import failure (with where
    Python looks when the module itself is missing), no such attribute, not callable."""
    module_name, sep, attr = str(path).partition(":")
    if not sep or not module_name or not attr:
        raise error(f"{where}: expected 'package.module:function'")
    try:
        fn = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure (syntax, missing dependency) is a config error
        # The module itself not found (not one it imports): say where Python looks for it.
        missing = getattr(exc, "name", None) or ""
        hint = (" (install it, or add its folder to PYTHONPATH)"
                if isinstance(exc, ModuleNotFoundError) and missing
                and (module_name + ".").startswith(missing + ".") else "")
        raise error(f"{where}: cannot import module {module_name!r}: "
                    f"{type(exc).__name__}: {exc}{hint}") from exc
    for part in attr.split("."):   # "Class.method" style attributes resolve too
        if not hasattr(fn, part):
            raise error(f"{where}: module {module_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise error(f"{where}: {attr!r} is not callable (it is a {type(fn).__name__})")
    return fn


def load_reward_function(path: str, obs_dim: int, act_dim: int) -> RewardFn:
    """Import `package.module:function`, check it is callable and probe it with zero inputs.

    Raises RewardFunctionError naming `control.reward.function`, `path` and the problem: bad
    format, import failure, missing attribute, not callable, or a probe call that raises or
    returns a non-number/non-finite.
    """
    where = f"control.reward.function {path!r}"
    fn = import_callable(path, where, RewardFunctionError)
    obs, act = np.zeros(obs_dim, np.float32), np.zeros(act_dim, np.float32)
    try:
        value = fn(obs, act, obs.copy())
    except Exception as exc:
        raise RewardFunctionError(f"{where}: probe call f(zero obs, zero action, zero obs) raised "
                                  f"{type(exc).__name__}: {exc}") from exc
    try:
        as_reward(value)
    except (TypeError, ValueError) as exc:
        raise RewardFunctionError(f"{where}: probe call f(zero obs, zero action, zero obs) {exc}") from None
    return fn


def _read_only(arr: np.ndarray) -> np.ndarray:
    # The arrays go on to the store: a reward function must not be able to edit them.
    view = arr.view()
    view.flags.writeable = False
    return view


class TopicReward:
    """Latest value from a reward topic ("sim" or "topic"), consumed once per transition."""

    def __init__(self, kind: str = "topic"):
        self.kind = kind
        self._value: float | None = None
        self._lock = threading.Lock()   # update() runs in a callback, reward() in the tick
        self.counts = dict.fromkeys(["received", "rejected", "overwritten", "consumed", "missing"], 0)
        self.last_error = ""

    def update(self, value, stamp_s: float | None = None) -> bool:
        """A std_msgs/Float64 reward; non-finite or non-numeric values are rejected and counted."""
        try:
            reward = as_reward(value)
        except (TypeError, ValueError) as exc:
            self.counts["rejected"] += 1
            self.last_error = str(exc).replace("returned", "got", 1)
            return False
        with self._lock:
            if self._value is not None:
                self.counts["overwritten"] += 1
            self._value = reward
        self.counts["received"] += 1
        return True

    def reward(self, obs, action, next_obs, *, success: bool = False) -> float:
        with self._lock:
            value, self._value = self._value, None
        if value is None:
            self.counts["missing"] += 1
            return 0.0
        self.counts["consumed"] += 1
        return value

    def stats(self) -> dict:
        return {"kind": self.kind, **self.counts, "last_error": self.last_error}


class FunctionReward:
    """A validated `module:function(obs, action, next_obs)`; a failing call drops the row."""

    kind = "function"

    def __init__(self, path: str, obs_dim: int, act_dim: int):
        self.path = path
        self.fn = load_reward_function(path, obs_dim, act_dim)
        self.counts = dict.fromkeys(["calls", "errors"], 0)
        self.last_error = ""

    def reward(self, obs, action, next_obs, *, success: bool = False) -> float | None:
        self.counts["calls"] += 1
        try:
            return as_reward(self.fn(_read_only(obs), _read_only(action), _read_only(next_obs)))
        except Exception as exc:  # counted and reported in stats(); the caller drops the row
            self.counts["errors"] += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return None

    def stats(self) -> dict:
        return {"kind": self.kind, "function": self.path, **self.counts,
                "last_error": self.last_error}


class SuccessButtonReward:
    """Sparse: 1.0 on the transition the operator marked as a success, 0.0 otherwise."""

    kind = "success_button"

    def __init__(self):
        self.counts = dict.fromkeys(["successes"], 0)

    def reward(self, obs, action, next_obs, *, success: bool = False) -> float:
        if success:
            self.counts["successes"] += 1
            return 1.0
        return 0.0

    def stats(self) -> dict:
        return {"kind": self.kind, **self.counts}


def make_reward_source(cfg: RewardConfig, obs_dim: int, act_dim: int) -> RewardSource:
    """The reward source `cfg.source` names (function sources are validated here)."""
    if cfg.source in ("sim", "topic"):
        return TopicReward(cfg.source)
    if cfg.source == "function":
        return FunctionReward(cfg.function or "", obs_dim, act_dim)
    return SuccessButtonReward()
