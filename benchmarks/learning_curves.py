"""Success rate vs environment steps: RLPD with demos against the SAC preset without, >= 3 seeds.

    .venv/bin/python benchmarks/learning_curves.py [--seeds 0 1 2] [--steps N] [--out DIR]
        [--rlpd config/ci_reach.yaml] [--sac config/ci_reach_sac.yaml]

Each (config, seed) is a full `o2o-robot train` run in DIR/<name>_seed<k>/. Writes
DIR/learning_curves.csv (config, seed, env_steps, success_rate, return_mean) and
DIR/learning_curves.png (mean and min-max band over seeds), and prints, per config, the env steps
and wall time at which the mean success rate first reached the threshold.
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from o2o_robot.config import load_config
from o2o_robot.runlog import read_metrics
from o2o_robot.train import train

ROOT = Path(__file__).resolve().parent.parent


def run_one(config: Path, seed: int, steps: int | None, out: Path) -> tuple[list[dict], float]:
    run_dir = out / f"{config.stem}_seed{seed}"
    train_over = {"run_dir": str(run_dir), "seed": seed}
    if steps:
        train_over["total_env_steps"] = steps
    cfg = load_config(config, overrides={"store": {"path": str(run_dir / "store.zarr")},
                                         "sim": {"seed": seed}, "train": train_over})
    started = time.perf_counter()
    train(cfg, progress=False)
    return read_metrics(run_dir, "eval"), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rlpd", type=Path, default=ROOT / "config" / "ci_reach.yaml")
    parser.add_argument("--sac", type=Path, default=ROOT / "config" / "ci_reach_sac.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="override total_env_steps")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "curves")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    threshold = load_config(args.rlpd).train.success_threshold

    rows, curves = [], {}
    for label, config in (("RLPD + demos", args.rlpd), ("SAC, no demos", args.sac)):
        for seed in args.seeds:
            evals, wall = run_one(config, seed, args.steps, args.out)
            print(f"{label:14s} seed {seed}: final success {evals[-1]['success_rate']:.2f}, "
                  f"best {max(e['success_rate'] for e in evals):.2f}, {wall:.0f} s", flush=True)
            curves.setdefault(label, []).append(([e["step"] for e in evals],
                                                 [e["success_rate"] for e in evals], wall))
            rows += [{"config": config.name, "seed": seed, "env_steps": e["step"],
                      "success_rate": e["success_rate"], "return_mean": e["return_mean"]}
                     for e in evals]

    with (args.out / "learning_curves.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    print(f"\nthreshold {threshold:.2f} (mean success over seeds)")
    for label, runs in curves.items():
        steps = runs[0][0]
        values = np.array([r[1][:len(steps)] for r in runs])
        mean = values.mean(axis=0)
        ax.plot(steps, mean, marker="o", label=f"{label} ({len(runs)} seeds)")
        ax.fill_between(steps, values.min(axis=0), values.max(axis=0), alpha=0.2)
        hit = np.flatnonzero(mean >= threshold)
        wall = np.mean([r[2] for r in runs])
        reached = f"{steps[hit[0]]} env steps" if hit.size else "not reached"
        print(f"{label:14s}: threshold {reached}; mean wall time per run {wall:.0f} s")
    ax.axhline(threshold, color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("eval success rate")
    ax.set_title("sparse reach: RLPD with demos vs SAC without")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "learning_curves.png", dpi=100)
    print(f"wrote {args.out / 'learning_curves.csv'} and {args.out / 'learning_curves.png'}")


if __name__ == "__main__":
    main()
