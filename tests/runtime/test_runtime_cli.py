"""``vaegan-run`` end to end: outputs, bad inputs (one error record each, exit 1), resume, artifact errors (exit 2),
the preprocessing path, and the torch-free import."""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vaegan.runtime.cli import main
from vaegan.runtime.errors import RuntimeUsageError
from vaegan.runtime.io import open_source, to_model_input

PRE = {"channels": 1, "height": 28, "width": 28, "layout": "NCHW", "dtype": "float32", "range": [0.0, 1.0]}


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _records(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]


def test_run_folder_writes_outputs(artifacts_dir, frames_dir, tmp_path):
    out = tmp_path / "out"
    res = _run("--input", frames_dir, "--artifacts", artifacts_dir, "--out", out, "--batch-size", "5", "--quiet",
               "--backend", "modular", "--steps", "3")
    assert res.exit_code == 0, res.output
    recs = _records(out)
    names = sorted(p.name for p in frames_dir.iterdir())
    assert [Path(r["source"]).name for r in recs] == names  # one line per input, sorted input order
    assert all(r["status"] == "ok" and 0 <= r["class_id"] < 10 and 0 < r["confidence"] <= 1 for r in recs)
    assert {r["class_name"] for r in recs} <= set(json.loads((artifacts_dir / "manifest.json").read_text())["classes"])
    assert (out / "purified" / "clean_0000_9.png.png").exists()
    assert (out / "purified" / "rgb_200x160.jpg.png").exists()
    img = Image.open(out / "purified" / "rgb_200x160.jpg.png")
    assert img.size == (28, 28) and img.mode == "L"
    s = json.loads((out / "summary.json").read_text())
    assert s["frames"] == len(names) and s["errors"] == 0 and s["backend"] == "modular" and s["batch_size"] == 5
    assert s["purify"]["steps"] == 3
    assert s["throughput_fps"] > 0
    for k in ("per_batch", "per_frame", "frame_end_to_end"):
        assert set(s["latency_ms"][k]) >= {"p50", "p90", "p99"} and s["latency_ms"][k]["p50"] > 0
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temp files


def _bad_inputs(d: Path, frames_dir: Path) -> dict[str, str]:
    """name -> expected error substring."""
    good = (frames_dir / "clean_0000_9.png").read_bytes()
    (d / "empty.png").write_bytes(b"")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "notes.txt").write_text("not an image")
    (d / "text.jpg").write_text("not a jpeg either")
    (d / "ghost.png").symlink_to(d / "does-not-exist.png")
    return {"empty.png": "empty file", "corrupt.png": "", "truncated.png": "", "notes.txt": "not an image file",
            "text.jpg": "UnidentifiedImageError", "ghost.png": "FileNotFoundError"}


def test_bad_inputs_become_error_records(artifacts_dir, frames_dir, tmp_path):
    d = tmp_path / "in"
    shutil.copytree(frames_dir, d)
    bad = _bad_inputs(d, frames_dir)
    out = tmp_path / "out"
    res = _run("--input", d, "--artifacts", artifacts_dir, "--out", out, "--quiet", "--steps", "1")
    assert res.exit_code == 1, res.output  # some inputs failed
    recs = {Path(r["source"]).name: r for r in _records(out)}
    assert len(recs) == len(list(d.iterdir()))
    for name, msg in bad.items():
        assert recs[name]["status"] == "error" and msg in recs[name]["error"], recs[name]
        assert "class_id" not in recs[name]
        assert not (out / "purified" / (name + ".png")).exists()
    assert sum(r["status"] == "ok" for r in recs.values()) == len(list(frames_dir.iterdir()))
    s = json.loads((out / "summary.json").read_text())
    assert s["errors"] == len(bad) and s["ok"] == len(list(frames_dir.iterdir()))


def test_video_input_needs_opencv_or_reports_zero_frames(artifacts_dir, tmp_path, monkeypatch):
    video = tmp_path / "empty.mp4"
    video.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "cv2", None)  # as on an install without the [video] extra
    with pytest.raises(RuntimeUsageError, match=r"needs OpenCV: pip install 'vaegan\[video\]'"):
        open_source(str(video), PRE)
    res = _run("--input", video, "--artifacts", artifacts_dir, "--out", tmp_path / "o", "--quiet")
    assert res.exit_code == 2 and "vaegan[video]" in res.output


