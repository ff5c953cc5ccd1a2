"""``bench/api_fps.py`` on the tiny artifacts, one short round: both figures are measured and written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_api_fps_runs_both_paths(tiny_artifacts, tmp_path):
    js = tmp_path / "fps.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "api_fps.py"), "--artifacts", str(tiny_artifacts),
                        "--frames", str(ROOT / "samples" / "frames"), "--repeat", "1", "--rounds", "1",
                        "--batch-size", "8", "--json", str(js)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(js.read_text())
    n = len([f for f in (ROOT / "samples" / "frames").iterdir() if f.suffix in (".png", ".jpg")])
    assert r["frames"] == n and r["threads"] == 1 and r["purify"]["backend"] == "fused"
    assert set(r["frames_per_s"]) == {"api", "vaegan-run", "vaegan-run compute"}
    assert all(v > 0 for v in r["frames_per_s"].values())
    assert "frames/s" in p.stdout
