"""Run directory logging: metrics.jsonl, TensorBoard scalars, the final learning-curve PNG, and
the progress display of long loops."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

# Seconds between plain progress lines when the stream is not a terminal (nohup, a pipe, a log
# file): often enough to see a run is alive, rare enough that a day-long run logs ~1 MB.
PLAIN_PROGRESS_EVERY_S = 10.0


class Progress:
    """Progress over `total` steps on `stream` (default stderr, tqdm's).

    On a terminal: a tqdm bar. Elsewhere: one plain line every `every_s` seconds and one at
    `close()`, because a bar redraws itself with carriage returns that a log file keeps (~500
    KB per run under nohup). `enabled=False` shows nothing.
    """

    def __init__(self, total: int, start: int = 0, *, desc: str, unit: str = "step",
                 enabled: bool = True, stream=None, every_s: float = PLAIN_PROGRESS_EVERY_S):
        self.total, self.n, self.desc, self.unit, self.every_s = total, start, desc, unit, every_s
        self.stream = sys.stderr if stream is None else stream
        self.enabled, self.postfix, self.bar = enabled, {}, None
        self._start_n, self._t0 = start, time.monotonic()
        self._last = self._t0
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit=unit, dynamic_ncols=True, desc=desc,
                            file=self.stream)

    def update(self, postfix: dict | None = None) -> None:
        """One step done; `postfix` (name -> value) is shown beside the count."""
        self.n += 1
        if postfix:
            self.postfix = postfix
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
        elif self.enabled and time.monotonic() - self._last >= self.every_s:
            self._line()

    def _line(self) -> None:
        now = time.monotonic()
        self._last = now
        rate = (self.n - self._start_n) / max(now - self._t0, 1e-9)
        extra = "".join(f", {k} {_short(v)}" for k, v in self.postfix.items())
        print(f"{self.desc} {self.n}/{self.total} {self.unit}s ({rate:.1f}/s{extra})",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line()


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class RunLogger:
    """Append-only metrics for one run directory.

    Every record goes to `metrics.jsonl` (one JSON object per line, with `step`, `kind` and the
    values); scalar values also go to TensorBoard under `<kind>/<name>` when tensorboard is
    importable. Records of kind "eval" drive the learning curve written by `plot_curve`.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = self.path.open("a", buffering=1)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except Exception:  # tensorboard is optional: metrics.jsonl is the record of truth
                self._tb = None

    def log(self, kind: str, step: int, values: dict) -> None:
        record = {"kind": kind, "step": int(step), "time": time.time(), **values}
        self._file.write(json.dumps(record, default=float) + "\n")
        if self._tb is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(float(value)):
                    self._tb.add_scalar(f"{kind}/{name}", float(value), int(step))

    def mark_resume(self, step: int, **values) -> None:
        """A "resume" record: the run continues from env step `step` (its last checkpoint).
        Records logged earlier with a later step belong to work the interruption lost and
        `read_metrics` leaves them out, so the curve stays continuous."""
        self.log("resume", step, values)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict]:
    """Records of `metrics.jsonl`, optionally of one kind, without those a later "resume"
    record supersedes (logged before it, at a step after the one it resumed from)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept: list[dict] = []
    for record in records:
        if record.get("kind") == "resume":
            kept = [r for r in kept if r["step"] <= record["step"]]
        kept.append(record)
    return [r for r in kept if kind is None or r.get("kind") == kind]


def plot_curve(run_dir: str | Path, out: str | Path | None = None,
               keys: tuple[str, ...] = ("success_rate", "return_mean")) -> Path | None:
    """Plot the eval records' `keys` against env steps into a PNG; None when there is no eval."""
    evals = read_metrics(run_dir, "eval")
    if not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = tuple(k for k in keys if k in evals[0])
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    steps = [r["step"] for r in evals]
    for ax, key in zip(axes[0], keys):
        ax.plot(steps, [r[key] for r in evals], marker="o")
        ax.set_xlabel("environment steps")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "learning_curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