def _write_video(path: Path, frames: list[np.ndarray], fourcc: str = "FFV1") -> None:
    cv2 = pytest.importorskip("cv2", reason="OpenCV is the optional [video] extra (make test installs it)")
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (w, h))
    assert writer.isOpened(), f"this OpenCV build cannot write {fourcc}"
    for rgb in frames:
        writer.write(np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV wants BGR
    writer.release()


def test_video_frames_match_the_same_frames_as_images(artifacts_dir, fmnist64, tmp_path):
    """A lossless (FFV1) RGB video of 8 upscaled test images gives, frame by frame, the predictions and purified
    frames of the same 8 images read as PNG files: the video path decodes to the same model input."""
    x, _ = fmnist64
    rgb = [np.repeat(np.kron((x[i, 0] * 255).round().astype(np.uint8), np.ones((2, 2), np.uint8))[..., None], 3, 2)
           for i in range(8)]
    rgb = [np.ascontiguousarray(np.stack([f[..., 0], f[..., 1] // 2 + 60, 255 - f[..., 2]], 2)) for f in rgb]
    video, folder = tmp_path / "clip.avi", tmp_path / "pngs"
    _write_video(video, rgb)
    folder.mkdir()
    for i, f in enumerate(rgb):
        Image.fromarray(f, mode="RGB").save(folder / f"frame_{i:06d}.png")
    common = ("--artifacts", artifacts_dir, "--quiet", "--steps", "2", "--batch-size", "3", "--backend", "fused")
    res_v = _run("--input", video, "--out", tmp_path / "ov", *common)
    res_f = _run("--input", folder, "--out", tmp_path / "of", *common)
    assert res_v.exit_code == 0 and res_f.exit_code == 0, res_v.output + res_f.output
    rv, rf = _records(tmp_path / "ov"), _records(tmp_path / "of")
    assert [r["source"] for r in rv] == [f"{video}#frame={i}" for i in range(8)]
    assert [r["class_id"] for r in rv] == [r["class_id"] for r in rf]
    np.testing.assert_allclose([r["confidence"] for r in rv], [r["confidence"] for r in rf], rtol=1e-6)
    for i in range(8):
        a = np.asarray(Image.open(tmp_path / "ov" / "purified" / "clip.avi" / f"frame_{i:06d}.png"))
        b = np.asarray(Image.open(tmp_path / "of" / "purified" / f"frame_{i:06d}.png.png"))
        assert a.shape == (28, 28) and np.array_equal(a, b)
    assert json.loads((tmp_path / "ov" / "summary.json").read_text())["frames"] == 8


def test_video_max_frames_stops_early(artifacts_dir, fmnist64, tmp_path):
    x, _ = fmnist64
    video = tmp_path / "clip.mkv"
    _write_video(video, [np.repeat((x[i, 0] * 255).astype(np.uint8)[..., None], 3, 2) for i in range(6)])
    res = _run("--input", video, "--artifacts", artifacts_dir, "--out", tmp_path / "o", "--quiet", "--steps", "1",
               "--max-frames", "4")
    assert res.exit_code == 0, res.output
    assert [r["source"].rsplit("#", 1)[1] for r in _records(tmp_path / "o")] == [f"frame={i}" for i in range(4)]


@pytest.mark.parametrize("content", [b"", b"RIFF" + bytes(range(256)) * 4], ids=["empty", "garbage"])
def test_unreadable_video_is_one_error_record(artifacts_dir, tmp_path, content):
    pytest.importorskip("cv2", reason="OpenCV is the optional [video] extra (make test installs it)")
    video = tmp_path / "broken.avi"
    video.write_bytes(content)
    res = _run("--input", video, "--artifacts", artifacts_dir, "--out", tmp_path / "o", "--quiet")
    assert res.exit_code == 1, res.output  # some inputs failed
    (rec,) = _records(tmp_path / "o")
    assert rec["source"] == str(video) and rec["status"] == "error"
    assert "0 frames" in rec["error"] or "cannot open" in rec["error"], rec
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["errors"] == 1


def test_missing_camera_is_one_error_record(artifacts_dir, tmp_path):
    pytest.importorskip("cv2", reason="OpenCV is the optional [video] extra (make test installs it)")
    index = next(str(i) for i in range(90, 100) if not Path(f"/dev/video{i}").exists())
    res = _run("--input", index, "--artifacts", artifacts_dir, "--out", tmp_path / "o", "--quiet")
    assert res.exit_code == 1, res.output
    (rec,) = _records(tmp_path / "o")
    assert rec["source"] == f"camera:{index}" and rec["status"] == "error", rec


def test_live_source_does_not_wait_for_a_full_batch(artifacts_dir, fmnist64, tmp_path, monkeypatch):
    """A camera delivers frames in real time: each one is purified when no other is waiting, not held until
    ``--batch-size`` frames have arrived (the run loop's policy, exercised with a source paced like a camera)."""
    import time

    from vaegan.runtime import run as run_mod
    from vaegan.runtime.io import Frame, Source

    x, _ = fmnist64

    class PacedCamera(Source):
        live = True

        def __iter__(self):
            for i in range(4):
                time.sleep(0.3)
                yield Frame(f"camera:7#frame={i}", f"camera_7/frame_{i:06d}.png", array=x[i].astype(np.float32))

    monkeypatch.setattr(run_mod, "open_source", lambda *a, **k: PacedCamera())
    res = _run("--input", "7", "--artifacts", artifacts_dir, "--out", tmp_path / "o", "--quiet", "--steps", "1",
               "--batch-size", "16")
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    # frames 0.3 s apart: typically one purify call per frame; a full-batch policy would make exactly one call
    assert s["ok"] == 4 and s["batches"] >= 2


def test_camera_index_without_opencv_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(RuntimeUsageError, match="needs OpenCV"):
        open_source("0", PRE)


def test_resume_skips_recorded_inputs(artifacts_dir, frames_dir, tmp_path):
    out = tmp_path / "out"
    first = _run("--input", str(frames_dir / "clean_000*.png"), "--artifacts", artifacts_dir, "--out", out,
                 "--quiet", "--steps", "1")
    assert first.exit_code == 0, first.output
    n_first = len(_records(out))
    assert 0 < n_first < len(list(frames_dir.iterdir()))
    with open(out / "predictions.jsonl", "a") as f:  # a crash mid-write leaves a partial last line
        f.write('{"source": "half-writ')
    res = _run("--input", frames_dir, "--artifacts", artifacts_dir, "--out", out, "--quiet", "--steps", "1",
               "--resume")
    assert res.exit_code == 0, res.output
    recs = _records(out)
    sources = [r["source"] for r in recs]
    assert len(sources) == len(set(sources)) == len(list(frames_dir.iterdir()))
    s = json.loads((out / "summary.json").read_text())
    assert s["skipped"] == n_first and s["frames"] == len(sources) - n_first
    # without --resume the file starts over
    res = _run("--input", str(frames_dir / "clean_0001*.png"), "--artifacts", artifacts_dir, "--out", out,
               "--quiet", "--steps", "1")
    assert res.exit_code == 0 and len(_records(out)) == 1


def test_missing_or_corrupt_artifacts_exit_2_with_one_line(artifacts_copy, frames_dir, tmp_path):
    res = _run("--input", frames_dir, "--artifacts", tmp_path / "nope", "--out", tmp_path / "o")
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0
    assert "artifacts directory not found" in res.output and "vaegan-export --out" in res.output

    data = bytearray((artifacts_copy / "purify.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (artifacts_copy / "purify.onnx").write_bytes(bytes(data))
    res = _run("--input", frames_dir, "--artifacts", artifacts_copy, "--out", tmp_path / "o", "--backend", "fused")
    assert res.exit_code == 2 and "purify.onnx: sha256" in res.output and "vaegan-export --out" in res.output


def test_bad_input_path_and_provider_exit_2(artifacts_dir, tmp_path):
    res = _run("--input", tmp_path / "missing", "--artifacts", artifacts_dir, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "no such file, folder, glob match or camera index" in res.output
    res = _run("--input", tmp_path, "--artifacts", artifacts_dir, "--out", tmp_path / "o", "--providers", "cuda")
    assert res.exit_code == 2 and "not available" in res.output and re.search(r"available: .*cpu", res.output)


def test_preprocessing_one_place():
    a = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    x = to_model_input(Image.fromarray(a, "L"), PRE)
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], a / np.float32(255))  # 28x28 grayscale: exact, no resampling
    rgb = Image.new("RGB", (200, 160), (255, 0, 0))
    x = to_model_input(rgb, PRE)
    np.testing.assert_allclose(x, round(0.299 * 255) / 255, atol=1 / 255)  # ITU-R 601-2 luma
    for img in (Image.new("RGBA", (50, 30), (10, 20, 30, 0)), Image.new("P", (7, 9)), Image.new("1", (40, 40), 1),
                Image.new("CMYK", (31, 29)), Image.fromarray(np.full((30, 30), 65535, np.uint16))):
        x = to_model_input(img, PRE)
        assert x.shape == (1, 28, 28) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert to_model_input(Image.fromarray(np.full((30, 30), 65535, np.uint16)), PRE).min() == 1.0


def test_import_is_torch_free(artifacts_dir, frames_dir, tmp_path):
    """Importing torch raises in the child; the runtime still purifies frames end to end (both CPU backends, the
    fused one on its fast path, which unrolls the Loop with onnx)."""
    for backend in ("modular", "fused"):
        code = (
            "import sys; sys.modules['torch'] = None\n"
            "from vaegan.runtime.cli import main\n"
            f"main(['--input', {str(frames_dir)!r}, '--artifacts', {str(artifacts_dir)!r}, '--out', "
            f"{str(tmp_path / backend)!r}, '--quiet', '--steps', '2', '--backend', {backend!r}])\n"
        )
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "fused" / "summary.json").read_text())["purify"]["fast_path"]
    p = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None\n"
                        "import vaegan.runtime, vaegan.runtime.purify, vaegan.runtime.io, vaegan.runtime.run, "
                        "vaegan.runtime.backend.trt, vaegan.runtime.backend.openvino, vaegan.runtime.backend.onnxrt.unroll\n"
                        "import torch"], capture_output=True, text=True)
    assert p.returncode == 1 and "import of torch halted" in p.stderr  # the trick works: torch really is blocked
    for backend in ("modular", "fused"):
        assert len(_records(tmp_path / backend)) == len(list(frames_dir.iterdir()))


def test_fast_path_engine_without_openvino(artifacts_dir, frames_dir, tmp_path):
    """With OpenVINO not importable: the default engine falls back to onnxruntime; an explicit
    --fast-path-engine openvino is a one-line error with the install hint, exit code 2."""
    codes = {}
    for engine in ("auto", "openvino"):
        code = ("import sys; sys.modules['openvino'] = None\n"
                "from vaegan.runtime.cli import main\n"
                f"main(['--input', {str(frames_dir)!r}, '--artifacts', {str(artifacts_dir)!r}, '--out', "
                f"{str(tmp_path / engine)!r}, '--quiet', '--steps', '1', '--backend', 'fused', "
                f"'--fast-path-engine', {engine!r}])\n")
        codes[engine] = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert codes["auto"].returncode == 0, codes["auto"].stderr
    assert json.loads((tmp_path / "auto" / "summary.json").read_text())["purify"]["fast_path_engine"] == "onnxruntime"
    err = codes["openvino"].stderr
    assert codes["openvino"].returncode == 2 and "Traceback" not in err
    assert "fast path engine 'openvino' is not usable: OpenVINO is not installed" in err
    assert "pip install 'vaegan[openvino]'" in err


def test_shard_and_fast_path_flags_same_outputs(artifacts_dir, frames_dir, tmp_path):
    """--shard (batch split over one-thread sessions) and --no-shard, --fast-path (the Loop unrolled at T, the CPU
    default) on each --fast-path-engine, and --no-fast-path give the same labels and purified frames."""
    from vaegan.runtime.purify import resolve_fast_path_engine

    common = ("--input", frames_dir, "--artifacts", artifacts_dir, "--quiet", "--steps", "2", "--batch-size", "5",
              "--backend", "fused", "--threads", "2")
    runs = {"s": ("--shard",), "n": ("--no-shard",), "f": ("--no-fast-path",),
            "o": ("--fast-path-engine", "onnxruntime")}
    for name, flags in runs.items():
        res = _run(*common, "--out", tmp_path / name, *flags)
        assert res.exit_code == 0, res.output
    summ = {k: json.loads((tmp_path / k / "summary.json").read_text())["purify"] for k in runs}
    assert summ["s"]["shards"] == 2 and summ["n"]["shards"] == 1
    assert summ["s"]["fast_path"] and summ["n"]["fast_path"] and summ["f"]["fast_path"] is None
    assert summ["s"]["fast_path_engine"] == resolve_fast_path_engine("auto") and summ["f"]["fast_path_engine"] is None
    assert summ["o"]["fast_path_engine"] == "onnxruntime"
    rs = _records(tmp_path / "s")
    for k in ("n", "f", "o"):
        assert [r["class_id"] for r in rs] == [r["class_id"] for r in _records(tmp_path / k)]
        for p in sorted((tmp_path / k / "purified").glob("*.png")):
            a = np.asarray(Image.open(p), dtype=np.int16)
            b = np.asarray(Image.open(tmp_path / "s" / "purified" / p.name), dtype=np.int16)
            assert np.abs(a - b).max() <= 1  # 8-bit PNGs of images equal to ~1e-5


def test_shard_needs_cpu_provider(artifacts_dir):
    """Shards on a non-CPU provider list are a usage error, raised before any session is built."""
    import onnxruntime as ort

    from vaegan.runtime.artifacts import load_artifacts
    from vaegan.runtime.purify import make_purifier

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (a CUDA provider that resolves)")
    with pytest.raises(RuntimeUsageError, match="sharding"):
        make_purifier(load_artifacts(artifacts_dir), "fused", providers="cuda,cpu", threads=2, shard=True)
