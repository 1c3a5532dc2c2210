"""RLPD, OBAC, OEMA and the SAC preset side by side on the sparse reach task, >= 3 seeds.

    .venv/bin/python benchmarks/compare_algorithms.py [--algorithms rlpd obac oema sac]
        [--seeds 0 1 2] [--steps N] [--jobs 1] [--out DIR]

Each (algorithm, seed) is a full `o2o-robot train` run of the algorithm's CI config
(config/ci_reach*.yaml) in DIR/<algorithm>_seed<k>/. For one seed every algorithm with demos gets
the same scripted demonstrations (their seed derives from `train.seed`); SAC gets none. OEMA's
TD3+BC pre-training runs inside its run and counts in its wall time.

(benchmarks/compare_pixels.py runs the pixel learning check's arms through the same code.)

Writes DIR/compare_algorithms.csv (algorithm, seed, env_steps, success_rate, return_mean),
DIR/compare_summary.csv (one row per run) and DIR/compare_algorithms.png (mean and min-max band
over seeds), and prints per algorithm: final and best success per seed, the env steps at which
the mean over seeds first reached the config's threshold, wall time per run and the median wall
time of one `agent.update` (the whole of one env step's updates: G minibatches for UTD G).
With --jobs > 1 runs share the CPU, so compare update times only from --jobs 1.
"""
from __future__ import annotations

import argparse
import csv
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ALGORITHMS = {  # name: (label, CI config)
    "rlpd": ("RLPD + demos", "ci_reach.yaml"),
    "obac": ("OBAC + demos", "ci_reach_obac.yaml"),
    "oema": ("OEMA + demos", "ci_reach_oema.yaml"),
    "sac": ("SAC, no demos", "ci_reach_sac.yaml"),
}
VECTOR = list(ALGORITHMS)
# The pixel learning check's arms (benchmarks/compare_pixels.py): the target only on camera.
ALGORITHMS.update({
    "pixels": ("pixel RLPD + demos", "ci_reach_pixels.yaml"),
    "pixels_blank": ("same, blank images", "ci_reach_pixels_blank.yaml"),
})


def run_one(name: str, seed: int, steps: int | None, out: Path) -> dict:
    """One training run; returns its eval curve, wall time and update timings."""
    from o2o_robot.config import load_config
    from o2o_robot.runlog import read_metrics
    from o2o_robot.learning.harness import train

    run_dir = out / f"{name}_seed{seed}"
    train_over = {"run_dir": str(run_dir), "seed": seed}
    if steps:
        train_over["total_env_steps"] = steps
    cfg = load_config(ROOT / "config" / ALGORITHMS[name][1],
                      overrides={"store": {"path": str(run_dir / "store.zarr")},
                                 "sim": {"seed": seed}, "train": train_over})
    started = time.perf_counter()
    summary = train(cfg, progress=False)
    wall = time.perf_counter() - started
    update_ms = [m["update_ms"] for m in read_metrics(run_dir, "train") if "update_ms" in m]
    return {"name": name, "seed": seed, "evals": read_metrics(run_dir, "eval"), "wall_s": wall,
            "update_ms": float(np.median(update_ms)) if update_ms else float("nan"),
            "utd_ratio": cfg.learner.utd_ratio, "updates": summary["updates"],
            "threshold": cfg.train.success_threshold}


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(runs: dict[str, list[dict]], threshold: float, path: Path,
         title: str = "sparse reach: same demos and seeds") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, results in runs.items():
        steps = [e["step"] for e in results[0]["evals"]]
        values = np.array([[e["success_rate"] for e in r["evals"]][:len(steps)] for r in results])
        ax.plot(steps, values.mean(axis=0), marker="o", markersize=3,
                label=f"{ALGORITHMS[name][0]} ({len(results)} seeds)")
        ax.fill_between(steps, values.min(axis=0), values.max(axis=0), alpha=0.15)
    ax.axhline(threshold, color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("eval success rate")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None, *, defaults: list[str] = VECTOR,
         stem: str = "compare_algorithms", title: str = "sparse reach: same demos and seeds",
         doc: str | None = None) -> None:
    """The benchmark on the arms `defaults` (--algorithms), files named after `stem`."""
    parser = argparse.ArgumentParser(description=(doc or __doc__).splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", choices=list(ALGORITHMS), default=defaults)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="override train.total_env_steps")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / stem)
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs: must be >= 1, got {args.jobs}")
    args.out.mkdir(parents=True, exist_ok=True)

    jobs = [(name, seed) for name in args.algorithms for seed in args.seeds]
    runs: dict[str, list[dict]] = {name: [] for name in args.algorithms}
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, name, seed, args.steps, args.out) for name, seed in jobs]
        for future in futures:
            r = future.result()
            runs[r["name"]].append(r)
            rates = [e["success_rate"] for e in r["evals"]]
            print(f"{ALGORITHMS[r['name']][0]:14s} seed {r['seed']}: final success {rates[-1]:.2f}, "
                  f"best {max(rates):.2f}, {r['wall_s']:.0f} s, {r['update_ms']:.1f} ms/update",
                  flush=True)

    curve_rows, summary_rows = [], []
    for name, results in runs.items():
        for r in results:
            curve_rows += [{"algorithm": name, "seed": r["seed"], "env_steps": e["step"],
                            "success_rate": e["success_rate"], "return_mean": e["return_mean"]}
                           for e in r["evals"]]
            rates = [e["success_rate"] for e in r["evals"]]
            summary_rows.append({"algorithm": name, "seed": r["seed"], "final_success": rates[-1],
                                 "best_success": max(rates), "wall_s": round(r["wall_s"], 1),
                                 "update_ms_median": round(r["update_ms"], 2),
                                 "utd_ratio": r["utd_ratio"], "updates": r["updates"]})
    write_csv(args.out / f"{stem}.csv", curve_rows)
    write_csv(args.out / "compare_summary.csv", summary_rows)
    threshold = next(iter(runs.values()))[0]["threshold"]
    plot(runs, threshold, args.out / f"{stem}.png", title)

    print(f"\nthreshold {threshold:.2f} (mean eval success over seeds)")
    print(f"{'algorithm':14s} | final success per seed | threshold reached | wall/run | ms/update (UTD)")
    for name, results in runs.items():
        steps = [e["step"] for e in results[0]["evals"]]
        mean = np.array([[e["success_rate"] for e in r["evals"]][:len(steps)]
                         for r in results]).mean(axis=0)
        hit = np.flatnonzero(mean >= threshold)
        reached = f"{steps[hit[0]]} steps" if hit.size else "never"
        finals = " / ".join(f"{r['evals'][-1]['success_rate']:.2f}" for r in results)
        print(f"{ALGORITHMS[name][0]:14s} | {finals:22s} | {reached:17s} | "
              f"{np.mean([r['wall_s'] for r in results]):6.0f} s | "
              f"{np.median([r['update_ms'] for r in results]):.1f} ({results[0]['utd_ratio']})")
    print(f"wrote {args.out}/{stem}.csv, compare_summary.csv, {stem}.png")


if __name__ == "__main__":
    main()
