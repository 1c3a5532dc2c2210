"""ReplayMirror and samplers: exact batch composition (ALGORITHMS.md 1.9a), FIFO, recent window
(3.7g), balanced-replay priorities (3.2)."""
import numpy as np
import pytest

from o2o_robot.data.replay import (PrioritySampler, ReplayMirror, offline_count,
                                   split_minibatches)
from o2o_robot.data.schema import OFFLINE_SIDE_CODES, SOURCE_CODE
from o2o_robot.spaces import ActionScaler

OBS, ACT = 5, 2
DEMO, ONLINE = SOURCE_CODE["demo"], SOURCE_CODE["online"]
INTERVENTION, OFFLINE = SOURCE_CODE["intervention"], SOURCE_CODE["offline"]


def rows(ids, source, terminated=None, truncated=None):
    """Schema rows whose obs[:, 0] is a unique row id, so samples can be traced back."""
    ids = np.asarray(ids, np.float32)
    n = len(ids)
    obs = np.tile(ids[:, None], (1, OBS))
    return dict(obs=obs, action=np.full((n, ACT), 0.5, np.float32), reward=ids * 0.1,
                next_obs=obs + 1,
                terminated=np.zeros(n, bool) if terminated is None else terminated,
                truncated=np.zeros(n, bool) if truncated is None else truncated,
                source=np.broadcast_to(np.asarray(source, np.uint8), (n,)).copy(),
                policy_version=np.arange(n, dtype=np.int64), timestamp=ids.astype(np.float64))


def two_sided(n_off=300, n_on=500, **kw):
    """Offline side spread over all three offline sources, then online rows."""
    m = ReplayMirror(OBS, ACT, **kw)
    m.add_rows(rows(range(n_off), np.array(OFFLINE_SIDE_CODES)[np.arange(n_off) % 3]))
    m.add_rows(rows(range(n_off, n_off + n_on), ONLINE))
    return m


def is_offline(batch):
    return np.isin(batch["source"], OFFLINE_SIDE_CODES)


def test_big_batch_every_minibatch_is_128_128_interleaved():
    m = two_sided()
    b = m.sample_big_batch(256, 20, 0.5, np.random.default_rng(0))
    assert len(b["index"]) == 5120
    mbs = split_minibatches(b, 20)
    assert len(mbs) == 20
    for mb in mbs:
        assert is_offline(mb).sum() == 128 and (mb["source"] == ONLINE).sum() == 128
    off = is_offline(b)
    assert off[0::2].all() and not off[1::2].any()      # RLPD's interleave
    assert set(np.unique(b["source"][0::2])) == set(OFFLINE_SIDE_CODES)


@pytest.mark.parametrize("n,ratio,k", [(256, 0.25, 64), (255, 0.5, 128), (256, 0.1, 26)])
def test_big_batch_other_ratios_exact_per_minibatch(n, ratio, k):
    m = two_sided()
    b = m.sample_big_batch(n, 7, ratio, np.random.default_rng(1))
    assert [int(is_offline(mb).sum()) for mb in split_minibatches(b, 7)] == [k] * 7
    # the batch is a gather of its own indices: the fields match the rows they name
    np.testing.assert_array_equal(b["obs"], m.gather(b["index"])["obs"])


def test_big_batch_ratio_0_and_1_use_one_side_even_if_the_other_is_empty():
    only_on = ReplayMirror(OBS, ACT)
    only_on.add_rows(rows(range(50), ONLINE))
    assert (only_on.sample_big_batch(16, 4, 0.0, np.random.default_rng(0))["source"]
            == ONLINE).all()
    only_off = ReplayMirror(OBS, ACT)
    only_off.add_rows(rows(range(50), DEMO))
    assert (only_off.sample_big_batch(16, 4, 1.0, np.random.default_rng(0))["source"]
            == DEMO).all()
    with pytest.raises(ValueError, match="online side is empty"):
        only_off.sample_big_batch(16, 4, 0.5, np.random.default_rng(0))


def test_sample_mixed_exact_count_and_empty_side_raises():
    m = two_sided()
    rng = np.random.default_rng(2)
    for n, ratio in [(256, 0.5), (100, 0.3), (7, 0.5), (10, 0.0), (10, 1.0)]:
        b = m.sample_mixed(n, ratio, rng)
        assert len(b["index"]) == n and is_offline(b).sum() == offline_count(n, ratio)
    empty_on = ReplayMirror(OBS, ACT)
    empty_on.add_rows(rows(range(10), INTERVENTION))
    with pytest.raises(ValueError, match="online side is empty"):
        empty_on.sample_mixed(8, 0.5, rng)
    assert is_offline(empty_on.sample_mixed(8, 1.0, rng)).all()
    with pytest.raises(ValueError, match="offline_ratio"):
        m.sample_mixed(8, 1.5, rng)


