"""The origin of stored rows (schema.ORIGIN_FIELDS: `robot`, `seq`): round trips, the robot
name table committed with the rows, checks at the boundary, and stores from before the fields."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from o2o_robot.data.schema import ORIGIN_FIELDS, Transition, validate_rows
from o2o_robot.data.store import StoreValueError, TransitionStore

OBS, ACT = 3, 2


def rows(n: int, start: int = 0) -> dict[str, np.ndarray]:
    i = np.arange(start, start + n)
    return {"obs": np.repeat(i[:, None], OBS, 1).astype(np.float32),
            "action": np.zeros((n, ACT), np.float32), "reward": i.astype(np.float32),
            "next_obs": np.repeat(i[:, None] + 1, OBS, 1).astype(np.float32),
            "terminated": np.zeros(n, bool), "truncated": np.zeros(n, bool),
            "source": np.ones(n, np.uint8), "policy_version": np.zeros(n, np.int64),
            "timestamp": i.astype(np.float64)}


def one(block: dict, k: int) -> dict:
    return {f: v[k] for f, v in block.items()}


def test_origin_round_trips_and_the_robot_table_commits_with_the_rows(tmp_path):
    path = tmp_path / "s"
    with TransitionStore.create(path, OBS, ACT, flush_every=100) as store:
        store.append_rows(rows(3))                                # local rows: the defaults
        a, b = store.robot_code("robot_a"), store.robot_code("robot_b")
        assert (a, b, store.robot_code("robot_a")) == (1, 2, 1)
        assert store.robots == {}                                 # staged, not committed yet
        for k in range(4):
            store.append(**one(rows(4, 3), k), robot=a if k < 2 else b, seq=k % 2)
        store.append_rows({**rows(2, 7), "robot": np.array([b, b]), "seq": np.array([2, 3])})
        store.end_episode()
        store.flush()
        assert store.robots == {1: "robot_a", 2: "robot_b"}
    r = TransitionStore.open(path, "r")
    got = r.read(["robot", "seq", "reward"])
    assert got["robot"].tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert got["seq"].tolist() == [-1, -1, -1, 0, 1, 0, 1, 2, 3]
    assert got["robot"].dtype == ORIGIN_FIELDS["robot"] and got["seq"].dtype == np.int64
    assert r.robots == {1: "robot_a", 2: "robot_b"}
    assert r.info()["robots"] == {"robot_a": 2, "robot_b": 4}
    assert r.validate() == []


def test_a_store_from_before_the_origin_fields_reads_defaults_and_gains_them(tmp_path):
    path = tmp_path / "old"
    with TransitionStore.create(path, OBS, ACT, chunk_rows=4) as store:
        store.append_rows(rows(6))
        store.end_episode()
    for field in ORIGIN_FIELDS:                                   # as written before they existed
        shutil.rmtree(path / "data" / field)
    r = TransitionStore.open(path, "r")
    old = r.read(["robot", "seq"], 2, 5)
    assert (old["robot"].tolist(), old["seq"].tolist()) == ([0, 0, 0], [-1, -1, -1])
    assert r.validate() == [] and "robots" not in r.info()
    with TransitionStore.open(path, "a") as store:                # a writer adds the arrays
        store.append(**one(rows(1, 6), 0), robot=store.robot_code("r0"), seq=0)
        store.end_episode()
    r = TransitionStore.open(path, "r")
    got = r.read(["robot", "seq", "reward"])
    assert got["robot"].tolist() == [0] * 6 + [1] and got["seq"].tolist() == [-1] * 6 + [0]
    assert got["reward"].tolist() == list(range(7)) and r.validate() == []


@pytest.mark.parametrize("origin, message", [
    ({"robot": np.array([70000, 0])}, "robot: values must lie in"),
    ({"seq": np.array([-2, 0])}, "seq: values must lie in"),
    ({"seq": np.array([0.5, 1.0])}, "seq: expected integers"),
    ({"robot": np.array([0])}, "robot: expected shape"),
])
def test_bad_origin_values_are_refused_naming_the_field(tmp_path, origin, message):
    with pytest.raises(ValueError, match=message):
        validate_rows({**rows(2), **origin}, OBS, ACT)
    with TransitionStore.create(tmp_path / "s", OBS, ACT) as store:
        with pytest.raises(StoreValueError, match=message):
            store.append_rows({**rows(2), **origin})
        with pytest.raises(StoreValueError, match="seq: must lie in"):
            store.append(**one(rows(1), 0), seq=-5)
        with pytest.raises(StoreValueError, match="robot: expected an integer"):
            store.append(**one(rows(1), 0), robot="r0")
        assert store.num_buffered == 0


def test_a_transition_carries_its_origin_into_its_row():
    t = Transition(obs=np.zeros(OBS, np.float32), action=np.zeros(ACT, np.float32), reward=0.0,
                   next_obs=np.zeros(OBS, np.float32), terminated=False, truncated=True,
                   source=1, robot=3, seq=41)
    row = t.row()
    assert (row["robot"], row["seq"]) == (3, 41)
    plain = Transition(**{k: v for k, v in row.items() if k not in ORIGIN_FIELDS})
    assert (plain.row()["robot"], plain.row()["seq"]) == (0, -1)
