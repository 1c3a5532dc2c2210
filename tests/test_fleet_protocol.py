"""The fleet protocol without ROS (docs/fleet.md): the wire format, the robot's spool and sender,
the learner's idempotent ingest, and all of them over a lossy channel with restarts."""
from __future__ import annotations

import collections
import random
from pathlib import Path

import numpy as np
import pytest

from o2o_robot.config import load_config, resolve_config_path
from o2o_robot.data.schema import FIELDS, EpisodeEnd, Transition, validate_rows
from o2o_robot.data.spool import Sender, Spool
from o2o_robot.data.store import TransitionStore
from o2o_robot.data.wire import (END_CONTINUES, RowBatch, WireError, decode_batch, decode_json,
                                 decode_policy, encode_batch, encode_json, encode_policy)
from o2o_robot.learning.core import LearnerCore
from o2o_robot.learning.fleet import FleetIngest, RobotTable

OBS, ACT = 12, 3


def stream(episodes: list[int], seed: int = 0, *, drop_last_of: tuple[int, ...] = ()) -> list:
    """Items as an actor hands them on: episode k has episodes[k] rows; its last row is
    truncated (success = k odd), or, for k in `drop_last_of`, lost and replaced by an
    EpisodeEnd (the operator's label)."""
    rng, items = np.random.default_rng(seed), []
    for k, length in enumerate(episodes):
        obs = rng.normal(size=(length + 1, OBS)).astype(np.float32)
        for t in range(length):
            last = t == length - 1
            if last and k in drop_last_of:
                items.append(EpisodeEnd(k, success=True))
                break
            items.append(Transition(obs=obs[t], action=rng.uniform(-2, 2, ACT).astype(np.float32),
                                    reward=float(rng.normal()), next_obs=obs[t + 1],
                                    terminated=False, truncated=last, source=1, policy_version=k,
                                    timestamp=1e9 + t, episode=k, step=t,
                                    success=bool(k % 2) if last else None))
    return items


def batch_of(items: list, robot: str = "r0", first: int = 0) -> RowBatch:
    rows = validate_rows({f: np.stack([np.asarray(getattr(t, f)) for t in items])
                          for f in FIELDS}, OBS, ACT)
    end = np.array([-2 if not t.ends_episode else int(t.success) for t in items], np.int8)
    return RowBatch(robot, first, rows, end)


# ------------------------------------------------------------------------------------ wire
def test_a_batch_round_trips_exactly_and_sends_each_observation_once():
    items = stream([5, 4])
    batch = batch_of(items)
    data = encode_batch(batch)
    got = decode_batch(bytearray(data))
    assert (got.robot, got.first_seq, len(got)) == ("r0", 0, 9)
    for f in FIELDS:
        np.testing.assert_array_equal(got.rows[f], batch.rows[f], err_msg=f)
    np.testing.assert_array_equal(got.end, batch.end)
    # next_obs travels only for the two episodes' last rows (the batch's last row is one)
    plain = encode_batch(RowBatch("r0", 0, {**batch.rows, "next_obs": batch.rows["next_obs"] + 1},
                                  batch.end))
    assert len(plain) - len(data) == 7 * OBS * 4


def test_camera_frames_round_trip_and_each_frame_travels_once():
    items = stream([6])
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (7, 8, 8, 3), np.uint8)      # the episode's 7 observations
    batch = RowBatch("cam", 10, batch_of(items).rows, batch_of(items).end,
                     frames={"wrist": frames[:-1]}, next_frames={"wrist": frames[1:]})
    data = encode_batch(batch)
    got = decode_batch(data)
    np.testing.assert_array_equal(got.frames["wrist"], frames[:-1])
    np.testing.assert_array_equal(got.next_frames["wrist"], frames[1:])
    without = encode_batch(RowBatch("cam", 10, batch.rows, batch.end))
    header = len(b',"cameras":[{"name":"wrist","height":8,"width":8,"channels":3}]') - \
        len(b',"cameras":[]')
    assert len(data) - len(without) - header == 7 * 8 * 8 * 3   # 7 frames sent, not 12


