"""The streaming loop behind ``vaegan-run`` (library function ``run(RunOptions) -> summary dict``).

reader thread (decode + preprocess, bounded queue) -> batches of ``batch_size`` frames -> purify -> classify ->
purified PNGs (atomic) + predictions.jsonl (in input order) -> summary.json (atomic). Only one batch and the
prefetch queue are in memory at any time.
"""

from __future__ import annotations

import json
from array import array
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .artifacts import load_artifacts
from .defense import Defense
from .io import Frame, Prefetcher, from_model_output, open_source
from .policy import BackendOptions

PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"
PURIFIED = "purified"


@dataclass
class RunOptions:
    input: str
    artifacts: str = "artifacts"
    out: str = "out"
    backend: str = "auto"
    options: BackendOptions = field(default_factory=BackendOptions)  # providers, threads, shard, fast path, ...
    batch_size: int = 16
    steps: int | None = None
    eta: float | None = None
    lam: float | None = None
    momentum: float | None = None
    restarts: int | None = None
    classify: bool = True
    save_purified: bool = True
    resume: bool = False
    recursive: bool = False
    max_frames: int | None = None
    prefetch: int = 64
    quiet: bool = False


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_png_atomic(path: Path, x: np.ndarray) -> None:
    import io as _io

    buf = _io.BytesIO()
    from_model_output(x).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def read_recorded(pred_path: Path) -> tuple[set[str], dict]:
    """Sources already in predictions.jsonl, and counts by status. A trailing partial line (crash mid-write) is
    dropped by rewriting the file atomically without it; a malformed line elsewhere is an error."""
    from .errors import RuntimeUsageError

    if not pred_path.exists():
        return set(), {"ok": 0, "error": 0}
    raw = pred_path.read_bytes()
    lines = raw.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    seen, counts = set(), {"ok": 0, "error": 0}
    for i, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            seen.add(rec["source"])
            counts[rec.get("status", "error")] = counts.get(rec.get("status", "error"), 0) + 1
        except (json.JSONDecodeError, KeyError, TypeError):
            raise RuntimeUsageError(f"{pred_path}:{i}: not a predictions record; cannot --resume from it "
                                    f"(move it away to start over)") from None
    if tail.strip():
        atomic_write_bytes(pred_path, b"".join(l + b"\n" for l in complete if l.strip()))
    return seen, counts


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "n": 0}
    a = np.asarray(values, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": round(float(p50), 4), "p90": round(float(p90), 4), "p99": round(float(p99), 4),
            "mean": round(float(a.mean()), 4), "n": int(a.size)}


class _Stats:
    """Latencies in compact ``array('d')`` buffers: 8 bytes per value (240 kB for 10,000 frames)."""

    def __init__(self):
        self.batch, self.frame, self.e2e = array("d"), array("d"), array("d")

    def add(self, batch_s: float, n: int, e2e: list[float]) -> None:
        self.batch.append(batch_s)
        self.frame.extend([batch_s / n] * n)
        self.e2e.extend(e2e)


def run(opts: RunOptions) -> dict:
    from .errors import RuntimeUsageError

    arts = load_artifacts(opts.artifacts)
    defense = Defense.load(arts, opts.backend, options=opts.options, classify=opts.classify, steps=opts.steps,
                           eta=opts.eta, lam=opts.lam, momentum=opts.momentum, restarts=opts.restarts)
    with defense:  # closes it when anything in _run fails before its own `with`
        return _run(opts, arts, defense)


def _run(opts: RunOptions, arts, defense: Defense) -> dict:
    from .errors import RuntimeUsageError

    out = Path(opts.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RuntimeUsageError(f"{out}: cannot create the output folder ({e})") from None
    pred_path = out / PREDICTIONS
    if opts.resume:
        seen, prev = read_recorded(pred_path)
    else:
        seen, prev = set(), {"ok": 0, "error": 0}
        atomic_write_bytes(pred_path, b"")
    source = open_source(opts.input, arts.preprocess, recursive=opts.recursive, exclude=out,
                         max_frames=opts.max_frames)

    from tqdm import tqdm

    stats = _Stats()
    counts = {"ok": 0, "error": 0, "skipped": 0}
    t_start = time.perf_counter()
    compute_s = 0.0

    def flush(pending: list[Frame], pred_file, bar) -> None:
        nonlocal compute_s
        ok = [f for f in pending if f.error is None]
        results = {}
        if ok:
            x = np.stack([f.array for f in ok])
            t0 = time.perf_counter()
            res = defense(x) if opts.classify else defense.purify(x)
            dt = time.perf_counter() - t0
            compute_s += dt
            for j, f in enumerate(ok):
                rec = {"source": f.source, "status": "ok", "loss": round(float(res.loss[j]), 6)}
                if opts.classify:
                    rec.update(class_id=int(res.labels[j]), class_name=res.class_names[j],
                               confidence=round(float(res.confidence[j]), 6))
                if opts.save_purified:
                    save_png_atomic(out / PURIFIED / f.relname, res.purified[j])
                    rec["purified"] = f"{PURIFIED}/{f.relname}"
                results[id(f)] = rec
            t_done = time.perf_counter()
            stats.add(dt, len(ok), [t_done - f.t_ready for f in ok])
        lines = []
        for f in pending:
            if f.error is None:
                lines.append(results[id(f)])
                counts["ok"] += 1
            else:
                lines.append({"source": f.source, "status": "error", "error": f.error})
                counts["error"] += 1
        pred_file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
        pred_file.flush()
        bar.update(len(pending))

    with defense:  # closed here; run() closes it too when anything above fails
        with open(pred_path, "a", encoding="utf-8") as pred_file, \
                tqdm(total=source.total, unit="frame", file=sys.stderr, disable=opts.quiet,
                     dynamic_ncols=True) as bar, Prefetcher(source, depth=opts.prefetch) as frames:
            pending: list[Frame] = []
            n_ok = 0
            for frame in frames:
                if frame.source in seen:
                    counts["skipped"] += 1
                    bar.update(1)
                    continue
                pending.append(frame)
                n_ok += frame.error is None
                if n_ok >= opts.batch_size or (source.live and n_ok and not frames.waiting()):
                    flush(pending, pred_file, bar)
                    pending, n_ok = [], 0
            if pending:
                flush(pending, pred_file, bar)
    wall = time.perf_counter() - t_start

    summary = {
        "frames": counts["ok"] + counts["error"],
        "ok": counts["ok"],
        "errors": counts["error"],
        "skipped": counts["skipped"],
        "previously_recorded": prev,
        "backend": defense.backend,
        "providers": opts.options.providers if defense.backend != "trt" else "tensorrt-engine",
        "batch_size": opts.batch_size,
        "batches": len(stats.batch),
        "purify": defense.describe(),
        "classify": opts.classify,
        "wall_s": round(wall, 4),
        "compute_s": round(compute_s, 4),
        "throughput_fps": round(counts["ok"] / wall, 3) if wall > 0 else 0.0,
        "compute_throughput_fps": round(counts["ok"] / compute_s, 3) if compute_s > 0 else 0.0,
        "latency_ms": {
            "per_batch": percentiles(stats.batch),
            "per_frame": percentiles(stats.frame),
            "frame_end_to_end": percentiles(stats.e2e),
        },
        "latency_notes": "per_batch: purify+classify wall time of one batch; per_frame: per_batch / frames in the "
                         "batch; frame_end_to_end: from a frame's decode to its result being written",
        "input": opts.input,
        "artifacts": str(arts.root),
    }
    atomic_write_bytes(out / SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())
    return summary

