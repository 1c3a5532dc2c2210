"""ReplayMirror with cameras (data/frame_pool.py): frame stacks built by index equal the
episode's frames, never across an episode boundary, also after the online FIFO overwrote rows;
the exact demo/online mix per minibatch with pixels; each frame held once."""
from __future__ import annotations

import numpy as np
import pytest

from o2o_robot.data.replay import ReplayMirror, split_minibatches
from o2o_robot.data.schema import OFFLINE_SIDE_CODES, SOURCE_CODE

OBS, ACT = 3, 2
CAMS = {"front": (4, 5, 3), "wrist": (2, 2, 1)}
STACKS = {"front": 3, "wrist": 2}
END = 50_000   # the id of row i's episode end frame: END + i


def frame(fid: int, cam: str) -> np.ndarray:
    """A frame that names its id in its first two bytes."""
    f = np.full(CAMS[cam], 7, np.uint8).reshape(-1)
    f[0], f[1] = fid % 256, fid // 256 % 256
    return f.reshape(CAMS[cam])


def episode(ids, source, *, truncate=False):
    """Rows of one episode (obs[:, 0] = row id), its frames and next frames."""
    ids = np.asarray(ids)
    n = len(ids)
    rows = dict(obs=np.repeat(ids[:, None], OBS, 1).astype(np.float32),
                action=np.zeros((n, ACT), np.float32), reward=np.zeros(n, np.float32),
                next_obs=np.zeros((n, OBS), np.float32),
                terminated=np.arange(n) == n - 1 if not truncate else np.zeros(n, bool),
                truncated=np.arange(n) == n - 1 if truncate else np.zeros(n, bool),
                source=np.full(n, source, np.uint8), policy_version=np.zeros(n, np.int64))
    nxt = [*ids[1:], END + ids[-1]]
    frames = {c: np.stack([frame(i, c) for i in ids]) for c in CAMS}
    next_frames = {c: np.stack([frame(i, c) for i in nxt]) for c in CAMS}
    return rows, frames, next_frames


def expected(episodes: list, rid: int, cam: str) -> tuple[np.ndarray, np.ndarray]:
    """The obs and next stacks of row `rid` from the episodes' id lists, naively."""
    ids = next(e for e in episodes if rid in e)
    t, s = ids.index(rid), STACKS[cam]
    seq = [ids[max(t - k, 0)] for k in range(s - 1, -1, -1)]
    nxt = seq[1:] + [ids[t + 1] if t + 1 < len(ids) else END + rid]
    stack = lambda fids: np.concatenate([frame(f, cam) for f in fids], axis=-1)  # noqa: E731
    return stack(seq), stack(nxt)


def check_batch(batch: dict, episodes: list) -> None:
    for k, rid in enumerate(batch["obs"][:, 0].astype(int)):
        for cam in CAMS:
            want, want_next = expected(episodes, int(rid), cam)
            np.testing.assert_array_equal(batch[f"pixels/{cam}"][k], want, err_msg=f"{cam} {rid}")
            np.testing.assert_array_equal(batch[f"next_pixels/{cam}"][k], want_next,
                                          err_msg=f"{cam} {rid}")


def fill(mirror: ReplayMirror, lengths, source, start: int, *, per_row: bool) -> list[list[int]]:
    """Add episodes of `lengths` rows (ids from `start`), row by row or as one block."""
    eps, rid = [], start
    blocks = []
    for n in lengths:
        ids = list(range(rid, rid + n))
        eps.append(ids)
        blocks.append(episode(ids, source, truncate=n % 2 == 0))
        rid += n
    if per_row:
        for rows, frames, nxt in blocks:
            for i in range(len(rows["obs"])):
                mirror.add(**{k: v[i] for k, v in rows.items()},
                           frames={c: f[i] for c, f in frames.items()},
                           next_frames={c: f[i] for c, f in nxt.items()})
    else:   # one block across the episodes: boundaries from terminated / truncated
        cat = lambda ds: {k: np.concatenate([d[k] for d in ds]) for k in ds[0]}  # noqa: E731
        mirror.add_rows(cat([b[0] for b in blocks]), frames=cat([b[1] for b in blocks]),
                        next_frames=cat([b[2] for b in blocks]))
    return eps


