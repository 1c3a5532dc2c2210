"""Env steps per second of the reach task: bare ReachEnv, with the time limit, with the expert.

    python benchmarks/sim_speed.py [--steps 20000]

Prints one line per case. Single process, single thread; resets are included in the count.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from o2o_robot.config import ControlConfig, SimConfig
from o2o_robot.sim.envs import make_env
from o2o_robot.sim.experts import ScriptedReachExpert
from o2o_robot.sim.reach import ReachEnv


def steps_per_second(env, steps: int, policy=None) -> float:
    """Run `steps` env steps (random or `policy` actions), resetting at episode ends."""
    actions = np.random.default_rng(0).uniform(-2, 2, size=(steps, 3)).astype(np.float32)
    obs, _ = env.reset(seed=0)
    start = time.perf_counter()
    for i in range(steps):
        action = policy.act(obs) if policy is not None else actions[i]
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    args = parser.parse_args()
    bare = ReachEnv()
    wrapped = make_env(SimConfig(), max_episode_steps=ControlConfig().max_episode_steps)
    cases = [
        ("ReachEnv, random actions", bare, None),
        ("make_env('reach') + TimeLimit, random actions", wrapped, None),
        ("make_env('reach') + scripted expert (noise 0.1)", wrapped,
         ScriptedReachExpert(wrapped, 0.1, seed=0)),
    ]
    print(f"sim step = {bare.substeps} x {bare.model.opt.timestep * 1e3:.1f} ms physics "
          f"({bare.dt * 1e3:.0f} ms per env step)")
    for label, env, policy in cases:
        rate = steps_per_second(env, args.steps, policy)
        print(f"{label:<52s} {rate:10,.0f} steps/s  ({rate * bare.dt:7.1f}x real time)")


if __name__ == "__main__":
    main()
