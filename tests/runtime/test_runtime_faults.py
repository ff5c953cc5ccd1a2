"""``vaegan-run`` under faults and hostile input (issue 30): a locked output folder, names that are not UTF-8,
canonical sources for --resume, one output per input, write failures, bad settings and bounds, hostile manifests
and artifact paths, --threads / --out checks, oversized images, FIFOs and devices, and file modes."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vaegan.runtime.artifacts import check_manifest, file_sha256, load_artifacts
from vaegan.runtime.cli import main
from vaegan.runtime.errors import ArtifactError, RuntimeUsageError
from vaegan.runtime.io import TooLarge, load_image, purified_name

PRE = {"channels": 1, "height": 28, "width": 28, "layout": "NCHW", "dtype": "float32", "range": [0.0, 1.0]}
FAST = ("--backend", "modular", "--steps", "1")  # the cheapest loop: these tests are about the output side


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _records(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "predictions.jsonl").read_bytes().splitlines()]


def _one_error_line(res, code: int = 2) -> str:
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output and res.output.strip().count("\n") == 0, res.output
    return res.output


@pytest.fixture
def two_frames(frames_dir, tmp_path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    for name in ("clean_0000_9.png", "rgb_200x160.jpg"):
        shutil.copy(frames_dir / name, d / name)
    return d


# -- 1. one run per output folder ---------------------------------------------------------------------------------

def test_second_run_on_a_locked_folder_is_refused(artifacts_dir, two_frames, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        res = _run("--input", two_frames, "--artifacts", artifacts_dir, "--out", out, "--quiet", *FAST)
        assert "another vaegan-run is writing to this folder" in _one_error_line(res)
        assert not (out / "predictions.jsonl").exists()  # the running run's records are not touched
    res = _run("--input", two_frames, "--artifacts", artifacts_dir, "--out", out, "--quiet", *FAST)
    assert res.exit_code == 0, res.output and len(_records(out)) == 2


def test_lock_is_released_when_its_process_dies(tmp_path):
    """kill -9 mid-run: the OS drops the flock, the next run gets it."""
    from vaegan.runtime.run import lock_output

    code = ("import os, signal, sys; from pathlib import Path; from vaegan.runtime.run import lock_output\n"
            f"lock = lock_output(Path({str(tmp_path)!r})); print('held', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeUsageError, match="another vaegan-run is writing"):
            lock_output(tmp_path)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    lock_output(tmp_path).close()


# -- 2, 3, 4. names -------------------------------------------------------------------------------------------

def test_non_utf8_file_name_is_recorded_losslessly_and_resumes(artifacts_dir, two_frames, tmp_path):
    raw = os.fsencode(two_frames) + b"/bad\xff\xfename.png"
    shutil.copy(two_frames / "clean_0000_9.png", raw)
    out = tmp_path / "out"
    res = _run("--input", two_frames, "--artifacts", artifacts_dir, "--out", out, "--quiet", *FAST)
    assert res.exit_code == 0, res.output
    assert b"\\udcff\\udcfename.png" in (out / "predictions.jsonl").read_bytes()  # the documented escape
    recs = _records(out)
    assert len(recs) == 3 and all(r["status"] == "ok" for r in recs)
    (bad,) = [r for r in recs if "name.png" in r["source"]]
    assert os.fsencode(bad["source"]) == raw  # lossless
    assert os.path.isfile(os.fsencode(out / bad["purified"]))
    assert os.fsencode(bad["purified"]) == b"purified/bad\xff\xfename.png.png"
    res = _run("--input", two_frames, "--artifacts", artifacts_dir, "--out", out, "--quiet", "--resume", *FAST)
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["skipped"] == 3 and s["frames"] == 0 and len(_records(out)) == 3


def test_resume_matches_relative_and_absolute_spellings(artifacts_dir, two_frames, tmp_path, monkeypatch):
    out = tmp_path / "out"
    res = _run("--input", two_frames, "--artifacts", artifacts_dir, "--out", out, "--quiet", *FAST)
    assert res.exit_code == 0, res.output
    monkeypatch.chdir(two_frames)
    res = _run("--input", "../in/./", "--artifacts", artifacts_dir, "--out", "../out", "--quiet", "--resume", *FAST)
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["skipped"] == 2 and s["frames"] == 0
    assert len(_records(out)) == 2
    assert all(Path(r["source"]).is_absolute() for r in _records(out))


def test_output_names_are_one_per_input(artifacts_dir, two_frames, tmp_path):
    shutil.copy(two_frames / "rgb_200x160.jpg", two_frames / "a.jpg")
    shutil.copy(two_frames / "clean_0000_9.png", two_frames / "a.jpg.png")
    out = tmp_path / "out"
    res = _run("--input", two_frames, "--artifacts", artifacts_dir, "--out", out, "--quiet", *FAST)
    assert res.exit_code == 0, res.output
    by = {Path(r["source"]).name: r["purified"] for r in _records(out)}
    assert by["a.jpg"] != by["a.jpg.png"]
    a = np.asarray(Image.open(out / by["a.jpg"]))
    b = np.asarray(Image.open(out / by["a.jpg.png"]))
    assert not np.array_equal(a, b)  # two different inputs, two different purified frames
    # the mapping is one to one, files never clash with folders, on names built to collide
    rels = ["a", "a.png", "a.png.png", "a.jpg", "a.jpg.png", "x.png/c.jpg", "x.png_/c.jpg", "x.png__/c.jpg",
            "x.png", "x", "x.PNG/c", "d/e.png", "d/e"]
    outs = [purified_name(r) for r in rels]
    assert len(set(outs)) == len(outs)
    files = set(outs)
    folders = {"/".join(o.split("/")[:k]) for o in outs for k in range(1, o.count("/") + 1)}
    assert not files & folders, files & folders


# -- 6. write failures --------------------------------------------------------------------------------------------

def test_write_failure_is_one_line_exit_2_and_records_stay_whole(artifacts_dir, frames_dir, tmp_path):
    """A file-size limit (RLIMIT_FSIZE, as a full disk: the write fails) hit mid-run: exit 2 with one line, every
    line of predictions.jsonl a whole record, and --resume finishes the job."""
    d = tmp_path / "in"
    d.mkdir()
    for p in sorted(frames_dir.glob("clean_*.png"))[:8]:
        shutil.copy(p, d / p.name)
    out = tmp_path / "out"
    args = ["--input", str(d), "--artifacts", str(artifacts_dir), "--out", str(out), "--quiet", "--batch-size", "2",
            "--no-save-purified", *FAST]
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
            "from vaegan.runtime.cli import main\n"
            f"main({args!r})\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and p.stderr.strip().count("\n") == 0, p.stderr
    assert "predictions.jsonl: cannot write (File too large)" in p.stderr and "--resume" in p.stderr
    raw = (out / "predictions.jsonl").read_bytes()
    assert 0 < len(raw) <= 1000 and raw.endswith(b"\n")
    first = _records(out)
    assert 0 < len(first) < 8 and len(first) % 2 == 0  # whole batches only
    res = _run(*args[:-len(FAST)], "--resume", *FAST)
    assert res.exit_code == 0, res.output
    recs = _records(out)
    assert len(recs) == len({r["source"] for r in recs}) == 8


# -- 7, 8. settings ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value,msg", [
    ("--eta", "nan", "eta must be a finite number > 0"), ("--eta", "inf", "eta must be a finite number > 0"),
    ("--eta", "-0.1", "eta must be a finite number > 0"), ("--lam", "-1", "lam must be a finite number >= 0"),
    ("--lam", "-inf", "lam must be a finite number >= 0"), ("--momentum", "1", "momentum must be a finite number in"),
    ("--momentum", "nan", "momentum must be a finite number in"),
    ("--steps", "100000", r"steps must be an integer in 0..10000"), ("--steps", "-1", "steps must be an integer"),
    ("--restarts", "1000", r"restarts must be an integer in 1..256"), ("--restarts", "0", "restarts must be"),
    ("--threads", "-1", "threads must be an integer >= 1"), ("--threads", "0", "threads must be an integer >= 1"),
])
def test_bad_settings_exit_2_with_one_line(artifacts_dir, two_frames, tmp_path, flag, value, msg):
    import re

    res = _run("--input", two_frames, "--artifacts", artifacts_dir, "--out", tmp_path / "o", "--quiet",
               "--backend", "fused", flag, value)
    assert re.search(msg, _one_error_line(res)), res.output
    assert not (tmp_path / "o" / "predictions.jsonl").exists()


def test_params_checked_in_the_library_and_json_never_holds_nan(artifacts_dir):
    from vaegan.runtime.purify import PurifyParams
    from vaegan.runtime.run import encode_record, finite_record

    arts = load_artifacts(artifacts_dir)
    with pytest.raises(RuntimeUsageError, match=r"eta must be a finite number > 0 \(got nan\)"):
        PurifyParams.from_manifest(arts, eta=float("nan"))
    ok = PurifyParams.from_manifest(arts)
    from dataclasses import replace

    with pytest.raises(RuntimeUsageError, match="noise must be a finite number >= 0"):
        replace(ok, noise=float("inf")).check()
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        encode_record({"source": "a", "loss": float("nan")})
    rec = finite_record({"source": "a", "status": "ok", "loss": float("inf"), "confidence": 0.5})
    assert rec == {"source": "a", "status": "error", "error": "purification gave a non-finite loss (inf)"}


def test_fused_chunks_count_restarts_times_images_and_long_loops_skip_the_unroll(artifacts_dir, fmnist64):
    from vaegan.runtime.limits import FAST_PATH_MAX_STEPS
    from vaegan.runtime.purify import PurifyParams, make_purifier

    arts = load_artifacts(artifacts_dir)
    pur = make_purifier(arts, "fused", threads=1, fast_path=True, fast_path_engine="onnxruntime")
    assert arts.max_batch == 64 and pur.rows_per_call(1) == 64 and pur.rows_per_call(8) == 8
    assert pur.rows_per_call(1000) == 1
    long = PurifyParams.from_manifest(arts, steps=FAST_PATH_MAX_STEPS + 1)
    with pur:
        res = pur.purify(fmnist64[0][:2], params=long)
        assert not any(name.startswith("purify_fast_T") and f"T{FAST_PATH_MAX_STEPS + 1}" in name
                       for name in pur.runners)  # the Loop graph ran it, not an unrolled copy per step
        assert res.purified.shape == (2, 1, 28, 28) and np.isfinite(res.loss).all()


# -- 9, 10. hostile manifests and artifact paths ----------------------------------------------------------------

def _edit_manifest(root: Path, edit) -> None:
    m = json.loads((root / "manifest.json").read_text())
    edit(m)
    (root / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("edit,msg", [
    (lambda m: m.update(latent_dim="8"), r"manifest\.latent_dim: expected an integer >= 1, got '8'"),
    (lambda m: m.update(latent_dim=8.0), r"manifest\.latent_dim: expected an integer >= 1"),
    (lambda m: m.update(max_batch=0), r"manifest\.max_batch: expected an integer >= 1, got 0"),
    (lambda m: m.update(classes="ab"), r"manifest\.classes: expected a list of at least 2 non-empty strings"),
    (lambda m: m.update(classes=[1, 2]), r"manifest\.classes: expected a list of at least 2"),
    (lambda m: m.update(graphs=["purify"]), r"manifest\.graphs: expected an object of name"),
    (lambda m: m["graphs"]["purify"].update(sha256=5), r"manifest\.graphs\.purify\.sha256: expected 64 lowercase"),
    (lambda m: m["graphs"]["purify"].pop("file"), r"manifest\.graphs\.purify: missing key 'file'"),
    (lambda m: m["preprocess"].update(height=0), r"manifest\.preprocess\.height: expected an integer >= 1"),
    (lambda m: m["preprocess"].update(channels=2), r"manifest\.preprocess\.channels: expected one of 1, 3"),
    (lambda m: m.update(preprocess=[]), r"manifest\.preprocess: expected an object"),
    (lambda m: m["purify_defaults"].update(eta="0.1"), r"manifest\.purify_defaults\.eta: expected a finite number"),
    (lambda m: m["purify_defaults"].update(eta=float("nan")), r"purify_defaults\.eta: expected a finite number"),
    (lambda m: m["purify_defaults"].update(momentum=2.0), r"purify_defaults: momentum must be a finite number in"),
    (lambda m: m["purify_defaults"].update(steps=10 ** 6), r"purify_defaults: steps must be an integer in 0..10000"),
    (lambda m: m.update(engines={"purify": {"file": "p.engine", "sha256": "0" * 64, "steps_profile": {"max": "x"}}}),
     r"manifest\.engines\.purify\.steps_profile\.max: expected an integer >= 0"),
])
def test_manifest_schema(artifacts_copy, two_frames, tmp_path, edit, msg):
    _edit_manifest(artifacts_copy, edit)
    with pytest.raises(ArtifactError, match=msg):
        load_artifacts(artifacts_copy)
    res = _run("--input", two_frames, "--artifacts", artifacts_copy, "--out", tmp_path / "o", "--quiet")
    assert "vaegan-export --out" in _one_error_line(res)


def test_manifest_schema_takes_other_image_contracts(artifacts_dir):
    m = json.loads((artifacts_dir / "manifest.json").read_text())
    m["preprocess"].update(channels=3, height=32, width=17)
    m["classes"] = ["cat", "dog"]
    check_manifest(m, "manifest.json")  # no error
    m["classes"] = [f"c{i}" for i in range(100)]
    check_manifest(m, "manifest.json")


def test_graph_that_onnxruntime_rejects_is_one_line_exit_2(artifacts_copy, two_frames, tmp_path):
    bad = artifacts_copy / "decoder.onnx"
    bad.write_bytes(b"\x08\x07 this is not a protobuf of an ONNX model " * 20)
    _edit_manifest(artifacts_copy, lambda m: m["graphs"]["decoder"].update(sha256=file_sha256(bad)))
    res = _run("--input", two_frames, "--artifacts", artifacts_copy, "--out", tmp_path / "o", "--quiet", *FAST)
    line = _one_error_line(res)
    assert "decoder.onnx: onnxruntime cannot load this graph" in line and "vaegan-export --out" in line


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_artifact_paths_outside_the_folder_are_refused_before_reading(artifacts_copy, tmp_path, monkeypatch, how):
    from vaegan.runtime import artifacts as artifacts_mod

    outside = tmp_path / "elsewhere" / "purify.onnx"
    outside.parent.mkdir()
    shutil.copy(artifacts_copy / "purify.onnx", outside)  # same bytes: the sha256 would match
    if how == "symlink":
        (artifacts_copy / "purify.onnx").unlink()
        (artifacts_copy / "purify.onnx").symlink_to(outside)
        file = "purify.onnx"
    else:
        file = "../elsewhere/purify.onnx" if how == "dotdot" else str(outside)
    _edit_manifest(artifacts_copy, lambda m: m["graphs"]["purify"].update(file=file))
    arts = load_artifacts(artifacts_copy)

    def no_hash(path):
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(artifacts_mod, "file_sha256", no_hash)
    with pytest.raises(ArtifactError, match="graphs.purify file .* resolves outside the artifacts folder; refusing"):
        arts.path("purify")


# -- 12. threads and folders ------------------------------------------------------------------------------------

def test_out_that_is_or_contains_the_input_is_refused(artifacts_dir, two_frames, tmp_path):
    res = _run("--input", two_frames, "--artifacts", artifacts_dir, "--out", two_frames, "--quiet")
    assert "is --input" in _one_error_line(res)
    res = _run("--input", two_frames, "--artifacts", artifacts_dir, "--out", tmp_path, "--quiet")
    assert "contains --input" in _one_error_line(res)
    res = _run("--input", two_frames / "clean_0000_9.png", "--artifacts", artifacts_dir, "--out", two_frames, "--quiet")
    assert "contains --input" in _one_error_line(res)
    # an --out inside a folder input is left out of the listing, as before
    res = _run("--input", two_frames, "--artifacts", artifacts_dir, "--out", two_frames / "o", "--quiet", *FAST)
    assert res.exit_code == 0 and len(_records(two_frames / "o")) == 2


# -- 13, 14. inputs ---------------------------------------------------------------------------------------------------

def test_pixel_limit_is_checked_from_the_header_before_decoding(artifacts_dir, two_frames, tmp_path, monkeypatch):
    res = _run("--input", two_frames, "--artifacts", artifacts_dir, "--out", tmp_path / "o", "--quiet",
               "--max-pixels", "10000", *FAST)
    assert res.exit_code == 1, res.output
    by = {Path(r["source"]).name: r for r in _records(tmp_path / "o")}
    assert by["clean_0000_9.png"]["status"] == "ok"  # 784 px
    assert by["rgb_200x160.jpg"]["status"] == "error"
    assert "image is 200 x 160 = 0.0 Mpx, above the limit of 0.01 Mpx (--max-pixels)" in by["rgb_200x160.jpg"]["error"]
    big = tmp_path / "big.png"
    Image.new("L", (6000, 6000)).save(big)  # 36 Mpx, a few kB on disk
    from PIL import ImageFile

    def no_decode(self):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with pytest.raises(TooLarge, match=r"6000 x 6000 = 36\.0 Mpx, above the limit of 32 Mpx"):
        load_image(big, PRE)  # the default limit


def test_fifos_and_devices_are_error_records_never_opened(artifacts_dir, two_frames, tmp_path):
    os.mkfifo(two_frames / "pipe.png")
    out = tmp_path / "o"
    code = ("from vaegan.runtime.cli import main\n"
            f"main(['--input', {str(two_frames)!r}, '--artifacts', {str(artifacts_dir)!r}, '--out', {str(out)!r}, "
            f"'--quiet', '--backend', 'modular', '--steps', '1'])\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    by = {Path(r["source"]).name: r for r in _records(out)}
    assert by["pipe.png"] == {"source": str(two_frames / "pipe.png"), "status": "error",
                              "error": "not a regular file (a FIFO); not opened"}
    assert by["clean_0000_9.png"]["status"] == "ok"
    for target, kind in ((two_frames / "pipe.png", "a FIFO"), (Path("/dev/null"), "a character device")):
        res = _run("--input", target, "--artifacts", artifacts_dir, "--out", tmp_path / "o2", "--quiet", *FAST)
        assert res.exit_code == 1, res.output
        (rec,) = _records(tmp_path / "o2")
        assert rec["error"] == f"not a regular file ({kind}); not opened"


# -- 15. modes ------------------------------------------------------------------------------------------------------

def test_output_files_follow_the_umask(artifacts_dir, two_frames, tmp_path):
    from vaegan.runtime.run import file_mode

    old = os.umask(0o027)
    file_mode.cache_clear()
    try:
        out = tmp_path / "out"
        res = _run("--input", two_frames, "--artifacts", artifacts_dir, "--out", out, "--quiet", *FAST)
        assert res.exit_code == 0, res.output
    finally:
        os.umask(old)
        file_mode.cache_clear()
    for p in (out / "predictions.jsonl", out / "summary.json", out / "purified" / "clean_0000_9.png.png"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, (p, oct(p.stat().st_mode))