@pytest.mark.parametrize("per_row", [True, False])
def test_stacks_equal_the_episode_frames_and_never_cross_a_boundary(per_row):
    m = ReplayMirror(OBS, ACT, cameras=CAMS, frame_stacks=STACKS, initial_capacity=8)
    eps = fill(m, [1, 2, 5, 3, 7], SOURCE_CODE["demo"], 0, per_row=per_row)
    eps += fill(m, [4, 1, 6], SOURCE_CODE["online"], 100, per_row=per_row)
    batch = m.gather(np.arange(len(m)))
    assert batch["pixels/front"].shape == (len(m), 4, 5, 9)
    assert batch["next_pixels/wrist"].shape == (len(m), 2, 2, 2)
    check_batch(batch, eps)


def test_the_online_fifo_keeps_every_live_stack_exact_and_frees_the_rest():
    m = ReplayMirror(OBS, ACT, cameras=CAMS, frame_stacks=STACKS, online_capacity=10,
                     initial_capacity=4)
    eps = fill(m, [3, 4], SOURCE_CODE["demo"], 0, per_row=False)
    rng = np.random.default_rng(0)
    start = 100
    for k in range(12):   # online episodes, row by row and in blocks, overflowing the FIFO
        lengths = list(rng.integers(1, 8, 2))
        eps += fill(m, lengths, SOURCE_CODE["online"], start, per_row=bool(k % 2))
        start += 100
        assert m.size("online") <= 10
        check_batch(m.gather(np.arange(len(m))), eps)
        pool = m.frames
        live = np.arange(len(m))
        named = np.unique(np.concatenate([pool.stack[live].ravel(), pool.next_ref[live]]))
        assert pool.frames_held == len(named)   # nothing leaked, nothing named was freed


def test_a_block_larger_than_the_fifo_is_taken_in_pieces():
    m = ReplayMirror(OBS, ACT, cameras=CAMS, frame_stacks=STACKS, online_capacity=4)
    eps = fill(m, [9], SOURCE_CODE["online"], 0, per_row=False)
    assert sorted(m.gather(np.arange(len(m)))["obs"][:, 0].astype(int)) == [5, 6, 7, 8]
    check_batch(m.gather(np.arange(len(m))), eps)


def test_exact_mix_per_minibatch_with_pixels():
    m = ReplayMirror(OBS, ACT, cameras=CAMS, frame_stacks=STACKS)
    eps = fill(m, [20, 30, 10], SOURCE_CODE["demo"], 0, per_row=False)
    eps += fill(m, [15, 25], SOURCE_CODE["online"], 1000, per_row=False)
    b = m.sample_big_batch(16, 5, 0.5, np.random.default_rng(3))
    for mb in split_minibatches(b, 5):
        assert np.isin(mb["source"], OFFLINE_SIDE_CODES).sum() == 8
        assert mb["pixels/front"].shape == (16, 4, 5, 9)
    check_batch(b, eps)                         # the pixels belong to the rows drawn


def test_each_frame_is_held_once():
    m = ReplayMirror(OBS, ACT, cameras=CAMS, frame_stacks=STACKS)
    fill(m, [5, 6, 7], SOURCE_CODE["demo"], 0, per_row=False)
    # 18 row frames + 3 episode end frames, whatever the stack depth
    assert m.frames.frames_held == 18 + 3
    pool_bytes = {c: m.frames.pool[c].nbytes for c in CAMS}
    assert pool_bytes == {c: len(m.frames.refs) * int(np.prod(s)) for c, s in CAMS.items()}
    m2 = ReplayMirror(OBS, ACT, cameras=CAMS, frame_stacks=STACKS)
    fill(m2, [18], SOURCE_CODE["demo"], 0, per_row=True)   # row by row: the same
    assert m2.frames.frames_held == 18 + 1


def test_bad_frames_are_refused_naming_the_camera():
    m = ReplayMirror(OBS, ACT, cameras=CAMS, frame_stacks=STACKS)
    rows, frames, _ = episode([0, 1], SOURCE_CODE["demo"])
    with pytest.raises(ValueError, match="frames: expected camera"):
        m.add_rows(rows)
    with pytest.raises(ValueError, match=r"frames/wrist: expected uint8 \[2, 2, 2, 1\]"):
        m.add_rows(rows, frames={**frames, "wrist": frames["wrist"].astype(np.float32)})
    with pytest.raises(ValueError, match="the mirror has no cameras"):
        ReplayMirror(OBS, ACT).add_rows(rows, frames=frames)
    with pytest.raises(ValueError, match="frame_stack"):
        ReplayMirror(OBS, ACT, cameras=CAMS, frame_stacks={"front": 3})
    assert len(m) == 0