@pytest.mark.parametrize("damage, message", [
    (lambda d: b"XXXX" + d[4:], "magic"),
    (lambda d: d[:4] + b"\x09\x00" + d[6:], "format version 9"),
    (lambda d: d[:-5], "body ends before"),
    (lambda d: d + b"\x00", "1 bytes after the columns"),
    (lambda d: d[:10], "shorter than the frame header"),
    (lambda d: d[:12] + b"{" * (len(d) - 12), "unreadable JSON header"),
])
def test_a_damaged_batch_is_refused_naming_what_is_wrong(damage, message):
    with pytest.raises(WireError, match=message):
        decode_batch(damage(encode_batch(batch_of(stream([3])))))


def test_policies_and_json_messages_round_trip_and_refuse_damage():
    onnx = bytes(range(256)) * 10
    header, body = decode_policy(encode_policy(onnx, 7, "L1"))
    assert body == onnx and (header["version"], header["learner"]) == (7, "L1")
    broken = bytearray(encode_policy(onnx, 7, "L1"))
    broken[-1] ^= 1
    with pytest.raises(WireError, match="sha256"):
        decode_policy(bytes(broken))
    with pytest.raises(WireError, match="magic"):
        decode_policy(encode_batch(batch_of(stream([2]))))
    doc = decode_json(encode_json("acks", {"learner": "L1", "robots": {"r0": {"acked": 3}}}), "acks")
    assert doc["robots"]["r0"]["acked"] == 3
    with pytest.raises(WireError, match="kind"):
        decode_json(encode_json("robot", {}), "acks")
    with pytest.raises(WireError, match="not JSON"):
        decode_json("{", "acks")


# ------------------------------------------------------------------------------ spool, sender
def test_the_spool_numbers_rows_and_sends_only_final_committed_rows(tmp_path):
    spool = Spool(tmp_path / "spool", OBS, ACT, commit_rows=3, commit_period_s=60)
    items = stream([4, 3], drop_last_of=(1,))
    for item in items[:2]:
        spool.put(item, now=0.0)
    assert (spool.rows, spool.final_rows) == (0, 0)              # nothing committed yet
    spool.put(items[2], now=0.0)                                 # 3 buffered: committed
    assert (spool.rows, spool.final_rows) == (3, 2)              # row 2 may still end episode 0
    spool.put(items[3], now=0.0)                                 # episode 0 ends: committed
    assert (spool.rows, spool.final_rows) == (4, 4)
    for item in items[4:6]:
        spool.put(item, now=0.0)
    spool.tick(now=61.0)                                         # old enough: committed
    assert (spool.rows, spool.final_rows) == (6, 5)
    spool.put(items[6], now=61.0)                                # EpisodeEnd(1, success=True)
    assert spool.final_rows == 6
    batch = spool.batch("r0", 2, 6)
    assert batch.end.tolist() == [END_CONTINUES, 0, END_CONTINUES, 1]   # ep 0 failed, 1 not
    assert spool.store.read(["seq"])["seq"].tolist() == list(range(6))
    spool.put(stream([2], seed=5)[0], now=62.0)                  # buffered, then a crash
    spool.store.abort()
    again = Spool(tmp_path / "spool", OBS, ACT)
    assert (again.rows, again.final_rows, again.recovered) == (6, 6, 6)
    again.put(stream([2], seed=5)[0], now=0.0)
    again.commit(now=0.0)
    assert again.store.read(["seq"])["seq"].tolist() == list(range(7))
    again.close()


