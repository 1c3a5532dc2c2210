"""LearnerCore with cameras: a stream of Transitions with frames lands in the store (each frame
once, next frames by index) and in the mirror, whose frame stacks equal the episodes' frames,
and a core reopened on that store (load_mirror) builds the same stacks."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from o2o_robot.data.schema import Transition
from o2o_robot.data.store import TransitionStore
from o2o_robot.learning.core import DEFAULT_FRAME_STACK, LearnerCore
from test_learning_core import make_cfg, recorded_stream

CAMS = {"front": (6, 5, 3)}
END = 40_000


def frame(fid: int) -> np.ndarray:
    f = np.full(CAMS["front"], 9, np.uint8).reshape(-1)
    f[0], f[1] = fid % 256, fid // 256
    return f.reshape(CAMS["front"])


GIVEN_NEXT: dict[int, int] = {}   # frame id -> the id of the next frame the row was given


def with_frames(items: list) -> tuple[list, dict[float, int]]:
    """The stream with frames: row k's frame has id k; the next frame of a row that ends its
    episode has id END + k (other rows give k + 1). Returns the items and the id of every
    row's frame by its obs[0]."""
    out, ids, k = [], {}, 0
    for item in items:
        if isinstance(item, Transition):
            nxt = END + k if item.ends_episode else k + 1
            item = dataclasses.replace(item, frames={"front": frame(k)},
                                       next_frames={"front": frame(nxt)})
            ids[float(item.obs[0])] = k
            GIVEN_NEXT[k] = nxt
            k += 1
        out.append(item)
    return out, ids


@pytest.fixture
def cfg(tmp_path):
    cfg = make_cfg(tmp_path, "run", "rlpd")
    return cfg.model_copy(update={"learner": cfg.learner.model_copy(
        update={"warmup_steps": 10_000})})   # no update: this is about the data path


def open_core(cfg):
    robot = cfg.robot
    store = TransitionStore.open_or_create(cfg.store.path, robot.obs_dim, robot.act_dim,
                                           cameras=CAMS)
    return LearnerCore.open(cfg, store, cfg.train.run_dir, resume=True), store


def stacks_by_id(store: TransitionStore, ids: dict[float, int]) -> dict[int, tuple]:
    """Expected (obs stack ids, next stack ids) of every stored row, from the store's episodes:
    an episode's last row has the next frame it was given."""
    rows = store.read(["obs"])["obs"][:, 0]
    ends = [0] + [e["end"] for e in store.episodes()] + [len(store)]
    out = {}
    for a, b in zip(ends[:-1], ends[1:]):
        fids = [ids[float(x)] for x in rows[a:b]]
        for t in range(b - a):
            seq = [fids[max(t - j, 0)] for j in range(DEFAULT_FRAME_STACK - 1, -1, -1)]
            nxt = fids[t + 1] if t + 1 < b - a else GIVEN_NEXT[fids[t]]
            out[fids[t]] = (seq, seq[1:] + [nxt])
    return out


def check_mirror(mirror, want: dict, ids: dict) -> int:
    batch = mirror.gather(np.arange(len(mirror)))
    stack = lambda fids: np.concatenate([frame(f) for f in fids], axis=-1)  # noqa: E731
    for k, x in enumerate(batch["obs"][:, 0]):
        seq, nxt = want[ids[float(x)]]
        np.testing.assert_array_equal(batch["pixels/front"][k], stack(seq))
        np.testing.assert_array_equal(batch["next_pixels/front"][k], stack(nxt))
    return len(batch["obs"])


def test_frames_go_through_the_core_to_the_store_and_the_mirror(cfg):
    items, ids = with_frames(recorded_stream())
    core, store = open_core(cfg)
    try:
        for item in items:
            core.ingest(item)
        core.close_episode()
        core.checkpoint()
        stored = len(store)
        assert stored == len(ids) and store.cameras == CAMS
        fids = [ids[float(x)] for x in store.read(["obs"])["obs"][:, 0]]
        np.testing.assert_array_equal(store.read_frames("front"), np.stack([frame(f) for f in fids]))
        want = stacks_by_id(store, ids)
        assert check_mirror(core.mirror, want, ids) == stored
    finally:
        store.close()
    core, store = open_core(cfg)   # resumed: load_mirror builds the same stacks from the store
    try:
        assert check_mirror(core.mirror, want, ids) == stored
    finally:
        store.close()


def test_a_row_without_frames_on_a_camera_store_is_rejected_and_counted(cfg):
    items, _ = with_frames(recorded_stream())
    items[3] = dataclasses.replace(items[3], frames=None)
    core, store = open_core(cfg)
    try:
        for item in items[:6]:
            core.ingest(item)
        assert core.state.counters["rejected_rows"] == 1
        assert "frames: missing" in core.last_problem
        assert len(core.mirror) == 5 and core.mirror.frames.frames_held >= 5
        assert core.mirror.gather([3])["obs"][0, 0] == items[4].obs[0]
        # the row after the rejected one starts a new episode: its stack repeats its own frame
        px = core.mirror.gather([3])["pixels/front"][0]
        np.testing.assert_array_equal(px, np.concatenate([frame(4)] * DEFAULT_FRAME_STACK, -1))
    finally:
        store.close()
