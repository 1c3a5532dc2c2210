"""Pixel RLPD with and without the camera image, >= 3 seeds: the full curves of the pixel
learning check (tests/test_learning_pixels.py).

    .venv/bin/python benchmarks/compare_pixels.py [--seeds 0 1 2] [--steps N] [--jobs 2]
        [--out DIR]

Each (arm, seed) is a full `o2o-robot train` run of config/ci_reach_pixels.yaml (the reach
target shown only by the camera) or config/ci_reach_pixels_blank.yaml (the same, every image
all zeros), through benchmarks/compare_algorithms.py. Writes DIR/compare_pixels.csv,
DIR/compare_summary.csv and DIR/compare_pixels.png (mean and min-max band over seeds; the
README's copy is docs/compare_pixels.png), and prints per arm the final and best success per
seed, when the mean over seeds first reached the threshold, and the time per update.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_algorithms  # noqa: E402  (the sibling benchmark, run from any directory)

if __name__ == "__main__":
    compare_algorithms.main(defaults=["pixels", "pixels_blank"], stem="compare_pixels",
                            title="reach from pixels: camera vs blank images", doc=__doc__)