def test_the_sender_goes_back_when_the_learner_stalls_restarts_or_is_lost():
    s = Sender(batch_rows=4, window_rows=10, resend_after_s=1.0)
    assert s.next_range(50, now=0.0) is None                     # no learner heard yet
    s.on_acks("L1", acked=0, received=0, now=0.0)
    assert [s.next_range(50, 0.0) for _ in range(4)] == [(0, 4), (4, 8), (8, 10), None]
    s.on_acks("L1", acked=0, received=6, now=0.5)                # window moves with received
    assert s.next_range(50, 0.6) == (10, 14)
    assert s.next_range(50, 0.7) == (14, 16) and s.next_range(50, 1.4) is None
    assert s.next_range(50, 1.6) == (6, 10)                      # stuck 1 s: resend from 6
    assert s.next_range(50, 2.0) == (10, 14) and s.next_range(50, 2.1) == (14, 16)
    assert s.next_range(50, 3.2) is None                         # backoff: 2 s now
    assert s.next_range(50, 3.7) == (6, 10) and s.counts["resends"] == 2
    s.on_acks("L2", acked=3, received=3, now=4.0)                # a restarted learner
    assert s.next_range(50, 4.0) == (3, 7)
    s.on_lost()
    assert s.next_range(50, 5.0) is None
    s.on_acks("L2", acked=7, received=7, now=9.0)                # back: from what it holds
    assert s.next_range(9, 9.0) == (7, 9)


# --------------------------------------------------------------------------------- learner
def tiny_core(tmp_path: Path, name: str = "learner") -> LearnerCore:
    cfg = load_config(resolve_config_path("sim_reach.yaml"), overrides={
        "store": {"path": str(tmp_path / name / "store.zarr")}, "sampler": {"batch_size": 16},
        "algorithm": {"name": "rlpd", "hidden_dims": [16], "critic_ensemble_size": 2},
        "learner": {"warmup_steps": 100000, "device": "cpu"}, "train": {"run_dir": str(tmp_path / name)}})
    store = TransitionStore.open_or_create(cfg.store.path, OBS, ACT, flush_every=10000)
    return LearnerCore.open(cfg, store, tmp_path / name, resume=True, adopt_tail=True)


def robot_rows(store_path: Path, robot: str) -> dict:
    with TransitionStore.open(store_path) as store:
        code = {v: k for k, v in store.robots.items()}[robot]
        rows = store.read()
        return {f: v[rows["robot"] == code] for f, v in rows.items()}


def test_ingest_is_idempotent_by_robot_and_seq_and_acks_only_committed_rows(tmp_path):
    core = tiny_core(tmp_path)
    ingest = FleetIngest(core)
    a, b = batch_of(stream([3, 2], seed=1), "a"), batch_of(stream([4], seed=2), "b")
    cut = lambda batch, i, j: RowBatch(batch.robot, i, {f: v[i:j] for f, v in batch.rows.items()},
                                       batch.end[i:j])
    assert ingest.offer(cut(a, 0, 2)) == "ok"
    assert ingest.offer(cut(b, 0, 3)) == "ok"
    assert ingest.offer(cut(a, 0, 2)) == "duplicate"
    assert ingest.offer(cut(a, 4, 5)) == "gap"                   # row 2..3 not here yet
    assert ingest.acks() == {"a": {"acked": 0, "received": 2}, "b": {"acked": 0, "received": 3}}
    assert ingest.offer(cut(a, 1, 4)) == "ok"                    # overlaps: only 2..3 are new
    assert len(core.store) + core.store.num_buffered == 3        # a's episode 0 is whole, b's not
    ingest.commit()
    assert ingest.acks()["a"] == {"acked": 3, "received": 4}
    assert ingest.offer(cut(b, 3, 4)) == ingest.offer(cut(a, 4, 5)) == "ok"
    bad = RowBatch("c", 0, {**cut(a, 0, 1).rows, "obs": np.zeros((1, 5), np.float32)},
                   cut(a, 0, 1).end)
    assert ingest.offer(bad).startswith("refused: obs_dim 5")
    ingest.commit()
    assert ingest.acks()["a"]["acked"] == 5 and ingest.acks()["b"]["acked"] == 4
    core.store.close()
    for robot, batch in (("a", a), ("b", b)):
        got = robot_rows(tmp_path / "learner" / "store.zarr", robot)
        assert got["seq"].tolist() == list(range(len(batch)))
        for f in FIELDS:
            np.testing.assert_array_equal(got[f], batch.rows[f].astype(got[f].dtype), err_msg=f)
    with TransitionStore.open(tmp_path / "learner" / "store.zarr") as store:
        assert [(e["length"], e["success"]) for e in store.episodes()] == \
            [(3, False), (4, False), (2, True)]


