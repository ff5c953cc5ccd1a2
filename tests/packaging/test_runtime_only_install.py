"""`pip install vaegan` as a user on an edge box gets it: a virtual environment with the runtime-only install from
this checkout (no torch in it), where vaegan-run and the Defense API purify and classify samples/frames with
artifacts exported here (the full environment) and give the labels this environment gives; the PyTorch side's
commands say what to install.

The environment is cached under $VAEGAN_TEST_CACHE (default ~/.cache/vaegan-test), keyed by the Python version and
the runtime's requirements; each run builds the checkout's wheel and reinstalls only it. Cold (the venv, the
requirements from PyPI or pip's cache, the wheel) and warm costs are in docs/runtime.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "frames"
CACHE = Path(os.environ.get("VAEGAN_TEST_CACHE") or Path.home() / ".cache" / "vaegan-test")
TRAIN_ONLY = ("torch", "torchvision", "torchattacks", "matplotlib", "onnxscript")

pytestmark = pytest.mark.slow


def _sh(cmd, timeout=900, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))}: exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


def _clean_env() -> dict:
    """The environment without this venv's traces (PYTHONPATH, VIRTUAL_ENV), so the child sees only its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """bin/ of the cached runtime-only venv, with this checkout's wheel installed in it."""
    try:
        import tomllib

        deps = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    except ImportError:  # Python 3.10: key on the whole file instead
        deps = [(ROOT / "pyproject.toml").read_text()]
    key = hashlib.sha256(json.dumps([list(sys.version_info[:2]), deps]).encode()).hexdigest()[:12]
    venv = CACHE / f"runtime-venv-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = tmp_path_factory.mktemp("wheel")
    with open(CACHE / f"runtime-venv-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once share one venv
        py = venv / "bin" / "python"
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            _sh([sys.executable, "-m", "venv", venv], env=_clean_env())
        env = _clean_env()
        _sh([py, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", wheels, ROOT], env=env)
        wheel, = wheels.glob("vaegan-*.whl")
        if (venv / ".complete").exists():
            _sh([py, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", wheel], env=env)
        else:
            _sh([py, "-m", "pip", "install", "--quiet", wheel], env=env)
            (venv / ".complete").write_text(wheel.name)
        _sh([py, "-m", "pip", "check"], env=env)
    return venv / "bin"


def test_no_torch_in_the_runtime_install(runtime_venv):
    p = subprocess.run([runtime_venv / "python", "-c", "import torch"], capture_output=True, text=True,
                       env=_clean_env())
    assert p.returncode == 1 and "No module named 'torch'" in p.stderr
    listed = json.loads(_sh([runtime_venv / "python", "-m", "pip", "list", "--format", "json"],
                            env=_clean_env()).stdout)
    names = {d["name"].lower() for d in listed}
    assert not names & set(TRAIN_ONLY), names
    assert {"vaegan", "onnxruntime", "onnx", "numpy", "pillow", "click"} <= names
    # the package imported is the installed wheel, not this checkout
    p = _sh([runtime_venv / "python", "-c", "import vaegan.runtime; print(vaegan.runtime.__file__)"], env=_clean_env(),
            cwd="/")
    assert str(runtime_venv.parent) in p.stdout


def _full_env_labels(artifacts: Path, files: list[Path]) -> tuple[list[int], np.ndarray]:
    from PIL import Image

    from vaegan.runtime import BackendOptions, Defense

    # the runtime install has no OpenVINO: the fast path on onnxruntime here too, the same graphs on the same engine
    with Defense.load(artifacts, threads=1, options=BackendOptions(fast_path_engine="onnxruntime")) as d:
        r = d([np.asarray(Image.open(f)) for f in files])
    return r.labels.tolist(), r.loss


def test_vaegan_run_and_the_api_match_the_full_environment(runtime_venv, shipped_export, tmp_path):
    shipped_artifacts_dir = shipped_export[0]
    files = sorted(f for f in SAMPLES.iterdir() if f.suffix in (".png", ".jpg"))
    want, loss = _full_env_labels(shipped_artifacts_dir, files)
    env = _clean_env()
    out = tmp_path / "out"
    _sh([runtime_venv / "vaegan-run", "--input", SAMPLES, "--artifacts", shipped_artifacts_dir, "--out", out,
         "--quiet", "--threads", "1"], env=env, cwd=tmp_path)
    recs = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(r["source"]).name for r in recs] == [f.name for f in files]
    assert [r["class_id"] for r in recs] == want
    np.testing.assert_allclose([r["loss"] for r in recs], loss, rtol=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["purify"]["fast_path_engine"] == "onnxruntime"  # no OpenVINO there
    p = _sh([runtime_venv / "python", ROOT / "examples" / "numpy_frames.py", "--artifacts", shipped_artifacts_dir,
             "--frames", SAMPLES, "--threads", "1"], env=env, cwd=tmp_path)
    api = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["frame"] for r in api] == [f.name for f in files]
    assert [r["class_id"] for r in api] == want


def test_train_commands_say_what_to_install(runtime_venv, tmp_path):
    for prog, args in (("vaegan-train", ["classifier", "--epochs", "1"]), ("vaegan-attack", ["--attack", "fgsm"]),
                       ("vaegan-eval", ["--quick"]), ("vaegan-eval-adaptive", ["--n", "2"]),
                       ("vaegan-export", ["--out", "x"])):
        p = subprocess.run([runtime_venv / prog, *args], capture_output=True, text=True, env=_clean_env(),
                           cwd=tmp_path, timeout=120)
        assert p.returncode == 2, (prog, p.stdout, p.stderr)
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.startswith(f"Error: {prog}") and "needs the 'train' extra" in p.stderr
        assert "pip install 'vaegan[train]'" in p.stderr
        for flag in ("--help", "--version"):
            h = subprocess.run([runtime_venv / prog, flag], capture_output=True, text=True, env=_clean_env(),
                               timeout=120)
            assert h.returncode == 0 and h.stdout.strip(), (prog, flag, h.stderr)
