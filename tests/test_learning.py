"""CI-sized learning check on the sparse-reward reach task (fixed seeds, fixed step budget).

RLPD with 20 scripted demonstrations must reach the success threshold within the budget of
config/ci_reach.yaml; the SAC preset without demonstrations (config/ci_reach_sac.yaml, same UTD,
same budget) must not: the negative control that shows the demonstrations and RLPD's changes
are what make it learn. Longer curves over several seeds and algorithms:
benchmarks/compare_algorithms.py.
"""
from pathlib import Path

import pytest

from o2o_robot.config import load_config
from o2o_robot.runlog import read_metrics
from o2o_robot.learning.harness import train

pytestmark = pytest.mark.learning_check   # scripts/test.sh runs these beside the rest
ROOT = Path(__file__).resolve().parent.parent


def run(config: str, tmp_path: Path) -> tuple[dict, list[float]]:
    run_dir = tmp_path / Path(config).stem
    cfg = load_config(ROOT / "config" / config, overrides={
        "store": {"path": str(run_dir / "store.zarr")}, "train": {"run_dir": str(run_dir)}})
    summary = train(cfg, progress=False)
    curve = [r["success_rate"] for r in read_metrics(run_dir, "eval")]
    print(config, summary, curve)
    return summary, curve


def test_rlpd_with_demos_solves_sparse_reach_and_sac_without_does_not(tmp_path):
    threshold = load_config(ROOT / "config" / "ci_reach.yaml").train.success_threshold
    rlpd, rlpd_curve = run("ci_reach.yaml", tmp_path)
    sac, sac_curve = run("ci_reach_sac.yaml", tmp_path)
    assert rlpd["solved_at"] is not None, f"RLPD never reached {threshold}: {rlpd_curve}"
    assert max(rlpd_curve) >= threshold
    assert sac["solved_at"] is None and max(sac_curve) < threshold, \
        f"negative control solved the task: {sac_curve}"
    assert max(sac_curve) < max(rlpd_curve)
