"""Pixel learning check: the reach task whose target only the camera shows
(config/ci_reach_pixels.yaml: 32 x 32 rgb, 2 stacked frames, pixel RLPD at UTD 4 from 20
scripted demos, fixed seeds and a 3,500-step budget, `o2o-robot train`: two runs on one machine
give identical results).

The negative control (config/ci_reach_pixels_blank.yaml) is the same run with every camera
image all zeros (the demos, the rows learned from, the policy's observations), so the target is
invisible to it. Each run ends with its final policy scored on the same 200 episodes
(`train.final_eval_episodes`). Pixel RLPD must reach the success threshold (0.4) there, and
the blank arm must stay below it and at least 0.1 below the camera arm (twice the standard
error of that difference at 200 episodes): so it is the image, not the state vector or a
memorised average target, that the policy learns from. The two arms run at once, one process
each (one torch thread each). Longer curves: benchmarks/compare_pixels.py.

Calibration after 3,500 steps: seed 0 (this test, 200 episodes) camera 0.595, blank 0.265;
seeds 1 and 2 (100 episodes) camera 0.56 and 0.48, blank 0.16 and 0.17. Another CPU's
arithmetic gives another trajectory, so the margins are what matters: about 0.1 on each
side. The periodic evaluations (20 episodes each) were too coarse to judge by: a blank arm
scored 0.40 once, a camera arm's best was 0.55. At 2,000 steps (UTD 1 or 4), and at 3,500
steps with UTD 2 and batch 128, the camera arm stayed at 0.0-0.3, as the blank one does: a
shorter or cheaper budget would check nothing.

A `learning_check`: scripts/test.sh runs it beside the other tests.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from o2o_robot.config import load_config
from o2o_robot.runlog import read_metrics
from ros_helpers import kill_group

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("ci_reach_pixels.yaml", "ci_reach_pixels_blank.yaml")
TIMEOUT_S = 1800.0          # a hung run fails the test instead of hanging the suite
pytestmark = pytest.mark.learning_check   # scripts/test.sh runs these beside the rest


def start(config: str, run_dir: Path) -> subprocess.Popen:
    """`o2o-robot train` on `config` into `run_dir`, in its own process group."""
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.Popen(
        [sys.executable, "-m", "o2o_robot.cli", "train", "--config", str(ROOT / "config" / config),
         "--run-dir", str(run_dir)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)


GAP = 0.1   # the blank arm's final success must be at least this far below the camera arm's


def test_pixel_rlpd_solves_the_camera_reach_and_not_with_blank_images(tmp_path):
    cfg = load_config(ROOT / "config" / ARMS[0])
    threshold, episodes = cfg.train.success_threshold, cfg.train.final_eval_episodes
    assert episodes >= 100   # the criterion below needs a fine final score
    procs = {}
    try:
        for config in ARMS:
            procs[config] = start(config, tmp_path / Path(config).stem)
        outputs = {c: p.communicate(timeout=TIMEOUT_S)[0] for c, p in procs.items()}
    finally:
        for proc in procs.values():
            kill_group(proc)
    final, curves = {}, {}
    for config, proc in procs.items():
        assert proc.returncode == 0, f"{config}: exit {proc.returncode}\n{outputs[config][-3000:]}"
        run_dir = tmp_path / Path(config).stem
        [record] = read_metrics(run_dir, "final_eval")      # the same episodes for both arms
        final[config] = record["success_rate"]
        curves[config] = [(r["step"], r["success_rate"]) for r in read_metrics(run_dir, "eval")]
        print(config, f"final success {final[config]:.3f} on {episodes} episodes; curve",
              curves[config])
    seeing, blind = final[ARMS[0]], final[ARMS[1]]
    assert seeing >= threshold, \
        f"pixel RLPD ended at {seeing:.3f} < {threshold} (curve {curves[ARMS[0]]})"
    assert blind < threshold and blind <= seeing - GAP, \
        f"the blank-image control ended at {blind:.3f}, camera {seeing:.3f} " \
        f"(curve {curves[ARMS[1]]})"
