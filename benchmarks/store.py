"""Transition store figures (DESIGN.md "Performance budgets": store).

    python benchmarks/store.py [--rows N] [--dir DIR] [--repeats K]

Prints, for obs_dim 17 and act_dim 6 at the default flush_every and chunk_rows:
durable append rates (the commit fsyncs the chunk files, their directories and the marker)
with append() per row and with append_rows() blocks, the commit latency, the same without fsync
for reference, and the time to draw one RLPD UTD batch (20 minibatches of 256 = 5,120 rows) from
the in-memory ReplayMirror. Use --dir to measure on the disk the stores will live on.

The cost of the chunk checksums (data/store/integrity.py): the durable append rates with and
without them (`checksums=False`), measured alternately K times in the same run (medians), and
their ratio; the checksum work itself, timed around its calls, per row and as a share of the
append time; the time to read the whole store the first time (every chunk checked) against
the same store written without checksums; and the time a writer takes to open the store (it
validates every row first).
"""
from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import numpy as np

from o2o_robot.data.schema import FIELDS, row_shape
from o2o_robot.data.store import TransitionStore

OBS_DIM, ACT_DIM, EP_LEN = 17, 6, 500


def block_of(n: int, start: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    rows = {f: rng.standard_normal((n,) + row_shape(f, OBS_DIM, ACT_DIM)).astype(dt)
            for f, (dt, _) in FIELDS.items()}
    rows["source"] = np.where((np.arange(start, start + n) // EP_LEN) % 2 == 0, 0, 1).astype(np.uint8)
    rows["terminated"][:] = False
    return rows


def per_row(path: Path, n: int, durable: bool, checksums: bool = True) -> tuple[float, float]:
    """append() one row at a time; returns rows/s including the last commit, and the CPU
    seconds the process spent meanwhile (every thread: zarr's and the fsync workers too)."""
    data = block_of(n, 0, np.random.default_rng(0))
    rows = [{f: v[i] for f, v in data.items()} for i in range(n)]
    store = TransitionStore.create(path, OBS_DIM, ACT_DIM, durable=durable, checksums=checksums)
    gc.freeze()   # the 100k prepared rows are the benchmark's, not the store's, GC burden
    t0, c0 = time.perf_counter(), time.process_time()
    for i, row in enumerate(rows):
        store.append(**row)
        if i % EP_LEN == EP_LEN - 1:
            store.end_episode()
    store.flush()
    rate, cpu = n / (time.perf_counter() - t0), time.process_time() - c0
    gc.unfreeze()
    store.close()
    return rate, cpu


def blocks(path: Path, n: int, block: int, durable: bool,
           checksums: bool = True) -> tuple[float, np.ndarray, float]:
    """append_rows() blocks of `block` rows; returns rows/s, the per-call times (s) and the
    CPU seconds the process spent."""
    rng = np.random.default_rng(1)
    data = [block_of(block, s, rng) for s in range(0, n, block)]
    store = TransitionStore.create(path, OBS_DIM, ACT_DIM, durable=durable, checksums=checksums)
    times = []
    t0, c0 = time.perf_counter(), time.process_time()
    for b in data:
        t = time.perf_counter()
        store.append_rows(b)
        store.end_episode()
        times.append(time.perf_counter() - t)
    store.flush()
    rate, cpu = len(data) * block / (time.perf_counter() - t0), time.process_time() - c0
    store.close()
    return rate, np.array(times), cpu


def checksum_cost(tmp: Path, n: int, repeats: int) -> list[tuple]:
    """Rows of the table: durable append rates with and without checksums (medians of
    `repeats` alternating runs, so both see the same machine load), their ratio, the same for
    the CPU time per row (less disturbed by other processes than the fsync-bound wall time),
    and the first full read of a store with and without them."""
    runs: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for k in range(repeats):
        for checksums in (True, False):
            for mode in ("row", "block"):
                path = tmp / f"{mode}_{checksums}_{k}"
                rate, cpu = (per_row(path, n, True, checksums) if mode == "row"
                             else blocks(path, n, 1000, True, checksums)[::2])
                runs.setdefault((mode, checksums), []).append((rate, cpu / n))
    rate = {key: float(np.median([r for r, _ in v])) for key, v in runs.items()}
    cpu = {key: float(np.median([c for _, c in v])) for key, v in runs.items()}
    reads = {}
    for checksums in (True, False):
        path = tmp / f"block_{checksums}_0"
        t = time.perf_counter()
        TransitionStore.open(path).read()
        reads[checksums] = time.perf_counter() - t
    t = time.perf_counter()
    TransitionStore.open(tmp / "block_True_0", "a").close()   # validates before it appends
    opened = time.perf_counter() - t
    table = []
    for mode, what in (("row", "append() per row"), ("block", "append_rows(1000 rows)")):
        on, off = rate[(mode, True)], rate[(mode, False)]
        table += [(f"{what}, durable, checksums", f"{on:,.0f} rows/s", f"median of {repeats}", None),
                  (f"{what}, durable, no checksums", f"{off:,.0f} rows/s", "(reference)", None),
                  ("  rate with / without checksums", f"{on / off:.3f}", "", None),
                  ("  CPU per row with / without checksums",
                   f"{cpu[(mode, True)] * 1e6:.1f} / {cpu[(mode, False)] * 1e6:.1f} us", "", None),
                  ("  CPU ratio with / without checksums",
                   f"{cpu[(mode, True)] / cpu[(mode, False)]:.3f}", "", None)]
    table += [("first read of all rows, checked", f"{reads[True] * 1e3:.1f} ms", "", None),
              ("first read of all rows, no checksums", f"{reads[False] * 1e3:.1f} ms", "(reference)", None),
              ("open for writing (validate all rows)", f"{opened / n * 1e9:.0f} ns/row", "", None)]
    return table


def checksum_share(tmp: Path, n: int) -> list[tuple]:
    """The checksum work itself (ChunkSums.record and .to_marker, timed around each call),
    per row and as a share of a durable append's wall time: a figure the machine's other
    load disturbs far less than the difference of two rates."""
    from o2o_robot.data.store.integrity import ChunkSums

    table, originals = [], {name: getattr(ChunkSums, name) for name in ("record", "to_marker")}
    for mode, what in (("row", "append()"), ("block", "append_rows(1000)")):
        spent = [0.0]

        def timed(fn):
            def call(*args, **kwargs):
                t = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    spent[0] += time.perf_counter() - t
            return call

        for name, fn in originals.items():
            setattr(ChunkSums, name, timed(fn))
        try:
            path = tmp / f"share_{mode}"
            rate = per_row(path, n, True)[0] if mode == "row" else blocks(path, n, 1000, True)[0]
        finally:
            for name, fn in originals.items():
                setattr(ChunkSums, name, fn)
        table.append((f"checksum work timed in {what}, durable",
                      f"{spent[0] / n * 1e6:.2f} us/row = {spent[0] * rate / n:.1%}", "", None))
    return table


def big_batch(path: Path) -> tuple[float, str]:
    """Median time (s) to draw a 20 x 256 RLPD batch, and what was timed."""
    rng = np.random.default_rng(2)
    try:
        from o2o_robot.data.replay import ReplayMirror
    except ImportError:
        ReplayMirror = None
    with TransitionStore.open(path, "r") as store:
        if ReplayMirror is not None:
            from o2o_robot.spaces import ActionScaler   # the mirror holds unit actions
            rows, spec = store.read(), store.spec or {}
            scaler = ActionScaler(spec.get("action_low", [-1.0] * store.act_dim),
                                  spec.get("action_high", [1.0] * store.act_dim))
            mirror = ReplayMirror(store.obs_dim, store.act_dim)
            mirror.add_rows({**rows, "action": scaler.to_unit(rows["action"])})
            draw, what = (lambda: mirror.sample_big_batch(256, 20, 0.5, rng)), "ReplayMirror.sample_big_batch"
        else:
            data = store.read()
            n = len(store)
            draw = lambda: {f: v[rng.integers(0, n, 5120)] for f, v in data.items()}   # noqa: E731
            what = "numpy fancy indexing (o2o_robot.data.replay not available)"
    times = []
    for _ in range(300):
        t = time.perf_counter()
        draw()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), what


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows appended per measurement")
    parser.add_argument("--dir", type=Path, default=None, help="directory for the temporary stores")
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating runs with and without checksums (medians)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="o2o_store_bench_") as tmp:
        tmp = Path(tmp)
        row_rate, _ = per_row(tmp / "row", args.rows, durable=True)
        block_rate, call_s, _ = blocks(tmp / "block", args.rows, 1000, durable=True)
        row_fast, _ = per_row(tmp / "row_nosync", args.rows, durable=False)
        block_fast, _, _ = blocks(tmp / "block_nosync", args.rows, 1000, durable=False)
        batch_s, what = big_batch(tmp / "block")
        sums = checksum_cost(tmp, args.rows, args.repeats) + checksum_share(tmp, args.rows)
    defaults = TransitionStore.create.__kwdefaults__
    p50, p99 = np.percentile(call_s * 1e3, [50, 99])
    table = [
        ("append() per row, durable", f"{row_rate:,.0f} rows/s", ">= 50,000 rows/s", row_rate >= 50_000),
        ("append_rows(1000 rows), durable", f"{block_rate:,.0f} rows/s", ">= 50,000 rows/s", block_rate >= 50_000),
        ("  one 1000-row call+commit p50/p99", f"{p50:.1f} / {p99:.1f} ms", "", None),
        ("append() per row, durable=False", f"{row_fast:,.0f} rows/s", "(reference)", None),
        ("append_rows(1000 rows), durable=False", f"{block_fast:,.0f} rows/s", "(reference)", None),
        ("big batch 20x256 = 5,120 rows", f"{batch_s * 1e3:.3f} ms", "<= 1 ms", batch_s <= 1e-3),
        *sums,
    ]
    print(f"store benchmark: obs_dim={OBS_DIM} act_dim={ACT_DIM} rows={args.rows:,} "
          f"flush_every={defaults['flush_every']} chunk_rows={defaults['chunk_rows']} "
          f"dir={args.dir or tempfile.gettempdir()}")
    print(f"{'measure':50s} {'value':>20s}  {'budget':18s} ok")
    for name, value, budget, ok in table:
        print(f"{name:50s} {value:>20s}  {budget:18s} {'' if ok is None else ('yes' if ok else 'NO')}")
    print(f"big batch timed: {what}")


if __name__ == "__main__":
    main()
