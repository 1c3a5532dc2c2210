"""Store integrity (issue 13, items 1-2): a store that lost its commit marker is never recreated
and `repair` rebuilds the marker keeping every row; every committed chunk carries a checksum
that readers, writers and `validate` check, so a deleted, flipped or truncated chunk, a garbled
`zarr.json` or a marker claiming rows the arrays lack is named, and nothing is appended to it."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from o2o_robot.data.schema import FIELDS, STORED_FIELDS
from o2o_robot.data.store import (MARKER, StoreCorruptError, StoreError, TransitionStore,
                                  repair)
from o2o_robot.data.store.layout import META
from store_writer_proc import ACT_DIM, OBS_DIM, expected_rows

META_NAMES = tuple(META)

CHUNK = 8


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def make_store(path: Path, rows: int = 30, *, checksums: bool = True, notes: dict | None = None):
    """`rows` rows (3 full chunks and a partial one at 30) in episodes of 10, closed cleanly."""
    with TransitionStore.create(path, OBS_DIM, ACT_DIM, chunk_rows=CHUNK, flush_every=4,
                                checksums=checksums) as s:
        for a in range(0, rows, 10):
            block = expected_rows(a, min(a + 10, rows))
            s.append_episode(block, success=a % 20 == 0, notes=notes)
    return path


def same_rows(path: Path, rows: int) -> None:
    got, want = TransitionStore.open(path).read(), expected_rows(0, rows)
    for f in FIELDS:
        np.testing.assert_array_equal(got[f], want[f], err_msg=f)


# ---------------------------------------------------------------------------- lost marker
@pytest.mark.parametrize("how", ["create", "open_or_create"])
def test_a_store_without_its_marker_is_never_recreated(tmp_path, how):
    path = make_store(tmp_path / "s")
    (path / MARKER).unlink()
    before = snapshot(path)
    with pytest.raises(StoreCorruptError, match=rf"{MARKER}: missing, but the store holds data.*"
                                                rf"o2o-robot data repair {path}"):
        if how == "create":
            TransitionStore.create(path, OBS_DIM, ACT_DIM)
        else:
            TransitionStore.open_or_create(path, OBS_DIM, ACT_DIM)
    with pytest.raises(StoreCorruptError, match="data repair"):
        TransitionStore.open(path)
    assert snapshot(path) == before   # nothing erased, no lock file left


def test_an_interrupted_create_is_created_again(tmp_path):
    path = tmp_path / "s"
    TransitionStore.create(path, OBS_DIM, ACT_DIM, chunk_rows=CHUNK).close()
    (path / MARKER).unlink()   # as if killed between the layout and its first marker
    with pytest.raises(StoreCorruptError, match="creating it again is safe"):
        TransitionStore.open(path)
    with TransitionStore.create(path, OBS_DIM, ACT_DIM, chunk_rows=CHUNK) as s:
        s.append_rows(expected_rows(0, 5))
    same_rows(path, 5)


def test_repair_rebuilds_the_marker_keeping_every_row(tmp_path):
    path = make_store(tmp_path / "s", notes={"k": 1})
    original = json.loads((path / MARKER).read_text())
    (path / MARKER).unlink()
    result = repair(path)
    assert (result["repaired"], result["rows"], result["episodes"]) == (True, 30, 3)
    assert result["was"].startswith(f"{path / MARKER}: missing")
    rebuilt = json.loads((path / MARKER).read_text())
    assert (rebuilt["rows"], rebuilt["episodes"], rebuilt["crc32"]) == (30, 3, original["crc32"])
    same_rows(path, 30)
    assert [e["end"] for e in TransitionStore.open(path).episodes()] == [10, 20, 30]
    assert TransitionStore.open(path).validate() == []
    assert repair(path)["repaired"] is False   # consistent now: nothing to do
    # A marker claiming rows the arrays lack is rebuilt too, and its notes are kept.
    (path / MARKER).write_text(json.dumps({**rebuilt, "rows": 99_999, "notes": {"k": 2}}))
    with pytest.raises(StoreCorruptError, match=rf"{MARKER}: claims 99999 rows but the data/ "
                                                r"arrays hold 30"):
        TransitionStore.open(path)
    assert repair(path)["repaired"] is True
    assert TransitionStore.open(path).notes == {"k": 2}
    same_rows(path, 30)


def test_repair_refuses_what_it_cannot_tell_and_changes_nothing(tmp_path):
    # Arrays of different lengths: which rows were committed is unknown.
    path = make_store(tmp_path / "a")
    meta = path / "data" / "reward" / "zarr.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "shape": [24]}))
    (path / MARKER).unlink()
    before = snapshot(path)
    with pytest.raises(StoreCorruptError, match=r"data/ arrays differ in length \(obs 30, .*reward 24"):
        repair(path)
    assert snapshot(path) == before
    # A writer killed before closing leaves untrimmed arrays ending in zero padding.
    path = tmp_path / "b"
    w = TransitionStore.create(path, OBS_DIM, ACT_DIM, chunk_rows=CHUNK, flush_every=4)
    w.append_rows(expected_rows(1, 21))   # row 0 would be all zeros but for its obs; skip it
    w.end_episode()
    w.flush()
    w.abort()                             # no trim: the arrays keep their grown length
    assert json.loads((path / "data/obs/zarr.json").read_text())["shape"][0] > 20
    (path / MARKER).unlink()
    before = snapshot(path)
    with pytest.raises(StoreCorruptError, match="cannot rebuild"):
        repair(path)
    assert snapshot(path) == before
    # A damaged chunk is not blessed by a rebuilt marker: the old marker's sums still count.
    path = make_store(tmp_path / "c")
    marker = json.loads((path / MARKER).read_text())
    (path / MARKER).write_text(json.dumps({**marker, "rows": 99_999}))
    flip(path / "data" / "action" / "c.1.0")
    before = snapshot(path)
    with pytest.raises(StoreCorruptError, match=r"data/action/c\.1\.0"):
        repair(path)
    assert snapshot(path) == before


# ---------------------------------------------------------------------------- checksums
def flip(chunk: Path) -> None:
    """Flip one bit near the end of a chunk file: it still decodes, to other values (the
    silent kind of damage; flips elsewhere may make blosc fail instead)."""
    data = bytearray(chunk.read_bytes())
    data[-4] ^= 0x01
    chunk.write_bytes(bytes(data))


def damage(path: Path, how: str) -> str:
    """Damage chunk 1 of data/obs (rows 8..15) as `how` says; the chunk file's path."""
    chunk = path / "data" / "obs" / "c.1.0"
    if how == "deleted":
        chunk.unlink()
    elif how == "flipped":
        flip(chunk)
    else:
        chunk.write_bytes(chunk.read_bytes()[:40])
    return str(chunk)