def test_over_a_lossy_channel_with_restarts_nothing_is_lost_or_duplicated(tmp_path):
    """Two robots' spools and senders, a learner that drops, duplicates and reorders batches,
    restarts twice (losing what it had not committed), and a robot that crashes: at the end the
    learner's rows per robot are exactly the robot's spool, seq 0..n-1, in order."""
    rng = random.Random(0)
    names = ("r0", "r1")
    spools = {r: Spool(tmp_path / r, OBS, ACT, commit_rows=7, commit_period_s=0.5) for r in names}
    senders = {r: Sender(batch_rows=5, window_rows=20, resend_after_s=0.3) for r in names}
    feeds = {r: iter(stream([rng.randint(3, 12) for _ in range(25)], seed=i,
                            drop_last_of=(4, 9))) for i, r in enumerate(names)}
    core, learner_id, in_flight, now = tiny_core(tmp_path), "L0", [], 0.0
    results = collections.Counter()
    ingest = FleetIngest(core)
    def caught_up() -> bool:
        acks = ingest.acks()
        return all(acks.get(r, {}).get("acked") == spools[r].final_rows for r in names)

    for tick in range(6000):
        if tick > 1500 and caught_up():                          # fed, then drained
            break
        now += 0.01
        for r in names:
            item = next(feeds[r], None)
            if item is not None:
                spools[r].put(item, now)
            spools[r].tick(now)
            if rng.random() < 0.3 and (span := senders[r].next_range(spools[r].final_rows, now)):
                in_flight.append(encode_batch(spools[r].batch(r, *span)))
        rng.shuffle(in_flight)                                   # reordered
        for _ in range(min(rng.randint(0, 3), len(in_flight))):
            data = in_flight.pop()
            if rng.random() > 0.2:                               # else lost
                results[ingest.offer(decode_batch(data))] += 1
            if rng.random() < 0.2:                               # delivered (again) later
                in_flight.insert(0, data)
        del in_flight[:-30]                                      # a full queue loses the oldest
        if tick % 20 == 0:
            ingest.commit()
            acks = ingest.acks()
            for r in names:                                      # not listed: it holds none
                counts = acks.get(r, {"acked": 0, "received": 0})
                senders[r].on_acks(learner_id, counts["acked"], counts["received"], now)
        if tick in (500, 1000):                                  # the learner dies (kill -9)
            core.store.abort()
            core, learner_id = tiny_core(tmp_path), f"L{tick}"
            ingest = FleetIngest(core)
        if tick == 700:                                          # robot r1 crashes and restarts
            spools["r1"].store.abort()
            spools["r1"] = Spool(tmp_path / "r1", OBS, ACT, commit_rows=7, commit_period_s=0.5)
            senders["r1"] = Sender(batch_rows=5, window_rows=20, resend_after_s=0.3)
    assert caught_up() and all(next(feeds[r], None) is None for r in names)
    assert min(results["ok"], results["duplicate"], results["gap"]) >= 10, results
    for r in names:
        spools[r].close()
    core.store.close()
    for r in names:
        with TransitionStore.open(tmp_path / r) as spool:
            want = spool.read()
        got = robot_rows(tmp_path / "learner" / "store.zarr", r)
        assert len(want["seq"]) > 100
        assert got["seq"].tolist() == list(range(len(want["seq"]))), r
        for f in FIELDS:
            np.testing.assert_array_equal(got[f], want[f], err_msg=f"{r}: {f}")


def test_the_robot_table_says_who_is_live_and_each_ones_policy_lag():
    table = RobotTable(lease_s=1.0)
    table.heard("r0", {"serving_version": 3}, now=0.0)
    table.heard("r1", {"serving_version": 5}, now=0.5)
    assert table.live(1.2) == ["r1"]
    table.check(1.2)
    report = table.report(1.2, learner_version=6)
    assert report["r0"]["live"] is False and report["r1"]["policy_lag"] == 1
    table.heard("r0", {"serving_version": 6}, now=2.0)
    assert table.events == [("r0", "joined"), ("r1", "joined"), ("r0", "left"), ("r0", "joined")]
