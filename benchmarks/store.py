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

Camera cases (schema v2, `--camera-frames F`, `--cameras-only` to print just these): one camera
at 64 x 64 x 3 and at 128 x 128 x 3, F rows appended per row with durability on: frames/s and
bytes per frame on disk (synthetic frames: a gradient, a moving square and +-2 noise, so the
compressor sees some but not all structure); then the ReplayMirror holding those frames: the
time to draw a 50/50 batch of 256 with 3-frame stacks (pixels and next_pixels), and its
memory per 100k frames.
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


def scene(i: int, shape: tuple) -> np.ndarray:
    """Frame i of a synthetic scene: a gradient, a square moving with i, and +-2 noise."""
    h, w, c = shape
    img = (np.add.outer(np.arange(h), np.arange(w)) * (200 // (h + w)))[..., None].repeat(c, 2)
    y, x = (i * 3) % (h - h // 4), (i * 5) % (w - w // 4)
    img[y:y + h // 4, x:x + w // 4] = (60, 180, 90)[:c]
    noise = np.random.default_rng(i).integers(-2, 3, shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def camera_case(path: Path, shape: tuple, n: int) -> list[tuple]:
    """Durable per-row appends with one camera of `shape`, then the mirror of those frames."""
    from o2o_robot.data.replay import ReplayMirror

    data = block_of(n, 0, np.random.default_rng(3))
    rows = [{f: v[i] for f, v in data.items()} for i in range(n)]
    frames = [{"cam": scene(i, shape)} for i in range(n)]
    store = TransitionStore.create(path, OBS_DIM, ACT_DIM, cameras={"cam": shape})
    t0 = time.perf_counter()
    for i, row in enumerate(rows):
        store.append(**row, frames=frames[i])
        if i % EP_LEN == EP_LEN - 1:
            store.end_episode()
    store.flush()
    rate = n / (time.perf_counter() - t0)
    store.close()
    store = TransitionStore.open(path)
    cam = store.info()["cameras"]["cam"]
    mirror = ReplayMirror(OBS_DIM, ACT_DIM, cameras={"cam": shape}, frame_stacks={"cam": 3})
    stored = store.read()
    stored["source"] = np.where(np.arange(n) < n // 2, 0, 1).astype(np.uint8)
    mirror.add_rows({**stored, "action": np.clip(stored["action"], -1, 1)},
                    frames={"cam": store.read_frames("cam")},
                    next_frames={"cam": store.read_next_frames("cam")})
    rng, times = np.random.default_rng(4), []
    for _ in range(200):
        t = time.perf_counter()
        mirror.sample_mixed(256, 0.5, rng)
        times.append(time.perf_counter() - t)
    per_frame = sum(p.nbytes for p in mirror.frames.pool.values()) / len(mirror.frames.refs)
    per_row = (mirror.frames.stack.itemsize * mirror.frames.depth + 8 * 3)   # stack, next, refs
    name = "x".join(map(str, shape))
    return [(f"camera {name}: append() per row, durable", f"{rate:,.0f} frames/s", "", None),
            (f"camera {name}: bytes/frame on disk (raw {cam['raw_bytes_per_frame']:,})",
             f"{cam['disk_bytes_per_frame']:,.0f}", "", None),
            (f"camera {name}: mirror 50/50 batch of 256, 3-frame stacks",
             f"{np.median(times) * 1e3:.2f} ms", "", None),
            (f"camera {name}: mirror memory per 100k frames",
             f"{(per_frame + per_row) * 1e5 / 2**30:.2f} GiB", "", None)]


def print_table(table: list[tuple]) -> None:
    print(f"{'measure':58s} {'value':>20s}  {'budget':18s} ok")
    for name, value, budget, ok in table:
        print(f"{name:58s} {value:>20s}  {budget:18s} {'' if ok is None else ('yes' if ok else 'NO')}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows appended per measurement")
    parser.add_argument("--dir", type=Path, default=None, help="directory for the temporary stores")
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating runs with and without checksums (medians)")
    parser.add_argument("--camera-frames", type=int, default=5000,
                        help="rows (one frame each) appended per camera case")
    parser.add_argument("--cameras-only", action="store_true", help="only the camera cases")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="o2o_store_bench_") as tmp:
        tmp = Path(tmp)
        cams = [row for shape in ((64, 64, 3), (128, 128, 3))
                for row in camera_case(tmp / f"cam_{shape[0]}", shape, args.camera_frames)]
        if args.cameras_only:
            print(f"store camera benchmark: rows={args.camera_frames:,} dir={args.dir or tempfile.gettempdir()}")
            print_table(cams)
            return
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
        *sums, *cams,
    ]
    print(f"store benchmark: obs_dim={OBS_DIM} act_dim={ACT_DIM} rows={args.rows:,} "
          f"flush_every={defaults['flush_every']} chunk_rows={defaults['chunk_rows']} "
          f"dir={args.dir or tempfile.gettempdir()}")
    print_table(table)
    print(f"big batch timed: {what}")


if __name__ == "__main__":
    main()
