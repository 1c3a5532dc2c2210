"""`EpisodeAssembler` (data/schema.py): gapped streams -> store episodes, in the three
configurations its users run, and two of those users end to end on a real store.

Gaps: a lost last row (the next episode's row arrives while one is open), a lost middle row (a
`step` jump), an episode index jump, an `EpisodeEnd` closing an episode, the stream closing
mid-episode. Configurations:

* `on_gap="split"`, rows as they come: `LearnerCore` (every row is mirrored at once);
* `on_gap="discard", whole=True`: the teleop `DemoRecorder` (a demo is whole or absent);
* `on_gap="split", whole=True`: the rosbag importer (whole unbroken runs, labels kept).

The store contract checked on the users' stores: an episode is an unbroken run of steps of
one producer episode, so next_obs of row i == obs of row i+1 inside an episode.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from o2o_robot.config import RLPDConfig, load_config, resolve_config_path
from o2o_robot.data.schema import SOURCE_CODE, EpisodeAssembler, EpisodeEnd, Segment, Transition
from o2o_robot.data.store import TransitionStore
from o2o_robot.learning.core import LearnerCore
from o2o_robot.teleop.recorder import DemoRecorder

OBS, ACT = 4, 2
ONLINE, DEMO = SOURCE_CODE["online"], SOURCE_CODE["demo"]


def row(episode: int, step: int, *, end: str = "", success: bool | None = None,
        source: int = ONLINE, obs_dim: int = OBS, act_dim: int = ACT) -> Transition:
    """Row `step` of producer episode `episode`: obs encodes (episode, step), next_obs the next
    step, so an unbroken run satisfies next_obs[i] == obs[i+1] and a gap does not."""
    obs = np.zeros(obs_dim, np.float32)
    obs[:2] = episode, step
    nxt = obs.copy()
    nxt[1] = step + 1
    return Transition(obs=obs, action=np.full(act_dim, 0.1 * step, np.float32),
                      reward=float(step), next_obs=nxt, terminated=end == "terminated",
                      truncated=end == "truncated", source=source, timestamp=float(step),
                      episode=episode, step=step, success=success)


def episode(index: int, steps, *, end: str = "truncated", success: bool | None = True, **kw):
    """Rows of `steps` (an iterable of step numbers) of one episode; the last one ends it with
    `success` unless `end` is ''."""
    steps = list(steps)
    return [row(index, s, end=end if s == steps[-1] else "",
                success=success if (end and s == steps[-1]) else None, **kw) for s in steps]


def summary(segments: list[Segment]) -> list[tuple]:
    """Each segment as ([(episode, step), ...], end, success)."""
    return [([(r.episode, r.step) for r in s.rows], s.end, s.success) for s in segments]


def push_all(assembler: EpisodeAssembler, items) -> list[tuple]:
    out = []
    for item in items:
        out += summary(assembler.push(item))
    return out


def steps_of(episode_index: int, steps) -> list[tuple[int, int]]:
    return [(episode_index, s) for s in steps]


# --------------------------------------------------------------------------- configuration
def test_discarding_needs_whole_episodes_and_the_gap_policy_is_checked():
    with pytest.raises(ValueError, match="whole=True"):
        EpisodeAssembler(on_gap="discard")
    with pytest.raises(ValueError, match="on_gap"):
        EpisodeAssembler(on_gap="merge")


# ------------------------------------------------------------- split, rows as they come (core)
def test_split_rows_as_they_come_hands_each_row_on_and_ends_with_the_last_row():
    a = EpisodeAssembler(on_gap="split")
    assert push_all(a, episode(0, range(3), success=True)) == [
        ([(0, 0)], False, None), ([(0, 1)], False, None), ([(0, 2)], True, True)]
    assert a.open_rows == 0 and a.counts["episodes"] == 1


def test_split_rows_as_they_come_closes_an_episode_whose_last_row_was_lost():
    a = EpisodeAssembler(on_gap="split")
    out = push_all(a, episode(0, range(3), end="") + episode(1, range(2), success=False))
    assert out == [([(0, 0)], False, None), ([(0, 1)], False, None), ([(0, 2)], False, None),
                   ([], True, None),                         # episode 0 closed, label unknown
                   ([(1, 0)], False, None), ([(1, 1)], True, False)]
    assert a.counts == {"episodes": 2, "splits": 0, "cut": 1, "discarded": 0,
                        "rows_discarded": 0}


def test_split_rows_as_they_come_splits_at_a_lost_middle_row():
    a = EpisodeAssembler(on_gap="split")
    out = push_all(a, episode(0, [0, 1, 3, 4], success=True))   # step 2 lost
    assert out == [([(0, 0)], False, None), ([(0, 1)], False, None),
                   ([], True, None),                          # the part before the gap
                   ([(0, 3)], False, None), ([(0, 4)], True, True)]
    assert (a.counts["splits"], a.counts["cut"], a.counts["episodes"]) == (1, 0, 2)


def test_split_a_lost_middle_row_just_before_the_last_one():
    a = EpisodeAssembler(on_gap="split")
    out = push_all(a, episode(0, [0, 1, 3], success=False))
    assert out == [([(0, 0)], False, None), ([(0, 1)], False, None), ([], True, None),
                   ([(0, 3)], True, False)]                   # a one-row episode with the label


def test_an_episode_index_jump_between_whole_episodes_is_no_gap_but_one_while_open_is():
    a = EpisodeAssembler(on_gap="split")
    out = push_all(a, episode(0, range(2)) + episode(3, range(2)))   # 1 and 2 never arrived
    assert out == [([(0, 0)], False, None), ([(0, 1)], True, True),
                   ([(3, 0)], False, None), ([(3, 1)], True, True)]
    assert (a.counts["cut"], a.counts["splits"]) == (0, 0)
    out = push_all(a, episode(4, range(2), end="") + episode(7, [5, 6]))  # open, then a jump
    assert out == [([(4, 0)], False, None), ([(4, 1)], False, None), ([], True, None),
                   ([(7, 5)], False, None), ([(7, 6)], True, True)]   # may start at any step
    assert (a.counts["cut"], a.counts["splits"], a.counts["episodes"]) == (1, 0, 4)


def test_split_an_episode_end_closes_the_open_episode_with_its_label_once():
    a = EpisodeAssembler(on_gap="split")
    out = push_all(a, episode(0, range(2), end="") + [EpisodeEnd(0, success=True),
                                                    EpisodeEnd(0, success=False)])
    assert out == [([(0, 0)], False, None), ([(0, 1)], False, None), ([], True, True)]
    # An end marker of another episode while one is open: the open one lost its end.
    out = push_all(a, episode(1, range(2), end="") + [EpisodeEnd(2, success=True)])
    assert out == [([(1, 0)], False, None), ([(1, 1)], False, None), ([], True, None)]
    assert (a.counts["episodes"], a.counts["cut"]) == (2, 1)


def test_split_the_stream_closing_mid_episode_closes_it_unlabelled():
    a = EpisodeAssembler(on_gap="split")
    push_all(a, episode(0, range(3), end=""))
    assert a.open_rows == 3
    assert summary(a.close()) == [([], True, None)]
    assert a.close() == [] and a.open_rows == 0 and a.counts["cut"] == 1


# ----------------------------------------------------------- discard, whole (demo recorder)
def test_discard_whole_hands_on_only_whole_episodes():
    a = EpisodeAssembler(on_gap="discard", whole=True)
    items = (episode(0, range(3), success=True)                   # whole
             + episode(1, [0, 2, 3], success=True)                # step 1 lost: torn
             + episode(2, range(4), end="")                       # last row lost
             + episode(3, range(2), end="") + [EpisodeEnd(3, success=False)]
             + episode(4, range(2), success=None))                # a label never given
    out = push_all(a, items)
    assert out == [(steps_of(0, range(3)), True, True), (steps_of(3, range(2)), True, False),
                   (steps_of(4, range(2)), True, None)]
    assert a.discarded == [(1, 3), (2, 4)]                        # (episode, rows dropped)
    assert a.counts == {"episodes": 3, "splits": 0, "cut": 0, "discarded": 2,
                        "rows_discarded": 7}


def test_discard_whole_buffers_until_the_end_and_drops_an_episode_open_at_close():
    a = EpisodeAssembler(on_gap="discard", whole=True)
    assert push_all(a, episode(0, range(3), end="")) == []
    assert a.open_rows == 3
    assert a.close() == [] and a.open_rows == 0
    assert a.discarded == [(0, 3)] and a.counts["rows_discarded"] == 3
    # an end marker of a torn episode drops it too
    assert push_all(a, episode(1, [0, 2], end="") + [EpisodeEnd(1, success=True)]) == []
    assert a.discarded == [(0, 3), (1, 2)]
    # and one for another episode while one is open
    assert push_all(a, episode(2, range(2), end="") + [EpisodeEnd(5, success=True)]) == []
    assert a.discarded[-1] == (2, 2) and a.counts["episodes"] == 0


# -------------------------------------------------------------- split, whole (rosbag import)
def test_split_whole_hands_on_unbroken_runs_with_their_labels():
    a = EpisodeAssembler(on_gap="split", whole=True)
    items = (episode(0, range(3), success=True)
             + episode(1, [0, 1, 3, 4], success=False)            # step 2 lost: split
             + episode(2, range(3), end="")                       # last row lost: cut
             + episode(3, range(2), end="") + [EpisodeEnd(3, success=True)]
             + episode(4, range(2), end=""))                      # open when the bag ends
    out = push_all(a, items)
    assert out == [(steps_of(0, range(3)), True, True),
                   (steps_of(1, [0, 1]), True, None), (steps_of(1, [3, 4]), True, False),
                   (steps_of(2, range(3)), True, None),
                   (steps_of(3, range(2)), True, True)]
    assert summary(a.close()) == [(steps_of(4, range(2)), True, None)]
    assert a.counts == {"episodes": 6, "splits": 1, "cut": 2, "discarded": 0,
                        "rows_discarded": 0}
    assert a.discarded == []


# ------------------------------------------------------------------------- users, end to end
def assert_store_contract(rows: dict, episodes: list[dict]) -> None:
    """Every episode an unbroken run of one producer episode: constant episode index, steps
    +1 apart, next_obs[i] == obs[i+1]; episodes tile the rows."""
    assert episodes[0]["start"] == 0
    for prev, e in zip(episodes, episodes[1:]):
        assert e["start"] == prev["end"]
    assert episodes[-1]["end"] == len(rows["obs"])
    for e in episodes:
        obs, nxt = rows["obs"][e["start"]:e["end"]], rows["next_obs"][e["start"]:e["end"]]
        assert np.all(obs[:, 0] == obs[0, 0]), e
        assert np.array_equal(np.diff(obs[:, 1]), np.ones(len(obs) - 1)), e
        assert np.array_equal(nxt[:-1], obs[1:]), e


GAPPED = (episode(0, range(5), success=True)                      # whole
          + episode(1, [0, 1, 2, 4, 5], success=False)            # step 3 lost
          + episode(2, range(4), end="")                          # last row lost
          + episode(3, range(3), end="") + [EpisodeEnd(3, success=True)]
          + episode(5, range(3), end=""))                         # 4 lost whole; 5 still open


def test_the_learner_core_stores_gapped_streams_as_unbroken_episodes(tmp_path):
    cfg = load_config(resolve_config_path("sim_reach.yaml"), overrides={
        "store": {"path": str(tmp_path / "store.zarr")},
        "algorithm": {"name": "rlpd"},
        "learner": {"warmup_steps": 1000, "device": "cpu"},       # storing only, no updates
        "train": {"run_dir": str(tmp_path)}})
    cfg = cfg.model_copy(update={"algorithm": RLPDConfig(hidden_dims=[8], critic_ensemble_size=2)})
    dims = {"obs_dim": cfg.robot.obs_dim, "act_dim": cfg.robot.act_dim}
    items = [row(i.episode, i.step, end="terminated" if i.terminated else
                 "truncated" if i.truncated else "", success=i.success, **dims)
             if isinstance(i, Transition) else i for i in GAPPED]
    store = TransitionStore.open_or_create(cfg.store.path, **dims)
    try:
        core = LearnerCore.open(cfg, store, tmp_path, resume=False)
        for item in items:
            core.ingest(item)
            assert not core.step()
        assert core.state.env_steps == sum(isinstance(i, Transition) for i in items) == 20
        assert (core.state.counters["cut_episodes"], core.state.counters["split_episodes"]) == (1, 1)
        assert core.mirror.size("online") == 20
        core.close_episode()                                       # the stream stops
    finally:
        store.close()
    with TransitionStore.open(cfg.store.path) as s:
        rows, eps = s.read(), s.episodes()
    assert [(e["length"], e["success"]) for e in eps] == \
        [(5, True), (3, None), (2, False), (4, None), (3, True), (3, None)]
    assert [int(rows["obs"][e["start"], 0]) for e in eps] == [0, 1, 1, 2, 3, 5]
    assert_store_contract(rows, eps)


def test_the_demo_recorder_stores_only_whole_demonstrations_of_a_gapped_stream(tmp_path):
    rec = DemoRecorder(tmp_path / "demos.zarr", OBS, ACT)
    for item in GAPPED:
        demo = item if isinstance(item, EpisodeEnd) else \
            row(item.episode, item.step, end="truncated" if item.truncated else "",
                success=item.success, source=DEMO)
        assert rec.submit(demo)
    final = rec.close()
    assert final["state"] == "stopped", final
    assert (final["stored_episodes"], final["stored_rows"], final["torn_discarded"],
            final["discarded_partial"]) == (2, 8, 2, 1)                 # 1 and 2 torn, 5 open
    with TransitionStore.open(tmp_path / "demos.zarr") as s:
        rows, eps = s.read(), s.episodes()
    assert [(e["length"], e["success"], e["source"]) for e in eps] == \
        [(5, True, "demo"), (3, True, "demo")]
    assert [int(rows["obs"][e["start"], 0]) for e in eps] == [0, 3]
    assert_store_contract(rows, eps)


def test_a_row_the_store_refuses_mid_episode_does_not_join_the_rows_around_it(tmp_path):
    """The learner drops a row the store refuses (here a NaN reward) and goes on; the rows
    before and after it must not form one store episode (there is a step missing between
    them): the episode is split there, like a row lost on the way."""
    cfg = load_config(resolve_config_path("sim_reach.yaml"), overrides={
        "store": {"path": str(tmp_path / "store.zarr")},
        "algorithm": {"name": "rlpd"},
        "learner": {"warmup_steps": 1000, "device": "cpu"},
        "train": {"run_dir": str(tmp_path)}})
    cfg = cfg.model_copy(update={"algorithm": RLPDConfig(hidden_dims=[8], critic_ensemble_size=2)})
    dims = {"obs_dim": cfg.robot.obs_dim, "act_dim": cfg.robot.act_dim}
    items = episode(0, range(5), success=True, **dims)
    items[2] = dataclasses.replace(items[2], reward=float("nan"))
    store = TransitionStore.open_or_create(cfg.store.path, **dims)
    try:
        core = LearnerCore.open(cfg, store, tmp_path, resume=False)
        for item in items:
            core.ingest(item)
        assert core.state.counters["rejected_rows"] == 1 and core.state.env_steps == 4
        assert core.state.counters["split_episodes"] == 1
    finally:
        store.close()
    with TransitionStore.open(cfg.store.path) as s:
        rows, eps = s.read(), s.episodes()
    assert len(rows["obs"]) == 4
    assert_store_contract(rows, eps)
    assert [(e["length"], e["success"]) for e in eps] == [(2, None), (2, True)]
