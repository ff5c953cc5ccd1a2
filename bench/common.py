"""What every bench script shares: the timing rule, timing percentiles, a call in its own spawned process, the
export of the artifacts under test, the test images, per-round speed ratios and the three model options."""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from pathlib import Path

import click
import numpy as np


def time_runs(fn, min_runs: int, max_time: float) -> list[float]:
    """Seconds per call of ``fn()``: at least 3 calls, then until ``min_runs`` calls or ``max_time`` seconds,
    whichever comes first (the timing rule of every bench script)."""
    ts: list[float] = []
    start = time.perf_counter()
    while len(ts) < 3 or (len(ts) < min_runs and time.perf_counter() - start < max_time):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return ts


def percentiles(ts: list[float]) -> dict:
    """A bench cell's timing: ``vaegan.util.percentiles`` of ``ts`` (seconds) under the bench's keys."""
    from vaegan.util import percentiles as latency_percentiles

    s = latency_percentiles(ts)
    return {"p50_ms": s["p50"], "p90_ms": s["p90"], "p99_ms": s["p99"], "mean_ms": s["mean"], "runs": s["n"]}


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: per address space, reset by exec -- unlike ru_maxrss, which a
    spawned child inherits from its parent on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _spawned(conn, fn, args):
    try:
        conn.send(("ok", fn(*args)))
    except Exception as e:  # noqa: BLE001 - reported by the caller, the other backends / variants still run
        import traceback

        conn.send(("error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                   traceback.format_exc()))
    finally:
        conn.close()


def call_isolated(fn, *args) -> tuple:
    """``fn(*args)`` in a fresh spawned process (its own thread pools and peak RSS): ("ok", result) or
    ("error", one-line reason, traceback). ``fn`` must be a module-level function (pickled by name)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_spawned, args=(child, fn, args))
    p.start()
    child.close()
    try:
        msg = parent.recv()
    except EOFError:
        msg = ("error", f"process died (exit code {p.exitcode})", "")
    p.join()
    return msg


def export_if_needed(checkpoint, classifier, artifacts, echo) -> Path:
    artifacts = Path(artifacts)
    if not (artifacts / "manifest.json").exists():
        from vaegan.export import export_all

        echo(f"exporting {checkpoint} to {artifacts} ...")
        export_all(checkpoint, classifier, artifacts, echo=lambda *_: None)
    return artifacts


def load_images(n: int, contract=None) -> tuple[np.ndarray, str]:
    """``n`` images of the artifacts' image contract: Fashion-MNIST's test images for its contract, else uniform
    random images (the purifier's cost does not depend on the pixels)."""
    from vaegan.export.core import _images
    from vaegan.runtime.contract import FASHION_MNIST

    if contract is None or contract == FASHION_MNIST:  # its test images, or the data-root error
        from vaegan.train.data import test_subset

        return np.ascontiguousarray(test_subset(n)[0].numpy().astype(np.float32)), \
            f"Fashion-MNIST test images 0..{n - 1}"
    x, source = _images(n, contract)
    return np.ascontiguousarray(x.numpy().astype(np.float32)), f"{source} 0..{n - 1}"


def round_ratios(ref: dict, cell: dict) -> list[float] | None:
    """``ref``'s p50 over ``cell``'s, round r over round r (``p50_rounds_ms``; a cell without it counts as one
    round); None when their round counts differ: a round that did not time one of them would break the pairing."""
    a, b = ref.get("p50_rounds_ms", [ref["p50_ms"]]), cell.get("p50_rounds_ms", [cell["p50_ms"]])
    return [x / y for x, y in zip(a, b)] if len(a) == len(b) else None


def format_rounds(per: list[float] | None) -> str:
    """Per-round speed ratios as ``median (min-max)``, one round as itself, none as ``-``."""
    if not per:
        return "-"
    return f"{np.median(per):.2f}x ({min(per):.2f}-{max(per):.2f})" if len(per) > 1 else f"{per[0]:.2f}x"


def model_options(f):
    """``--checkpoint``, ``--classifier`` and ``--artifacts``: the weights a bench script runs, the same three options
    in every script (``latency``, ``levers``, ``precision``)."""
    for opt in reversed([
        click.option("--checkpoint", type=click.Path(dir_okay=False), default="models/vaegan.pt", show_default=True),
        click.option("--classifier", type=click.Path(dir_okay=False), default="models/classifier.pt",
                     show_default=True),
        click.option("--artifacts", type=click.Path(file_okay=False), default="artifacts", show_default=True,
                     help="exported artifacts (exported from --checkpoint/--classifier if the folder has no manifest)"),
    ]):
        f = opt(f)
    return f