def test_uniform_sampling_covers_both_sides_in_proportion():
    m = two_sided(n_off=300, n_on=700)
    b = m.sample_uniform(20000, np.random.default_rng(3))
    assert abs(is_offline(b).mean() - 0.3) < 0.02


def test_gather_round_trip_and_growth_past_initial_capacity():
    m = ReplayMirror(OBS, ACT, initial_capacity=8)
    blocks = [rows(range(i, i + 7), [DEMO, ONLINE][i % 2]) for i in range(0, 70, 7)]
    for blk in blocks:
        m.add_rows(blk)
    m.add(obs=np.full(OBS, 70.0), action=np.zeros(ACT), reward=1.0, next_obs=np.zeros(OBS),
          terminated=True, source="intervention", timestamp=0.0)
    assert len(m) == 71 and m.sizes() == {"demo": 35, "online": 35, "intervention": 1,
                                          "offline": 0}
    assert m.size("offline") == 36 and m.size("online") == 35 and m.size("intervention") == 1
    got = m.gather(np.arange(70))
    for field in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "source",
                  "policy_version"):
        want = np.concatenate([blk[field] for blk in blocks])
        np.testing.assert_array_equal(got[field], want, err_msg=field)
        assert got[field].dtype == m.gather([0])[field].dtype
    assert got["obs"].dtype == np.float32 and got["mask"].dtype == np.float32
    last = m.gather([70])
    assert last["obs"][0, 0] == 70 and last["mask"][0] == 0 and last["source"][0] == INTERVENTION
    with pytest.raises(IndexError):
        m.gather([71])


