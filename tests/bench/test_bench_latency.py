"""``bench/latency.py --quick`` on the tiny random-init nets: the JSON's structure, and that the agreement check
rejects a backend whose output is wrong (``--perturb``) instead of timing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "latency.py"
sys.path.insert(0, str(ROOT / "bench"))

pytestmark = pytest.mark.slow


def _run(tmp_path, ckpt, clf, arts, *extra):
    js, png = tmp_path / "results" / "results.json", tmp_path / "plots" / "latency.png"  # folders made up front
    cmd = [sys.executable, str(BENCH), "--quick", "--checkpoint", str(ckpt), "--classifier", str(clf),
           "--artifacts", str(arts), "--threads", "1", "--json", str(js), "--plot", str(png), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    return res, json.loads(js.read_text()), png


def test_quick_json_structure(tmp_path, tiny_vaegan_ckpt, tiny_classifier_ckpt, tiny_artifacts):
    from vaegan.train.config import PurifyConfig

    res, r, png = _run(tmp_path, tiny_vaegan_ckpt, tiny_classifier_ckpt, tiny_artifacts)
    assert "| backend | batch | T |" in res.stdout
    assert png.stat().st_size > 1000
    assert r["machine"]["threads"] == 1
    from vaegan.runtime.backend.openvino import openvino_status

    ov_ok, ov_why = openvino_status()  # the engine's version is recorded where it is installed, None where not
    assert (r["machine"]["openvino"] is not None) == ov_ok and (not ov_ok or ov_why.endswith(r["machine"]["openvino"]))
    assert PurifyConfig().steps in r["settings"]["steps"]
    assert set(r["backends"]) == {"eager", "modular", "fused", "trt"}
    for name in ("eager", "modular", "fused"):
        b = r["backends"][name]
        assert "error" not in b, b.get("traceback")
        assert b["peak_rss_mb"] > 0
        assert {(c["batch"], c["steps"]) for c in b["cells"]} == {(n, t) for n in r["settings"]["batches"]
                                                                  for t in r["settings"]["steps"]}
        for c in b["cells"]:
            assert c["status"] == "timed" and c["agreement"]["ok"]
            assert 0 < c["p50_ms"] <= c["p90_ms"] <= c["p99_ms"]
            assert c["frames_per_s"] > 0 and c["gflops"] > 0 and c["flops"] > 0 and c["runs"] >= 3
    # the runtime's own description is recorded: at one thread the fused backend does not shard the batch
    assert r["backends"]["fused"]["describe"]["backend"] == "fused"
    assert r["backends"]["fused"]["describe"]["shards"] == 1 == r["settings"]["fused_shards"]
    # ... and on the CPU it takes its fast path (the Loop unrolled at T) by default
    assert r["settings"]["fused_fast_path"] == r["backends"]["fused"]["describe"]["fast_path"] is not None
    trt = r["backends"]["trt"]
    assert "skipped" in trt or all(c["status"] == "timed" for c in trt["cells"])
    cost = r["cost"]
    assert cost["purify_flops_per_image"]["per_step"] > 0 and cost["peak_gflops"]["peak"] > 0
    d = r["defense_gan"]
    assert d["steps"] == 200 and d["restarts"] == 10 and d["flops_ratio"] > 1 and d["ms_per_frame_eager_batch1"] > 0


def test_disagreeing_backend_is_reported_not_timed(tmp_path, tiny_vaegan_ckpt, tiny_classifier_ckpt, tiny_artifacts):
    res, r, _ = _run(tmp_path, tiny_vaegan_ckpt, tiny_classifier_ckpt, tiny_artifacts, "--backends",
                     "eager,fused", "--perturb", "fused")
    cells = r["backends"]["fused"]["cells"]
    assert cells and all(c["status"] == "disagrees" and not c["agreement"]["ok"] for c in cells)
    assert all("p50_ms" not in c for c in cells)
    assert all(c["status"] == "timed" for c in r["backends"]["eager"]["cells"])
    assert "DISAGREES" in res.stdout


def test_compile_backend_agrees_and_reports_its_compile_time_apart(tmp_path, tiny_vaegan_ckpt, tiny_classifier_ckpt,
                                                                    tiny_artifacts):
    """``--compile``: torch.compile of the reference runs, agrees with eager within the export tolerance, and its
    compilation (first call per shape) is recorded apart from the timed runs."""
    res, r, _ = _run(tmp_path, tiny_vaegan_ckpt, tiny_classifier_ckpt, tiny_artifacts, "--backends", "eager",
                     "--compile")
    assert list(r["backends"]) == ["eager", "compile"]
    b = r["backends"]["compile"]
    assert "error" not in b, b.get("traceback")
    cells = b["cells"]
    assert len(cells) == len(r["settings"]["batches"]) * len(r["settings"]["steps"])
    assert all(c["status"] == "timed" and c["agreement"]["ok"] for c in cells)
    assert b["compile_s"] > 0 and len(b["compile_s_rounds"]) == b["rounds"]
    assert b["describe"]["trace_autograd_ops"]  # one graph per call, not three split at torch.autograd.grad
    assert f"torch.compile: {b['compile_s']:.1f} s of compilation (first call per shape, cold" in res.stdout


def test_agreement_rule():
    from latency import agreement

    ref = np.linspace(0, 1, 100, dtype=np.float64).reshape(1, 1, 10, 10)
    tol = {"atol": 1e-4, "rtol": 1e-4}
    assert agreement(ref.astype(np.float32), ref, tol)["ok"]
    assert not agreement((ref + 1e-3).astype(np.float32), ref, tol)["ok"]
    assert not agreement(ref[:, :, :5].astype(np.float32), ref, tol)["ok"]
    bad = ref.astype(np.float32).copy()
    bad[0, 0, 0, 0] = np.nan
    assert not agreement(bad, ref, tol)["ok"]
    # the export's rule (validate.compare): the bound scales with max|ref|, so an element near zero may be off by
    # atol + rtol * max|ref| (an element-wise relative bound would refuse 1.5e-4 at the 0 pixel)
    near = ref.astype(np.float32).copy()
    near[0, 0, 0, 0] += np.float32(1.5e-4)
    assert agreement(near, ref, tol)["ok"]
    near[0, 0, 0, 0] += np.float32(1e-4)
    assert not agreement(near, ref, tol)["ok"]


def test_flop_counter_matches_hand_count(tiny_artifacts):
    """The counter on decoder.onnx equals the MACs of the tiny decoder's layers (latent 8, width 8), x2."""
    import flops

    L, w = 8, 8
    macs = L * 4 * w * 49 + 4 * w * 49 * 2 * w * 16 + 2 * w * 196 * w * 16 + w * 784 * 9
    z = np.zeros((3, L), np.float32)
    assert flops.graph_flops(tiny_artifacts / "decoder.onnx", {"z": z}) == 2 * 3 * macs
    cost = flops.purify_flops(tiny_artifacts, L)
    assert cost["per_step"] > 2 * macs  # one step = G forward + G and D backward + D forward


