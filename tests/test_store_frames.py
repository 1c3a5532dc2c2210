"""Camera frames in the store (schema v2, data/store/frames.py): bit-exact round trips, frames
stored once (next frames by index, never across an episode boundary), refusals, v1 stores,
checksums and repair covering frames, `data info`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from o2o_robot.data.store import MARKER, StoreCorruptError, StoreError, StoreValueError, TransitionStore
from o2o_robot.data.store.layout import frame_chunk_rows
from store_writer_proc import ACT_DIM, CAMERAS, END, OBS_DIM, expected_rows, frame

ROOT = Path(__file__).resolve().parents[1]


def frames_of(idx, cams=CAMERAS) -> dict:
    return {c: np.stack([frame(i, c) for i in idx]) for c in cams}


def at(frames: dict, k: int) -> dict:
    return {c: f[k] for c, f in frames.items()}


def write_mixed(path: Path, chunk_rows: int = 16) -> None:
    """Rows 0..9 appended one by one (episode 0 ends at 10 with end frame END+9), rows 10..39 as
    two blocks (episode 1 ends at 40, end frame END+39), rows 40..52 as a whole episode
    (END+52), rows 53..57 left open. Row i's frame is frame(i)."""
    rows = expected_rows(0, 58)
    sl = lambda a, b: {f: v[a:b] for f, v in rows.items()}   # noqa: E731
    with TransitionStore.create(path, OBS_DIM, ACT_DIM, cameras=CAMERAS, flush_every=7,
                                chunk_rows=chunk_rows) as s:
        for i in range(10):
            s.append(**{f: v[i] for f, v in rows.items()}, frames=at(frames_of([i]), 0),
                     next_frames=at(frames_of([END + i if i == 9 else i + 1]), 0))
        s.end_episode(success=True)
        s.append_rows(sl(10, 25), frames=frames_of(range(10, 25)))   # no next frames: fine
        s.append_rows(sl(25, 40), frames=frames_of(range(25, 40)),
                      next_frames=frames_of([*range(26, 40), END + 39]))
        s.end_episode(success=False)
        s.append_episode(sl(40, 53), frames=frames_of(range(40, 53)),
                         next_frames=frames_of([*range(41, 53), END + 52]))
        for i in range(53, 58):
            s.append(**{f: v[i] for f, v in rows.items()}, frames=at(frames_of([i]), 0))


def want_next(rows: int) -> list[int]:
    """Which frame each row's next frame is (write_mixed's store of `rows` rows)."""
    return [END + i if i in (9, 39, 52) else i if i == rows - 1 else i + 1 for i in range(rows)]


@pytest.mark.parametrize("chunk_rows", [16, 4096])
def test_frames_round_trip_bit_exactly_with_next_frames_by_index(tmp_path, chunk_rows):
    path = tmp_path / "s"
    write_mixed(path, chunk_rows)
    s = TransitionStore.open(path)
    assert (len(s), s.num_episodes, s.open_episode_rows, s.schema_version) == (58, 3, 5, 2)
    assert s.validate() == []
    for c in CAMERAS:
        np.testing.assert_array_equal(s.read_frames(c), frames_of(range(58))[c])
        np.testing.assert_array_equal(s.read_next_frames(c), frames_of(want_next(58))[c])
        np.testing.assert_array_equal(s.read_next_frames(c, 35, 45),       # a range: same rule
                                      frames_of(want_next(58)[35:45])[c])
    # stored once: the frames array has one frame a row, the end array one a completed episode
    info = s.info()["cameras"]["front"]
    assert (info["frames"], info["end_frames"], info["shape"]) == (58, 3, [24, 20, 3])
    assert 0 < info["disk_bytes_per_frame"] < 2 * info["raw_bytes_per_frame"]


