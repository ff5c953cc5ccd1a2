"""``bench/levers.py --quick`` on the tiny random-init nets: every lever variant builds, runs in its own process,
agrees with the shipped configuration, and the shipped levers are really on (sharding) or off in their variants."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_levers_quick(tmp_path, tiny_vaegan_ckpt, tiny_classifier_ckpt, tiny_artifacts):
    js = tmp_path / "levers.json"
    cmd = [sys.executable, str(ROOT / "bench" / "levers.py"), "--quick", "--checkpoint", str(tiny_vaegan_ckpt),
           "--classifier", str(tiny_classifier_ckpt), "--artifacts", str(tiny_artifacts), "--threads", "2",
           "--json", str(js)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| variant | batch 1 ms | vs shipped | per round | batch 2 ms |" in res.stdout
    r = json.loads(js.read_text())
    v = {x["variant"].split(" (")[0]: x for x in r["variants"]}
    from vaegan.runtime.purify import resolve_fast_path_engine

    engine = resolve_fast_path_engine("auto")
    # with OpenVINO, one more row: the fast path on onnxruntime (what shipped before it)
    assert len(r["variants"]) == 11 + (engine == "openvino") and not [x for x in r["variants"] if "error" in x]
    shipped = r["variants"][0]
    assert shipped["config"]["shipped"] and shipped["describe"]["shards"] == 2  # 2 threads: the runtime shards
    assert shipped["describe"]["fast_path"] and shipped["describe"]["fast_path_engine"] == engine
    loop_rows = r["variants"][1:]
    if engine == "openvino":
        ort = r["variants"][1]
        assert ort["describe"]["fast_path"] and ort["describe"]["fast_path_engine"] == "onnxruntime"
        loop_rows = r["variants"][2:]
        # the fast path's own levers, interleaved call by call in one process: every toggle computes the same rows
        inter = r["fast_path_interleaved"]["variants"]
        assert [t["config"] for t in inter] == [{}, {"bind_settings": False}, {"share_inputs": False},
                                                {"bind_settings": False, "share_inputs": False}]
        for t in inter:
            for n in ("1", "2"):
                assert t["cells"][n]["p50_ms"] > 0 and t["cells"][n]["calls"] >= 3
                assert t["cells"][n]["max_abs_diff"] < 1e-4
        assert "| fast-path variant | batch 1 ms | time vs shipped |" in res.stdout
    else:
        assert "skipped" in r["fast_path_interleaved"]
    assert not [x for x in loop_rows if x["describe"]["fast_path"]]  # the Loop graph's levers: fast path off
    assert v["Loop graph: - batch sharding off"]["describe"]["shards"] == 1
    assert v["Loop graph: + 1 thread"]["describe"]["shards"] == 1
    for x in r["variants"]:
        for n in ("1", "2"):
            c = x["cells"][n]
            assert c["p50_ms"] > 0 and c["runs"] >= 3
            # every variant computes the same purification (the export's loop tolerance)
            assert x is shipped or (c["max_abs_diff"] < 1e-4 and c["agrees"]), (x["variant"], c)
            assert c["vs_shipped_rounds"] == [shipped["cells"][n]["p50_ms"] / c["p50_ms"]]  # one round (--quick)


def test_levers_pair_each_round_with_the_shipped_round():
    """The per-round column pairs round r of a variant with round r of the shipped configuration; a variant that
    failed, or a cell with a different number of rounds, gets none; the table keeps its column count."""
    sys.path.insert(0, str(ROOT / "bench"))
    import levers

    def variant(name, p50s):
        return {"variant": name, "cells": {1: {"p50_ms": min(p50s), "p50_rounds_ms": p50s, "max_abs_diff": 0.0}}}

    shipped, faster, short = variant("shipped", [4.0, 6.0, 5.0]), variant("a", [2.0, 2.0, 4.0]), variant("b", [3.0])
    out = [shipped, faster, short, {"variant": "c", "error": "boom"}]
    levers.paired_with_shipped(out, [1])
    assert faster["cells"][1]["vs_shipped_rounds"] == [2.0, 3.0, 1.25]
    assert shipped["cells"][1]["vs_shipped_rounds"] == [1.0, 1.0, 1.0]
    assert "vs_shipped_rounds" not in short["cells"][1]
    table = levers.markdown({"settings": {"batches": [1]}, "variants": out})
    assert "| a | 2.00 | 2.00x | 2.00x (1.25-3.00) | 0.0e+00 |" in table and "| b | 3.00 | 1.33x | - |" in table
    assert all(row.count("|") == table.splitlines()[0].count("|") for row in table.splitlines())