def test_flop_counter_counts_bias_free_conv_transpose(tmp_path):
    """A ConvTranspose / Conv without a bias (BatchNorm folded to zero shift): onnxruntime's profile then lists the
    data input alone (the pre-packed weight is left out); the counter takes the weight's taps from the graph."""
    import flops
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    wt = rng.standard_normal((6, 4, 4, 4)).astype(np.float32)  # ConvTranspose 6 -> 4, k4 s2 p1: 7x7 -> 14x14
    wc = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)  # Conv 4 -> 2, k3 p1
    wc[0, 0] = 0.0  # 9 zero taps: counted as non-zero taps only
    g = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "wt"], ["h"], name="up", strides=[2, 2], pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["h", "wc"], ["y"], name="out", pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 14, 14])],
        initializer=[numpy_helper.from_array(wt, "wt"), numpy_helper.from_array(wc, "wc")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "g.onnx")
    macs = 2 * (49 * wt.size + 196 * (wc.size - 9))
    assert flops.graph_flops(tmp_path / "g.onnx", {"x": np.zeros((2, 6, 7, 7), np.float32)}) == 2 * macs


def test_best_of_rounds_picks_each_cells_fastest_round():
    from latency import best_of_rounds

    def cell(b, p50, status="timed"):
        c = {"batch": b, "steps": 3, "status": status}
        if status == "timed":
            c.update(p50_ms=p50, p90_ms=p50 * 1.1, p99_ms=p50 * 1.2)
        return c

    r1 = {"backend": "fused", "peak_rss_mb": 100.0, "cells": [cell(1, 2.0), cell(64, 90.0), cell(8, 0, "disagrees")]}
    r2 = {"backend": "fused", "peak_rss_mb": 120.0, "cells": [cell(1, 3.0), cell(64, 70.0), cell(8, 0, "disagrees")]}
    best = best_of_rounds([r1, r2])
    assert [c.get("p50_ms") for c in best["cells"]] == [2.0, 70.0, None]
    assert best["cells"][1]["p90_ms"] == 77.0  # the whole cell of the chosen round, not a mix of rounds
    assert best["cells"][0]["p50_rounds_ms"] == [2.0, 3.0]
    assert best["cells"][2]["status"] == "disagrees"
    assert best["peak_rss_mb"] == 120.0 and best["rounds"] == 2
    err = {"backend": "fused", "error": "boom", "cells": []}
    assert best_of_rounds([r1, err]) is err