@pytest.mark.parametrize("how, what", [("deleted", "missing chunk file"),
                                       ("flipped", "checksum mismatch"),
                                       ("truncated", "unreadable chunk")])
def test_a_damaged_chunk_is_named_by_readers_writers_and_validate(tmp_path, how, what):
    path = make_store(tmp_path / "s")
    chunk = damage(path, how)
    before = snapshot(path)
    problems = TransitionStore.open(path).validate()
    assert len(problems) == 1 and problems[0].startswith(f"{chunk}: ") and \
        re.search(what, problems[0]), problems
    reader = TransitionStore.open(path)
    np.testing.assert_array_equal(reader.read(["obs"], 0, 8)["obs"], expected_rows(0, 8)["obs"])
    with pytest.raises(StoreCorruptError, match=f"^{chunk}: "):
        reader.read(["obs"], 10, 12)   # any read touching the chunk checks it first
    with pytest.raises(StoreCorruptError, match=f"^{chunk}: .*not opened for writing"):
        TransitionStore.open_or_create(path, OBS_DIM, ACT_DIM)
    assert snapshot(path) == before


@pytest.mark.parametrize("how", ["deleted", "flipped"])
def test_without_checksums_the_damage_is_silent(tmp_path, how):
    """The negative control of the test above: without the sums a deleted chunk reads as
    zeros and a flipped bit as other values, and validate finds nothing."""
    path = make_store(tmp_path / "s", checksums=False)
    assert "crc32" not in json.loads((path / MARKER).read_text())
    damage(path, how)
    store = TransitionStore.open(path)
    assert store.validate() == []
    got = store.read(["obs"], 8, 16)["obs"]
    assert not np.array_equal(got, expected_rows(8, 16)["obs"])


def test_a_writer_adds_sums_to_a_store_that_has_none(tmp_path):
    path = make_store(tmp_path / "s", checksums=False)
    with TransitionStore.open(path, "a") as w:
        w.append_rows(expected_rows(30, 33))
    assert json.loads((path / MARKER).read_text())["crc32"].keys() == {*STORED_FIELDS, *META_NAMES}
    damage(path, "deleted")
    assert TransitionStore.open(path).validate()[0].startswith(str(path / "data/obs/c.1.0"))


def test_sums_cover_only_committed_rows_so_an_uncommitted_tail_is_harmless(tmp_path):
    """A writer killed after rewriting the last chunk but before its marker (here: the chunk
    rewritten with more rows, the old marker put back) leaves a store that still checks."""
    path = make_store(tmp_path / "s", rows=20)   # chunk 2 holds rows 16..19
    old_marker = (path / MARKER).read_bytes()
    with TransitionStore.open(path, "a") as w:
        w.append_rows(expected_rows(20, 23))     # rewrites chunk 2 with rows 16..22
    (path / MARKER).write_bytes(old_marker)
    store = TransitionStore.open(path)
    assert (len(store), store.validate()) == (20, [])
    same_rows(path, 20)


