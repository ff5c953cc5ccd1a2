"""Helpers more than one package needs, torch-free (the runtime imports them too): a file's sha256 and latency
percentiles."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB chunks (checkpoints and graphs in manifests)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def percentiles(seconds, digits: int | None = None) -> dict:
    """Latencies given in seconds -> ``{"p50", "p90", "p99", "mean"}`` in milliseconds and their count ``"n"``
    (numpy's linear-interpolation percentiles); every value None when there are none. ``digits``: round to that
    many decimals."""
    import numpy as np

    a = np.asarray(seconds, dtype=np.float64) * 1e3
    if not a.size:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "n": 0}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    out = {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean())}
    if digits is not None:
        out = {k: round(v, digits) for k, v in out.items()}
    return {**out, "n": int(a.size)}
