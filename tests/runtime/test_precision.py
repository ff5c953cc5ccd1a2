"""bf16 on the fused backend's CPU fast path (``make_purifier(..., precision="bf16")``, ``vaegan-run --precision``):
refused wherever it would not run as asked (never silently fp32), and where it runs it really computes in bf16
(OpenVINO's compiled model reports it, and the outputs move by bf16's rounding, not more), recorded in
``summary.json``. Its accuracy on the shipped weights is bench/precision.py's job (tests/bench)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from vaegan.runtime.artifacts import load_artifacts
from vaegan.runtime.backend.openvino import bf16_status
from vaegan.runtime.cli import main
from vaegan.runtime.errors import RuntimeUsageError
from vaegan.runtime.purify import PurifyParams, make_purifier

BF16, WHY = bf16_status()
needs_bf16 = pytest.mark.skipif(not BF16, reason=f"bf16 fast path not usable here: {WHY}")


@pytest.mark.parametrize("kw, msg", [
    ({"backend": "modular"}, r"fused backend's CPU fast path only \(here: backend modular\)"),
    ({"fast_path": False}, r"fast path only \(here: backend fused, fast path off\)"),
    ({"fast_path_engine": "onnxruntime"}, r"OpenVINO's fast path only, not on onnxruntime"),
    ({"restarts": 2}, r"takes one restart \(restarts 2\)"),
    ({"precision": "fp16"}, r"unknown precision 'fp16' \(choose from fp32, bf16\)"),
])
def test_bf16_is_refused_where_it_would_not_run(artifacts_dir, kw, msg):
    arts = load_artifacts(artifacts_dir)
    kw = {"backend": "fused", "precision": "bf16", **kw}
    params = PurifyParams.from_manifest(arts, restarts=kw.pop("restarts", None))
    with pytest.raises(RuntimeUsageError, match=msg):
        make_purifier(arts, params=params, **kw)


@needs_bf16
def test_bf16_runs_in_bf16_close_to_fp32(artifacts_dir, fmnist64):
    x, _ = fmnist64
    arts = load_artifacts(artifacts_dir)
    with make_purifier(arts, "fused", threads=2, precision="bf16") as bf, \
            make_purifier(arts, "fused", threads=2, fast_path_engine="openvino") as fp:
        d = bf.describe()
        assert d["precision"] == "bf16" and d["fast_path_engine"] == "openvino" and "in bf16" in d["fast_path"]
        assert fp.describe()["precision"] == "fp32"
        got, ref = bf.purify(x), fp.purify(x)
        steps = arts.manifest["purify_defaults"]["steps"]
        assert bf.runners[f"purify_fast_T{steps}"].inference_precisions() == ["bf16"]
        assert fp.runners[f"purify_fast_T{steps}"].inference_precisions() == ["f32"]
        assert got.purified.shape == ref.purified.shape and got.purified.dtype == np.float32
        diff = np.abs(got.purified - ref.purified)
        assert 0 < float(np.median(diff)) < 0.02  # bf16's ~3 significant digits, through T steps: not fp32, not off
        # a call with two restarts would leave the fast path: refused, not run in fp32
        with pytest.raises(RuntimeUsageError,
                           match=r"takes one restart and steps <= \d+ \(this call: restarts 2, steps 3\)"):
            bf.purify(x[:2], params=PurifyParams.from_manifest(arts, restarts=2))


@needs_bf16
def test_vaegan_run_records_the_precision(artifacts_dir, frames_dir, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["--input", str(frames_dir), "--artifacts", str(artifacts_dir), "--out", str(out),
                                    "--precision", "bf16", "--quiet"])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["purify"]["precision"] == "bf16" and s["errors"] == 0


def test_vaegan_run_refuses_bf16_with_restarts_in_one_line(artifacts_dir, frames_dir, tmp_path):
    res = CliRunner().invoke(main, ["--input", str(frames_dir), "--artifacts", str(artifacts_dir),
                                    "--out", str(tmp_path / "out"), "--precision", "bf16", "--restarts", "2"])
    assert res.exit_code == 2
    assert res.output.strip() == ("Error: precision bf16 runs on the fast path, which takes one restart "
                                  "(restarts 2)")


@needs_bf16
def test_bf16_keeps_the_shipped_defended_labels(shipped_artifacts_dir):
    """On the shipped weights bf16 changes the defended classifier's label on a handful of images at most
    (docs/benchmarks.md, "bf16 on the OpenVINO fast path"); here the first 256, where fp32 and bf16 must agree on
    at least 98%."""
    from vaegan.runtime.purify import make_classifier
    from vaegan.train.data import test_subset

    x, y, _ = test_subset(256)
    x, y = x.numpy(), y.numpy()
    arts = load_artifacts(shipped_artifacts_dir)
    clf = make_classifier(arts, "fused", threads=2)
    labels = {}
    with clf.runner:
        for precision in ("fp32", "bf16"):
            with make_purifier(arts, "fused", threads=2, fast_path_engine="openvino", precision=precision) as p:
                labels[precision] = clf(np.concatenate([p.purify(x[i:i + 64]).purified for i in range(0, 256, 64)]),
                                        64)[0]
    assert (labels["fp32"] == labels["bf16"]).mean() >= 0.98
    assert abs((labels["fp32"] == y).mean() - (labels["bf16"] == y).mean()) <= 0.02
