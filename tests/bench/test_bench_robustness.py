"""``bench/robustness.py``: the defenses x attacks x eps run list, one-line errors, and one real cell end to end
(the AT rows' classifier-only attack on tiny nets) merged into the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import requires_data

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = [sys.executable, str(ROOT / "bench" / "robustness.py")]


def _run(*args, cwd=ROOT):
    return subprocess.run(SCRIPT + list(args), capture_output=True, text=True, cwd=cwd, timeout=600)


def test_commands_list_every_cell_with_its_pipeline():
    r = _run("commands")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    runs = [ln for ln in lines if "vaegan-eval-adaptive --n" in ln]
    assert len(runs) == 4 * 4 * 4  # defenses x eps x attacks
    assert sum("--merge" in ln for ln in lines) == 4 * 4
    at = [ln for ln in runs if "--out reports/robustness/at/apgd9_0.1" in ln]
    assert len(at) == 1 and "--no-purifier" in at[0] and "--classifier runs/at_pgd_eps0.1/model.pt" in at[0]
    assert "--apgd-targets 9" in at[0] and "--eps 0.1 " in at[0]
    sq = [ln for ln in runs if "--out reports/robustness/at_purifier/square_0.2" in ln]
    assert len(sq) == 1 and "--checkpoint runs/purifier_at_eps0.1/model.pt" in sq[0]
    assert "--artifacts reports/robustness/at_purifier/artifacts" in sq[0]
    assert sum("vaegan-export" in ln for ln in lines) == 2  # the two purifier defenses, for Square


@pytest.mark.parametrize("args, message", [
    (("commands", "--defense", "madry"), "Error: --defense 'madry': choose from plain, at, shipped, at_purifier"),
    (("commands", "--eps", "0.15"), "Error: --eps '0.15': choose from 0.05, 0.1, 0.2, 0.3"),
    (("run", "--defense", "at", "--eps", "0.1", "--at-classifier", "nowhere/model.pt"),
     "Error: defense at: nowhere/model.pt does not exist (train it first: docs/robustness.md)"),
])
def test_bad_input_is_one_line(args, message):
    r = _run(*args)
    assert r.returncode == 2 and r.stderr.strip() == message and "Traceback" not in r.stderr


@requires_data
@pytest.mark.slow
def test_one_classifier_only_cell_end_to_end(tmp_path, tiny_classifier_ckpt):
    out = tmp_path / "rob"
    r = _run("run", "--defense", "at", "--eps", "0.1", "--attacks", "full,square", "--n", "20", "--out", str(out),
             "--at-classifier", str(tiny_classifier_ckpt))
    assert r.returncode == 0, r.stderr[-3000:]
    union = json.loads((out / "at" / "union_0.1" / "adaptive.json").read_text())
    assert union["n"] == 20 and sorted(union["attacks"]) == ["full", "square"]
    assert union["checkpoints"]["vaegan"] is None and union["clean"]["defended"] == union["clean"]["classifier"]
    worst = union["any"]["0.1"]
    assert worst <= min(union["attacks"][a]["0.1"]["accuracy"] for a in ("full", "square"))
    again = _run("run", "--defense", "at", "--eps", "0.1", "--attacks", "full", "--n", "20", "--out", str(out),
                 "--at-classifier", str(tiny_classifier_ckpt))
    assert again.returncode == 0 and "adaptive.json: done" in again.stdout  # a finished run is not run again
    t = _run("table", "--out", str(out))
    assert t.returncode == 0, t.stderr
    row = next(ln for ln in t.stdout.splitlines() if ln.startswith("| PGD-AT classifier"))
    assert f"{worst:.1f} (n=20) (no apgd, fab)" in row and row.count("not run") == 4  # clean and 3 eps