def test_a_writer_continues_the_open_episode_and_its_frames(tmp_path):
    path = tmp_path / "s"
    write_mixed(path)
    rows = expected_rows(58, 60)
    with TransitionStore.open(path, "a") as s:
        for k, i in enumerate((58, 59)):
            s.append(**{f: v[k] for f, v in rows.items()}, frames=at(frames_of([i]), 0),
                     next_frames=at(frames_of([END + i if i == 59 else i + 1]), 0))
        s.end_episode()
    s = TransitionStore.open(path)
    nxt = want_next(60)
    nxt[59] = END + 59
    for c in CAMERAS:
        np.testing.assert_array_equal(s.read_frames(c), frames_of(range(60))[c])
        np.testing.assert_array_equal(s.read_next_frames(c), frames_of(nxt)[c])


def test_end_episode_given_next_frames_closes_a_cut_episode_with_them(tmp_path):
    path = tmp_path / "s"
    write_mixed(path)
    with TransitionStore.open(path, "a") as s:   # rows 53..57 open, their writer gone
        s.end_episode(next_frames=at(frames_of([END + 57]), 0))
    with TransitionStore.open(path, "a") as s:
        assert s.open_episode_rows == 0
    got = TransitionStore.open(path).read_next_frames("wrist", 56)
    np.testing.assert_array_equal(got, frames_of([57, END + 57], ["wrist"])["wrist"])


@pytest.mark.parametrize("kwargs,match", [
    ({"frames": None}, "frames: missing; the store has camera"),
    ({"frames": {"front": frame(0, "front")}}, "frames/wrist: missing"),
    ({"frames": {**at(frames_of([0]), 0), "side": frame(0, "front")}}, "unknown camera"),
    ({"frames": {**at(frames_of([0]), 0), "front": frame(0, "front")[:5]}},
     r"frames/front: expected shape \[24, 20, 3\], got \[5, 20, 3\]"),
    ({"frames": {**at(frames_of([0]), 0), "wrist": np.zeros((8, 8, 1), np.float32)}},
     "frames/wrist: expected uint8, got float32"),
    ({"frames": at(frames_of([0]), 0), "next_frames": {"front": frame(1, "front")}},
     "next_frames/wrist: missing"),
])
def test_bad_frames_are_refused_naming_the_camera_and_nothing_is_buffered(tmp_path, kwargs, match):
    rows = expected_rows(0, 1)
    with TransitionStore.create(tmp_path / "s", OBS_DIM, ACT_DIM, cameras=CAMERAS) as s:
        with pytest.raises(StoreValueError, match=match):
            s.append(**{f: v[0] for f, v in rows.items()}, **kwargs)
        assert s.num_buffered == 0


def test_a_block_whose_next_frames_are_not_its_frames_shifted_is_refused(tmp_path):
    rows = expected_rows(0, 5)
    nxt = frames_of([1, 2, 9, 4, 5])   # row 2's next frame is not row 3's
    with TransitionStore.create(tmp_path / "s", OBS_DIM, ACT_DIM, cameras=CAMERAS) as s:
        with pytest.raises(StoreValueError, match="next_frames/front: row 2 differs from row 3"):
            s.append_rows(rows, frames=frames_of(range(5)), next_frames=nxt)
        with pytest.raises(StoreValueError, match=r"frames/front: expected shape \[5, 24, 20, 3\]"):
            s.append_episode(rows, frames=frames_of(range(4)))
        assert s.num_buffered == 0 and s.num_episodes == 0


def test_frames_for_a_store_without_cameras_and_other_cameras_are_refused(tmp_path):
    rows = expected_rows(0, 1)
    with TransitionStore.create(tmp_path / "v", OBS_DIM, ACT_DIM) as s:
        with pytest.raises(StoreValueError, match="the store has no cameras"):
            s.append(**{f: v[0] for f, v in rows.items()}, frames=at(frames_of([0]), 0))
    TransitionStore.create(tmp_path / "c", OBS_DIM, ACT_DIM, cameras=CAMERAS).close()
    with pytest.raises(StoreError, match="cameras="):
        TransitionStore.open_or_create(tmp_path / "c", OBS_DIM, ACT_DIM, cameras={"front": (24, 20, 3)})
    with pytest.raises(StoreError, match=r"cameras.front: expected \(height, width, channels"):
        TransitionStore.create(tmp_path / "d", OBS_DIM, ACT_DIM, cameras={"front": (24, 20)})
    with pytest.raises(StoreError, match="is not a camera name"):
        TransitionStore.create(tmp_path / "e", OBS_DIM, ACT_DIM, cameras={"../x": (2, 2, 3)})