def test_speed_against_eager_pairs_each_round_with_the_eager_round_beside_it():
    """The best rounds of two backends may come from different minutes; the per-round ratios pair p50s measured
    back to back. Here the best-of-rounds ratio (5x) pairs eager's second round with fused's third, while the
    rounds themselves give 4x, 4x and 7.5x."""
    import latency

    def cell(p50s, **kw):
        return {"batch": 1, "steps": 3, "status": "timed", "p50_ms": min(p50s), "p50_rounds_ms": p50s, "p90_ms": 1.0,
                "p99_ms": 1.0, "per_frame_ms": 1.0, "frames_per_s": 1.0, "gflops": 1.0, "pct_peak": 1.0, **kw}

    results = {"backends": {"eager": {"peak_rss_mb": 1.0, "cells": [cell([12.0, 10.0, 15.0])]},
                            "fused": {"peak_rss_mb": 1.0, "cells": [cell([3.0, 2.5, 2.0])]},
                            "modular": {"peak_rss_mb": 1.0, "cells": [cell([5.0, 6.0])]},  # a round not timed
                            "trt": {"skipped": "no GPU"}}}
    latency.speedups(results)
    fused, = results["backends"]["fused"]["cells"]
    assert fused["vs_eager"] == 5.0 and fused["vs_eager_rounds"] == [4.0, 4.0, 7.5]
    modular, = results["backends"]["modular"]["cells"]
    assert modular["vs_eager"] == 2.0 and "vs_eager_rounds" not in modular
    assert results["backends"]["eager"]["cells"][0]["vs_eager_rounds"] == [1.0, 1.0, 1.0]
    table = latency.markdown(results)
    assert "| fused | 1 | 3 | 2.00 |" in table and "| 5.00x | 4.00x (4.00-7.50) | 1 |" in table
    assert "| 2.00x | - | 1 |" in table and "| trt | - | - | skipped: no GPU |" in table
    assert all(row.count("|") == table.splitlines()[0].count("|") for row in table.splitlines())


def test_missing_dataset_is_one_error_line_not_a_traceback(tmp_path, tiny_vaegan_ckpt, tiny_classifier_ckpt,
                                                           tiny_artifacts):
    """The benchmark reads its images from Fashion-MNIST: with no dataset anywhere it stops with the data-root
    message of the other CLIs (exit 2, no traceback)."""
    env = {k: v for k, v in os.environ.items() if k != "VAEGAN_DATA"}
    cmd = [sys.executable, str(BENCH), "--quick", "--checkpoint", str(tiny_vaegan_ckpt), "--classifier",
           str(tiny_classifier_ckpt), "--artifacts", str(tiny_artifacts), "--threads", "1"]
    if Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is installed: the data root resolves without $VAEGAN_DATA")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("Error: Fashion-MNIST not found")
