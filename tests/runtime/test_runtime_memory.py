"""Streaming keeps memory flat: peak RSS of a 2,000-frame run (the sample frames repeated) measured in a child
process, against a 200-frame run of the same frames.

Bounds (stated with headroom; this test runs the modular backend at T=0; the fused backend's 10,000-frame peaks are
in docs/benchmarks.md, "`vaegan-run` end to end"): the 2,000-frame peak stays below
400 MB, and at most 25 MB above the 200-frame peak
(one batch plus a 64-frame prefetch queue of 28x28 float32 frames is ~0.2 MB; what grows with the frame count
is the list of input paths and the latency arrays, ~0.3 kB/frame)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEAK_BOUND_MB = 400
GROWTH_BOUND_MB = 25

# VmHWM (peak RSS of this process image), not getrusage's ru_maxrss: Linux keeps ru_maxrss across execve, so a
# child forked from the pytest process (torch loaded) would report the parent's peak.
CHILD = """
import sys
from vaegan.runtime.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]
print('PEAK_RSS_KB', hwm, 'EXIT', code, file=sys.stderr)
"""


def repeated_frames(src: Path, dst: Path, n: int) -> Path:
    """``n`` frames named frame_000000.png..., hard links to the sample frames in turn (no disk cost)."""
    dst.mkdir(parents=True, exist_ok=True)
    frames = sorted(p for p in src.iterdir() if p.suffix in (".png", ".jpg"))
    for i in range(n):
        f = frames[i % len(frames)]
        os.link(f, dst / f"frame_{i:06d}{f.suffix}")
    return dst


def peak_rss_mb(artifacts: Path, frames: Path, out: Path, *extra: str) -> tuple[float, dict]:
    args = ["--input", str(frames), "--artifacts", str(artifacts), "--out", str(out), "--quiet", "--steps", "0",
            "--backend", "modular", "--batch-size", "64", *extra]
    p = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=300)
    line = [l for l in p.stderr.splitlines() if l.startswith("PEAK_RSS_KB")]
    assert line, p.stderr
    _, kb, _, code = line[-1].split()
    assert code == "0", p.stderr
    return int(kb) / 1024, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_memory_stays_flat_over_2000_frames(artifacts_dir, tmp_path):
    src = ROOT / "samples" / "frames"
    small, s_small = peak_rss_mb(artifacts_dir, repeated_frames(src, tmp_path / "f200", 200), tmp_path / "o200")
    big, s_big = peak_rss_mb(artifacts_dir, repeated_frames(src, tmp_path / "f2000", 2000), tmp_path / "o2000")
    print(f"peak RSS: 200 frames {small:.1f} MB, 2,000 frames {big:.1f} MB "
          f"({s_big['throughput_fps']:.0f} frames/s at T=0)")
    assert s_small["frames"] == 200 and s_big["frames"] == 2000 and s_big["errors"] == 0
    assert big < PEAK_BOUND_MB
    assert big - small < GROWTH_BOUND_MB