def _set_attrs(path: Path, **changes) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    attrs = meta["attributes"]["o2o_store"]
    for k, v in changes.items():
        if v is None:
            attrs.pop(k, None)
        else:
            attrs[k] = v
    (path / "zarr.json").write_text(json.dumps(meta))


def test_a_version_1_store_is_read_and_appended_as_it_is(tmp_path):
    """A v1 store is a v2 store without cameras: the same arrays, attributes without
    "cameras" and schema_version 1 (as the code before v2 wrote them)."""
    path = tmp_path / "s"
    rows = expected_rows(0, 30)
    with TransitionStore.create(path, OBS_DIM, ACT_DIM, chunk_rows=8) as s:
        s.append_episode({f: v[:20] for f, v in rows.items()}, success=True)
    _set_attrs(path, schema_version=1, cameras=None)
    r = TransitionStore.open(path)
    assert (r.schema_version, r.cameras, len(r), r.validate()) == (1, {}, 20, [])
    with TransitionStore.open(path, "a") as w:
        w.append_episode({f: v[20:] for f, v in rows.items()})
    r = TransitionStore.open(path)
    got = r.read()
    for f, v in rows.items():
        np.testing.assert_array_equal(got[f], v, err_msg=f)
    assert r.info()["schema_version"] == 1 and "cameras" not in r.info()
    _set_attrs(path, schema_version=3)   # a newer format is refused, never misread
    with pytest.raises(StoreError, match="not a TransitionStore of schema version 1 or 2"):
        TransitionStore.open(path)


@pytest.mark.parametrize("array", ["data/frames/front", "meta/frame_ends/wrist"])
def test_checksums_catch_a_damaged_frame_chunk(tmp_path, array):
    path = tmp_path / "s"
    write_mixed(path)
    chunk = path / array / "c.0.0.0.0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 4] ^= 0x10           # one bit among the compressed committed frames
    chunk.write_bytes(bytes(raw))
    problems = TransitionStore.open(path).validate()
    assert problems and str(chunk) in problems[0], problems
    with pytest.raises(StoreCorruptError, match=str(chunk)):
        TransitionStore.open(path, "a")   # a writer never appends to a damaged store
    chunk.unlink()                        # a missing frame chunk reads as zeros: caught too
    assert "missing chunk file" in TransitionStore.open(path).validate()[0]


def test_repair_rebuilds_the_marker_of_a_store_with_frames(tmp_path):
    path = tmp_path / "s"
    write_mixed(path)
    (path / MARKER).unlink()
    out = subprocess.run([sys.executable, "-m", "o2o_robot.cli", "data", "repair", str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    s = TransitionStore.open(path)
    assert (len(s), s.num_episodes, s.validate()) == (58, 3, [])
    np.testing.assert_array_equal(s.read_next_frames("front"), frames_of(want_next(58))["front"])


def test_data_info_states_frames_per_camera_and_bytes_per_frame(tmp_path):
    path = tmp_path / "s"
    write_mixed(path)
    out = subprocess.run([sys.executable, "-m", "o2o_robot.cli", "data", "info", str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "front" in out.stdout and "58 frames" in out.stdout, out.stdout
    assert "bytes/frame on disk" in out.stdout, out.stdout


def test_frame_chunks_hold_about_a_mebibyte():
    assert frame_chunk_rows((64, 64, 3)) == 85 and frame_chunk_rows((128, 128, 3)) == 21
    assert frame_chunk_rows((2000, 2000, 3)) == 1
