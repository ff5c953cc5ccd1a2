"""examples/opencv_loop.py and examples/numpy_frames.py run as a user runs them, on a small video this test writes
(and on the same frames as a numpy stack): the same labels from both, and an annotated video with every frame."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _example(name: str, *args) -> list[dict]:
    p = subprocess.run([sys.executable, str(ROOT / "examples" / name), *map(str, args)], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return [json.loads(line) for line in p.stdout.splitlines()]


def test_examples_on_a_written_video(tiny_artifacts, tmp_path):
    cv2 = pytest.importorskip("cv2", reason="OpenCV is the optional [video] extra (make test installs it)")
    from vaegan.train.data import test_subset

    x, _, _ = test_subset(6)
    gray = (x.numpy()[:, 0] * 255).round().astype(np.uint8)
    rgb = np.stack([np.stack([g, g // 2 + 60, 255 - g], -1) for g in gray])       # N x 28 x 28 x 3
    rgb = np.ascontiguousarray(rgb.repeat(2, axis=1).repeat(2, axis=2))           # 56 x 56: the resize path
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"FFV1"), 10, (56, 56))  # lossless
    assert writer.isOpened(), "this OpenCV build cannot write FFV1"
    for f in rgb:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    np.save(tmp_path / "frames.npy", rgb)

    out = tmp_path / "annotated.avi"
    loop = _example("opencv_loop.py", "--artifacts", tiny_artifacts, "--input", video, "--out", out, "--batch", 4,
                    "--threads", 1)
    arrays = _example("numpy_frames.py", "--artifacts", tiny_artifacts, "--frames", tmp_path / "frames.npy",
                      "--threads", 1)
    assert [r["frame"] for r in loop] == list(range(6)) and len(arrays) == 6
    assert [r["class_id"] for r in loop] == [r["class_id"] for r in arrays]
    np.testing.assert_allclose([r["loss"] for r in loop], [r["loss"] for r in arrays], rtol=1e-5)
    assert all(0 < r["confidence"] <= 1 and r["class_name"] for r in loop)

    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    assert len(frames) == 6 and frames[0].shape == (56, 112, 3)  # the frame beside its purified version