def test_mask_is_one_minus_terminated_and_truncation_keeps_it():
    m = ReplayMirror(OBS, ACT)
    term = np.array([False, True, False, True])
    trunc = np.array([False, False, True, True])
    m.add_rows(rows(range(4), ONLINE, terminated=term, truncated=trunc))
    b = m.gather(np.arange(4))
    np.testing.assert_array_equal(b["mask"], [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(b["truncated"], trunc)


def test_online_fifo_evicts_oldest_online_rows_and_keeps_offline_rows():
    m = ReplayMirror(OBS, ACT, online_capacity=10, initial_capacity=4)
    m.add_rows(rows(range(5), DEMO))
    next_id, online_ids, offline_ids = 5, [], list(range(5))
    for size in (3, 4, 12, 1, 6, 2):                   # 12 > capacity within one block
        m.add_rows(rows(range(next_id, next_id + size), ONLINE))
        online_ids += range(next_id, next_id + size)
        next_id += size
        m.add_rows(rows([next_id], OFFLINE))             # offline rows keep arriving
        offline_ids.append(next_id)
        next_id += 1
    assert m.size("online") == 10 and m.size("offline") == len(offline_ids)
    assert len(m) == 10 + len(offline_ids)
    ids = m.gather(np.arange(len(m)))["obs"][:, 0]
    assert set(ids) == set(offline_ids) | set(online_ids[-10:])
    rng = np.random.default_rng(4)
    on = m.sample_mixed(2000, 0.0, rng)["obs"][:, 0]
    assert set(on) == set(online_ids[-10:])
    off = m.sample_mixed(2000, 1.0, rng)["obs"][:, 0]
    assert set(off) == set(offline_ids)


def test_recent_window_only_draws_the_newest_online_rows():
    m = ReplayMirror(OBS, ACT, online_capacity=50)
    m.add_rows(rows(range(1000, 1010), DEMO))
    for start in range(0, 130, 13):                     # wraps the ring several times
        m.add_rows(rows(range(start, start + 13), ONLINE))
    newest = set(range(130 - 20, 130))
    b = m.sample_recent(4000, 20, np.random.default_rng(5))
    assert set(b["obs"][:, 0]) == newest                # all of the window, nothing else
    assert (b["source"] == ONLINE).all()
    np.testing.assert_array_equal(m.gather(m.recent_slots(20))["obs"][:, 0], sorted(newest))
    whole = m.sample_recent(4000, 10_000, np.random.default_rng(6))   # window > size: all 50
    assert set(whole["obs"][:, 0]) == set(range(80, 130))
    with pytest.raises(ValueError):
        ReplayMirror(OBS, ACT).sample_recent(4, 10, np.random.default_rng(0))


def test_split_minibatches_are_contiguous_views():
    m = two_sided()
    b = m.sample_big_batch(8, 3, 0.5, np.random.default_rng(7))
    mbs = split_minibatches(b, 3)
    np.testing.assert_array_equal(mbs[1]["index"], b["index"][8:16])
    assert np.shares_memory(mbs[2]["obs"], b["obs"])
    with pytest.raises(ValueError):
        split_minibatches(b, 5)


def test_bad_rows_are_rejected_and_nothing_is_added():
    m = ReplayMirror(OBS, ACT)
    bad = rows(range(3), ONLINE)
    bad["obs"] = bad["obs"][:, :3]
    with pytest.raises(ValueError, match="obs"):
        m.add_rows(bad)
    nan = rows(range(3), ONLINE)
    nan["reward"][1] = np.nan
    with pytest.raises(ValueError, match="reward"):
        m.add_rows(nan)
    assert len(m) == 0 and m.size("online") == 0


def test_store_rows_added_with_unit_actions_mirror_exactly_those_rows():
    """What every caller does with a store's rows: actions to [-1, 1], then `add_rows` by block."""
    low, high = np.array([-2.0, 0.0]), np.array([2.0, 10.0])
    scaler = ActionScaler(low, high)
    blocks = [rows(range(40), DEMO), rows(range(40, 100), ONLINE), rows(range(100, 125), INTERVENTION)]
    m = ReplayMirror(OBS, ACT, online_capacity=1000, initial_capacity=16)
    for block in blocks:
        physical = np.stack([np.linspace(-2, 2, len(block["obs"])),
                             np.linspace(0, 10, len(block["obs"]))], 1).astype(np.float32)
        m.add_rows({**block, "action": scaler.to_unit(physical)})
    assert len(m) == 125 and m.size("demo") == 40 and m.size("online") == 60
    assert m.size("intervention") == 25
    got = m.gather(np.arange(125))
    np.testing.assert_array_equal(got["obs"][:, 0], np.arange(125))
    np.testing.assert_allclose(got["action"][:40, 0], np.linspace(-1, 1, 40), atol=2e-5)  # clip 1-1e-5
    np.testing.assert_allclose(got["action"][:40, 1], np.linspace(-1, 1, 40), atol=2e-5)
    assert np.abs(got["action"]).max() <= 1.0      # control: physical actions reach 10


def test_priority_frequencies_follow_priorities():
    m = ReplayMirror(OBS, ACT, initial_capacity=2)
    m.add_rows(rows(range(6), DEMO))
    m.add_rows(rows(range(6, 11), ONLINE))             # 11 rows: padding leaves in the tree
    ps = PrioritySampler(m)
    prio = np.arange(1, 12, dtype=np.float64)
    ps.update(np.arange(11), prio)
    assert ps.total == pytest.approx(prio.sum())
    n = 200_000
    counts = np.bincount(ps.sample(n, np.random.default_rng(8)), minlength=11)
    assert len(counts) == 11                            # never a padding leaf
    expected = n * prio / prio.sum()
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 35.0                                  # df = 10; p(chi2 > 35) ~ 1e-4
    uniform = np.full(11, n / 11)                       # negative control: not uniform
    assert ((counts - uniform) ** 2 / uniform).sum() > 1000


def test_priority_new_rows_get_running_max_and_updates_are_clipped():
    m = ReplayMirror(OBS, ACT, online_capacity=4, initial_capacity=2)
    m.add_rows(rows(range(3), DEMO))
    ps = PrioritySampler(m)
    np.testing.assert_array_equal(ps.priorities(np.arange(3)), [1.0, 1.0, 1.0])
    ps.update(np.array([0, 1, 2]), np.array([1e6, 0.0, 7.0]))
    np.testing.assert_array_equal(ps.priorities(np.arange(3)), [1000.0, 0.001, 7.0])
    assert ps.max_priority == 1000.0
    ps.update(np.array([0]), np.array([2.0]))           # the running max does not go down
    m.add_rows(rows(range(3, 9), ONLINE))               # 6 online rows into a FIFO of 4
    assert len(m) == 7
    np.testing.assert_array_equal(ps.priorities(np.arange(3, 7)), [1000.0] * 4)
    ps.update(np.arange(3, 7), np.ones(4))
    m.add_rows(rows([9], ONLINE))                       # reuses the oldest online slot
    reused = int(m.recent_slots(1)[0])
    assert ps.priorities([reused])[0] == 1000.0
    assert ps.total == pytest.approx(2.0 + 0.001 + 7.0 + 3 * 1.0 + 1000.0)
    with pytest.raises(ValueError):
        ps.update(np.array([1]), np.array([np.nan]))
    with pytest.raises(IndexError):
        ps.update(np.array([7]), np.array([1.0]))
