"""The streaming loop behind ``vaegan-run`` (library function ``run(RunOptions) -> summary dict``).

reader thread (decode + preprocess, bounded queue) -> batches of ``batch_size`` frames -> purify -> classify ->
purified PNGs (atomic) + predictions.jsonl (in input order) -> summary.json (atomic). Only one batch and the
prefetch queue are in memory at any time.

The output side (docs/reliability.md):

- ``OUT/.lock`` is held with an exclusive ``flock`` for the whole run (``lock_output``): a second run on the same
  folder is refused; the OS drops the lock when the process exits or dies, so a crash never leaves it stale.
- ``source`` is the canonical path of a file (``io.canonical_path``); ``--resume`` matches on it.
- A file name that is not valid UTF-8 (POSIX names are bytes) is decoded as Python does (``os.fsdecode``: each
  undecodable byte 0xXY becomes the lone surrogate U+DCXY) and written as the JSON escape ``\\udcXY``
  (``encode_record``); ``os.fsencode(record["source"])`` gives back the exact bytes.
- Every JSON value written is finite (``allow_nan=False``); a frame whose loss or confidence is not finite
  becomes an error record.
- A failed write (disk full, a file-size limit) is an ``OutputError`` (exit 2): predictions.jsonl is cut back to
  its last whole record (``RecordWriter``), so every record in it stays whole and ``--resume`` goes on from there.
- Files are created with mode ``0o666 & ~umask``, like any other program's.
"""

from __future__ import annotations

import fcntl
import functools
import json
import math
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
from .errors import OutputError, RuntimeUsageError
from .io import Frame, Prefetcher, canonical_path, from_model_output, open_source
from .limits import DEFAULT_MAX_PIXELS
from .policy import BackendOptions

PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"
PURIFIED = "purified"
LOCK = ".lock"


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
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are error records, never decoded (limits.py)