@pytest.mark.parametrize("target", ["zarr.json", "data/reward/zarr.json", "meta/zarr.json"])
def test_garbled_or_missing_metadata_is_named(tmp_path, target):
    path = make_store(tmp_path / "s")
    (path / target).write_text("{not json")
    assert problems(path)[0].startswith(f"{path / target}: unreadable (JSONDecodeError")
    with pytest.raises(StoreCorruptError, match=rf"^{path / target}: unreadable"):
        TransitionStore.open_or_create(path, OBS_DIM, ACT_DIM)
    (path / target).unlink()
    assert problems(path)[0].startswith(f"{path / target}: missing")
    with pytest.raises(StoreCorruptError, match=rf"^{path / target}: missing"):
        TransitionStore.open_or_create(path, OBS_DIM, ACT_DIM)


def problems(path: Path) -> list[str]:
    """What `data validate` reports: the opening error, or validate()'s list."""
    try:
        return TransitionStore.open(path).validate()
    except StoreCorruptError as exc:
        return [str(exc)]


def test_a_reader_refuses_a_marker_claiming_rows_the_arrays_lack(tmp_path):
    path = make_store(tmp_path / "s")
    marker = json.loads((path / MARKER).read_text())
    (path / MARKER).write_text(json.dumps({**marker, "rows": 31}))
    with pytest.raises(StoreCorruptError, match=rf"^{path / MARKER}: claims 31 rows"):
        TransitionStore.open(path)
    (path / MARKER).write_text(json.dumps({**marker, "episodes": 4}))
    with pytest.raises(StoreCorruptError, match=rf"^{path / MARKER}: claims 4 episodes"):
        TransitionStore.open(path)
    (path / MARKER).write_text("{")
    with pytest.raises(StoreCorruptError, match=rf"^{path / MARKER}: unreadable"):
        TransitionStore.open(path)
    assert issubclass(StoreCorruptError, StoreError)   # callers catching StoreError still do


def test_an_interrupted_append_episode_keeps_nothing_of_that_episode(tmp_path, monkeypatch):
    """Ctrl-C between an episode's rows and its end (here injected into end_episode) must not
    leave its rows buffered as an open episode: the notes would not describe them, and the
    next append_episode would be refused."""
    path = tmp_path / "s"
    s = TransitionStore.create(path, OBS_DIM, ACT_DIM, chunk_rows=CHUNK, flush_every=100)
    s.append_episode(expected_rows(0, 10), notes={"done": 1})
    real = TransitionStore.end_episode

    def interrupted(self, **kw):
        monkeypatch.setattr(TransitionStore, "end_episode", real)
        raise KeyboardInterrupt

    monkeypatch.setattr(TransitionStore, "end_episode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        s.append_episode(expected_rows(10, 20), notes={"done": 2})
    assert (s.num_buffered, s.open_episode_rows) == (10, 0)
    s.append_episode(expected_rows(10, 20), notes={"done": 2})   # as a resumed run does
    s.close()
    store = TransitionStore.open(path)
    assert (store.notes, [e["end"] for e in store.episodes()]) == ({"done": 2}, [10, 20])
    same_rows(path, 20)


def test_a_checksummed_store_from_before_the_origin_columns_gains_them_with_their_sums(tmp_path):
    """A store written with checksums but before `robot`/`seq` existed (no such arrays, no sums
    for them in its marker) reads and validates as it is; its next writer adds the two arrays
    and sums them, so the marker covers every array again."""
    import shutil

    path = make_store(tmp_path / "s")
    marker = json.loads((path / MARKER).read_text())
    for name in ("robot", "seq"):
        shutil.rmtree(path / "data" / name)
        del marker["crc32"][name]
    (path / MARKER).write_text(json.dumps(marker))
    with TransitionStore.open(path) as old:
        assert old.validate() == []
        assert set(old.read(["robot"])["robot"]) == {0} and set(old.read(["seq"])["seq"]) == {-1}
    with TransitionStore.open(path, "a") as writer:     # sums what its marker lacks, at open
        writer.append_episode(expected_rows(30, 40), success=True)
    assert json.loads((path / MARKER).read_text())["crc32"].keys() == {*STORED_FIELDS, *META_NAMES}
    with TransitionStore.open(path) as new:
        assert new.validate() == []
        assert set(new.read(["seq"])["seq"]) == {-1}
    same_rows(path, 40)
