"""``bench/precision.py --quick`` on the tiny random-init nets: accuracy of fp32 and bf16 over the clean images and
an adversarial set crafted against the same classifier, sets that do not belong left out with a line naming the
file and why, and the per-round timing table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vaegan.runtime.backend.openvino import bf16_status

ROOT = Path(__file__).resolve().parents[2]

BF16, WHY = bf16_status()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not BF16, reason=f"bf16 fast path not usable here: {WHY}")]


def test_precision_quick(tmp_path, tiny_vaegan_ckpt, tiny_classifier_ckpt, tiny_artifacts):
    import torch

    from vaegan.train.attacks import AttackSpec, save_adversarial
    from vaegan.util import file_sha256
    from vaegan.train.data import test_subset

    x, y, _ = test_subset(64)
    noisy = (x + 0.1 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))).clamp(0, 1)
    spec = AttackSpec("fgsm", eps=0.1)
    ours = save_adversarial(tmp_path / "ours.npz", noisy, y, torch.arange(len(y)), spec, None,
                            {"split": "test", "classifier_sha256": file_sha256(tiny_classifier_ckpt)})
    theirs = save_adversarial(tmp_path / "theirs.npz", noisy, y, torch.arange(len(y)), spec, None,
                              {"split": "test", "classifier_sha256": "0" * 64})
    junk = tmp_path / "junk.npz"
    junk.write_text("not an npz")
    js = tmp_path / "precision.json"
    cmd = [sys.executable, str(ROOT / "bench" / "precision.py"), "--quick", "--checkpoint", str(tiny_vaegan_ckpt),
           "--classifier", str(tiny_classifier_ckpt), "--artifacts", str(tiny_artifacts), "--threads", "2",
           "--adv", str(ours), "--adv", str(theirs), "--adv", str(junk), "--json", str(js)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"skipping {theirs}: crafted against another classifier" in res.stderr
    assert f"skipping {junk}: not a vaegan adversarial dataset" in res.stderr
    r = json.loads(js.read_text())
    assert [a["set"] for a in r["accuracy"]] == ["clean", "fgsm_eps0.1"]
    for a in r["accuracy"]:
        assert a["n"] == 64 and 0 <= a["acc_fp32"] <= 100 and 0 <= a["acc_bf16"] <= 100
        assert 0 <= a["labels_differ"] <= 64 and a["max_abs_per_image"]["max"] > 0  # bf16 really ran
    assert r["describe"]["bf16"]["precision"] == "bf16" and r["describe"]["fp32"]["precision"] == "fp32"
    assert [c["batch"] for c in r["latency"]] == [1, 2]
    for c in r["latency"]:
        assert c["fp32"]["p50_ms"] > 0 and c["bf16"]["p50_ms"] > 0 and len(c["bf16_vs_fp32_rounds"]) == 1
    assert "| clean | 64 |" in res.stdout and "| fgsm_eps0.1 | 64 |" in res.stdout and "| 1 |" in res.stdout
