"""``vaegan-eval-adaptive --no-purifier``: the same suite on the classifier alone (the baseline rows)."""

import pytest
import torch
from click.testing import CliRunner

from vaegan.adaptive.cli import adaptive_cli
from vaegan.adaptive.config import AdaptiveConfig
from vaegan.adaptive.evaluate import evaluate_adaptive
from vaegan.adaptive.merge import merge_reports
from vaegan.train import checkpoint
from vaegan.train.errors import VaeganError


def test_classifier_alone_faces_the_gradient_and_score_attacks(live_ckpts, tmp_path):
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    clf = checkpoint.load_model(live_ckpts[1], "classifier")[0].eval()
    with torch.no_grad():
        y = clf(x).argmax(1)  # every image starts correctly classified: the attacks have work to do
    cfg = AdaptiveConfig(n=8, eps=(0.3,), attacks=("full", "apgd", "square"), steps=5, checkpoints=(5,),
                         apgd_targets=1, square_queries=20, purifier=False, out=str(tmp_path / "np"), batch_size=4)
    rep = evaluate_adaptive(None, live_ckpts[1], cfg, data=(x, y), echo=lambda *a, **k: None)
    assert rep["clean"]["classifier"] == rep["clean"]["defended"] == 100.0
    assert rep["checkpoints"] == {"vaegan": None, "classifier": checkpoint.file_sha256(live_ckpts[1])}
    assert rep["runtime"]["backend"] == "torch classifier (no purifier)"
    assert rep["attacks"]["full"]["0.3"]["accuracy"] < 100.0  # the classifier's own gradient fools it
    md = (tmp_path / "np" / "adaptive.md").read_text()
    assert md.startswith("# Adaptive attacks on the classifier alone (no purifier)") and "vaegan none" in md
    assert rep["any"]["0.3"] <= min(rep["attacks"][a]["0.3"]["accuracy"] for a in ("full", "apgd", "square"))
    # a report of the classifier alone does not merge with one of the purified pipeline (other checkpoints)
    with_purifier = {**rep, "checkpoints": {"vaegan": "0" * 64, "classifier": rep["checkpoints"]["classifier"]}}
    with pytest.raises(VaeganError, match="differ in checkpoints"):
        merge_reports([rep, with_purifier])


def test_no_purifier_refuses_what_needs_one(tmp_path):
    with pytest.raises(VaeganError, match=r"--no-purifier: latent attacks the purifier; choose --attacks from bpda, "
                                          r"full, apgd, fab, square, transfer"):
        AdaptiveConfig(attacks=("full", "latent"), purifier=False)
    r = CliRunner().invoke(adaptive_cli, ["--no-purifier", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and r.output.strip() == (
        "Error: --no-purifier: bpda_eot, latent attack the purifier; choose --attacks from bpda, full, apgd, fab, "
        "square, transfer")
    r = CliRunner().invoke(adaptive_cli, ["--no-purifier", "--attacks", "full", "--checkpoint", "x.pt",
                                          "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and r.output.strip() == (
        "Error: --checkpoint and --no-purifier: the classifier alone has no VAE-GAN; pass one of them")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
