"""Success rate vs environment steps: RLPD with demos against the SAC preset without, >= 3 seeds.

    .venv/bin/python benchmarks/learning_curves.py [--seeds 0 1 2] [--steps N] [--jobs 1]

The RLPD-vs-SAC view of `compare_algorithms.py` (same runs, same outputs: CSV, summary, PNG),
written to benchmarks/out/curves/; any of its arguments may be given and win over these.
"""
from __future__ import annotations

import sys
from pathlib import Path

from compare_algorithms import main

OUT = Path(__file__).resolve().parent / "out" / "curves"

if __name__ == "__main__":
    main(["--algorithms", "rlpd", "sac", "--out", str(OUT), *sys.argv[1:]])