@functools.lru_cache(maxsize=1)
def file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open()`` gives a new file (``mkstemp`` gives 0600). Read once, before the reader
    thread starts (``os.umask`` can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_failed(path, e: OSError) -> OutputError:
    return OutputError(f"{path}: cannot write ({e.strerror or e}); the records already in {PREDICTIONS} are whole: "
                       f"free space (or fix the folder) and rerun with --resume")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a temp file and a rename (never a half-written file); mode per the umask. A
    failure is an ``OutputError``, the temp file removed."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_failed(path, e) from None
        raise


def encode_record(rec: dict) -> bytes:
    """One predictions.jsonl line: UTF-8 JSON, non-ASCII as is, a lone surrogate (an undecodable byte of a file
    name, ``os.fsdecode``) as the JSON escape ``\\udcXY`` (which ``json.loads`` reads back to the same string);
    NaN and infinity refused (``ValueError``)."""
    return (json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8", "backslashreplace")


def finite_record(rec: dict) -> dict:
    """``rec``, or an error record for its source when purification gave a non-finite loss or confidence."""
    bad = [k for k in ("loss", "confidence") if k in rec and not math.isfinite(rec[k])]
    if not bad:
        return rec
    return {"source": rec["source"], "status": "error",
            "error": "purification gave a non-finite " + ", ".join(f"{k} ({rec[k]})" for k in bad)}


class RecordWriter:
    """Appends whole records to predictions.jsonl, one ``os.write`` sequence per batch. On a failed write the file
    is cut back to where the batch began (truncating needs no free space), so it only ever holds whole records."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, file_mode())
        except OSError as e:
            raise write_failed(path, e) from None

    def write(self, records: list[dict]) -> None:
        data = memoryview(b"".join(encode_record(r) for r in records))
        start = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError as e:
            try:
                os.ftruncate(self.fd, start)
            except OSError:
                pass  # the partial line is then dropped by --resume (read_recorded)
            raise write_failed(self.path, e) from None

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def lock_output(out: Path):
    """Hold ``out/.lock`` exclusively (``flock``, released by the OS when the process ends however it ends); the
    open file is the lock: keep it, close it to release. A held lock is a ``RuntimeUsageError``."""
    path = out / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
    except OSError as e:
        raise RuntimeUsageError(f"{path}: cannot create the run's lock file ({e.strerror or e})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RuntimeUsageError(f"{out}: another vaegan-run is writing to this folder (it holds {path}); wait for "
                                f"it to finish or choose another --out") from None
    return os.fdopen(fd, "rb")


def check_folders(input_: str, out: Path) -> None:
    """Refuse an ``--out`` that is ``--input`` or contains it (the run would read its own outputs, or list nothing:
    the output folder is left out of the listing). An ``--out`` inside a folder input is fine: it is skipped."""
    src = Path(input_)
    if not (src.exists() or src.is_symlink()):
        return
    inp, dst = Path(os.path.realpath(src)), Path(os.path.realpath(out))
    if inp == dst or dst in inp.parents:
        raise RuntimeUsageError(f"--out {out} {'is' if inp == dst else 'contains'} --input {input_}: choose an "
                                f"output folder outside the input")


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


def percentiles(values) -> dict:
    """summary.json's latency record: ``vaegan.util.percentiles`` in ms, to 4 decimals."""
    from vaegan.util import percentiles as latency_percentiles

    return latency_percentiles(values, digits=4)


class _Stats:
    """Latencies in compact ``array('d')`` buffers: 8 bytes per value (240 kB for 10,000 frames)."""

    def __init__(self):
        self.batch, self.frame, self.e2e = array("d"), array("d"), array("d")

    def add(self, batch_s: float, n: int, e2e: list[float]) -> None:
        self.batch.append(batch_s)
        self.frame.extend([batch_s / n] * n)
        self.e2e.extend(e2e)


def run(opts: RunOptions) -> dict:
    out = Path(opts.out)
    check_folders(opts.input, out)
    if isinstance(opts.max_pixels, bool) or not isinstance(opts.max_pixels, int) or opts.max_pixels < 1:
        raise RuntimeUsageError(f"max_pixels must be an integer >= 1 (got {opts.max_pixels!r})")
    file_mode()
    arts = load_artifacts(opts.artifacts)
    defense = Defense.load(arts, opts.backend, options=opts.options, classify=opts.classify, steps=opts.steps,
                           eta=opts.eta, lam=opts.lam, momentum=opts.momentum, restarts=opts.restarts)
    with defense:  # closed however the run ends
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RuntimeUsageError(f"{out}: cannot create the output folder ({e})") from None
        with lock_output(out):
            return _locked_run(opts, out, arts, defense)


def _locked_run(opts: RunOptions, out: Path, arts, defense: Defense) -> dict:
    """The run proper, with ``out``'s lock held."""
    pred_path = out / PREDICTIONS
    if opts.resume:
        seen, prev = read_recorded(pred_path)
    else:
        seen, prev = set(), {"ok": 0, "error": 0}
        atomic_write_bytes(pred_path, b"")
    source = open_source(opts.input, arts.preprocess, recursive=opts.recursive, exclude=out,
                         max_frames=opts.max_frames, max_pixels=opts.max_pixels)

    from tqdm import tqdm

    stats = _Stats()
    counts = {"ok": 0, "error": 0, "skipped": 0}
    t_start = time.perf_counter()
    compute_s = 0.0

    def flush(pending: list[Frame], pred_file: RecordWriter, bar) -> None:
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
                results[id(f)] = rec = finite_record(rec)
                if opts.save_purified and rec["status"] == "ok":
                    save_png_atomic(out / PURIFIED / f.relname, res.purified[j])
                    rec["purified"] = f"{PURIFIED}/{f.relname}"
            t_done = time.perf_counter()
            stats.add(dt, len(ok), [t_done - f.t_ready for f in ok])
        lines = [results[id(f)] if f.error is None else {"source": f.source, "status": "error", "error": f.error}
                 for f in pending]
        pred_file.write(lines)
        for r in lines:
            counts[r["status"]] += 1
        bar.update(len(pending))

    with defense:  # closed here; run() closes it too when anything before this fails
        with RecordWriter(pred_path) as pred_file, \
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
    atomic_write_bytes(out / SUMMARY, (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode())
    return summary

