"""vaegan-eval-adaptive (vaegan.adaptive.cli): options generated from AdaptiveConfig, one-line errors, the report."""

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from vaegan.adaptive.cli import adaptive_cli
from vaegan.adaptive.registry import DEFAULT_ATTACKS
from vaegan.train.cli import build_config
from vaegan.train.config import PurifyConfig
from vaegan.adaptive.config import AdaptiveConfig
from vaegan.adaptive.report import unpack_mask
from vaegan.train.errors import VaeganError

from ..conftest import requires_data


def _config(args: list[str]) -> AdaptiveConfig:
    """The AdaptiveConfig that ``vaegan-eval-adaptive ARGS`` would run (click parses, nothing runs)."""
    return build_config(AdaptiveConfig, adaptive_cli.make_context("vaegan-eval-adaptive", args).params)


def test_the_options_are_generated_from_the_config():
    assert _config([]) == AdaptiveConfig() and AdaptiveConfig().attacks == DEFAULT_ATTACKS
    assert "full_eot" not in DEFAULT_ATTACKS  # opt-in: eot_samples x the cost of full
    cfg = _config(["--attacks", "bpda, full_eot", "--eps", "0.1,0.3", "--attack-steps", "7", "--curve", "2,7",
                   "--attack-restarts", "2", "--attack-seed", "5", "--steps", "4", "--restarts", "3", "--seed", "6",
                   "--latent-pool", "50", "--loss", "margin", "--surrogate-train-limit", "100"])
    assert (cfg.attacks, cfg.eps, cfg.steps, cfg.checkpoints, cfg.restarts, cfg.seed) == (
        ("bpda", "full_eot"), (0.1, 0.3), 7, (2, 7), 2, 5)
    assert (cfg.latent_pool, cfg.loss, cfg.surrogate_train_limit) == (50, "margin", 100)
    assert cfg.purify == PurifyConfig(steps=4, restarts=3, seed=6)
    names = {o for p in adaptive_cli.params for o in p.opts}
    for f in dataclasses.fields(AdaptiveConfig):  # every field has its option (the purifier's are PurifyConfig's)
        assert f.name == "purify" or f.metadata.get("option", "--" + f.name.replace("_", "-")) in names, f.name
    r = CliRunner().invoke(adaptive_cli, ["--loss", "hinge"])
    assert r.exit_code == 2 and "'hinge' is not one of 'ce', 'margin'" in r.output


def test_bad_input_is_a_one_line_error():
    with pytest.raises(VaeganError, match="unknown adaptive attack 'pgd'"):
        AdaptiveConfig(attacks=("bpda", "pgd"))
    with pytest.raises(VaeganError, match="eps 1.5 out of range"):
        AdaptiveConfig(eps=(0.1, 1.5))
    r = CliRunner().invoke(adaptive_cli, ["--attacks", "bpda,deepfool"])
    assert r.exit_code == 2 and r.output.strip() == (
        "Error: unknown adaptive attack 'deepfool' (expected one of bpda, bpda_eot, full, full_eot, apgd, fab, square, "
        "transfer, latent)")
    for bad in ("-0.1", "0.1,2"):
        r = CliRunner().invoke(adaptive_cli, ["--eps", bad])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "out of range" in r.output
    r = CliRunner().invoke(adaptive_cli, ["--eps", "a"])
    assert r.exit_code == 2 and "expected comma-separated numbers" in r.output and "Traceback" not in r.output
    with pytest.raises(VaeganError, match="unknown device 'gpu0'"):
        AdaptiveConfig(device="gpu0")
    if not torch.cuda.is_available():
        r = CliRunner().invoke(adaptive_cli, ["--device", "cuda"])
        assert r.exit_code == 2 and r.output.startswith("Error: device 'cuda': torch sees no CUDA device")


@requires_data
def test_cli_writes_the_report_on_4_images(live_ckpts, tiny_vaegan_ckpt, artifacts, tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"n": 4, "table": {
        "none": {"clean": 10.0, "pgd40_eps0.1": 0.0},
        "vaegan (T=10, eta=0.02, lam=1, R=1)": {"clean": 9.0, "pgd40_eps0.1": 50.0}}}))
    r = CliRunner().invoke(adaptive_cli, [
        "--checkpoint", str(live_ckpts[0]), "--classifier", str(live_ckpts[1]), "--n", "4",
        "--eps", "0.1,0.3", "--attack-steps", "2", "--curve", "1,2", "--eot-samples", "2", "--eot-restarts", "2",
        "--attacks", "bpda,bpda_eot,full,full_eot,apgd,fab,square,transfer,latent",
        "--apgd-targets", "1", "--fab-targets", "2", "--square-queries", "3", "--artifacts", str(artifacts),
        "--surrogate", str(live_ckpts[1]), "--steps", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    # artifacts exported from other weights are refused: square must query the model under test
    r2 = CliRunner().invoke(adaptive_cli, ["--checkpoint", str(tiny_vaegan_ckpt), "--classifier", str(live_ckpts[1]),
                                           "--n", "4", "--attacks", "square", "--artifacts", str(artifacts),
                                           "--out", str(tmp_path / "other")])
    assert r2.exit_code == 2 and "exported from another checkpoint" in r2.output
    rep = json.loads((out / "adaptive.json").read_text())
    assert rep["n"] == 4 and set(rep["attacks"]) == {"bpda", "bpda_eot", "full", "full_eot", "apgd", "fab", "square",
                                                     "transfer", "latent"}
    for name, per in rep["attacks"].items():
        assert set(per) == {"0.1", "0.3"}
        for e, v in per.items():
            assert 0 <= v["accuracy"] <= 100 and v["linf"] <= float(e) + 1e-5
            assert v["accuracy"] == pytest.approx(100 * (1 - unpack_mask(v["fooled"], 4).mean()))
    assert set(rep["attacks"]["bpda"]["0.1"]["curve"]) == {"1", "2"}
    # each targeted attack records its own number of target classes
    assert rep["attacks"]["apgd"]["0.1"]["budget"] == {"steps": 2, "apgd_targets": 1}
    assert rep["attacks"]["fab"]["0.1"]["budget"] == {"steps": 2, "fab_targets": 2}
    for name in ("bpda", "full", "transfer", "latent"):  # deterministic scoring: the table agrees with the curve
        for e in ("0.1", "0.3"):
            assert rep["attacks"][name][e]["accuracy"] == pytest.approx(rep["attacks"][name][e]["curve"]["2"])
    assert rep["any"]["0.3"] <= min(rep["attacks"][a]["0.3"]["accuracy"] for a in ("bpda", "full", "apgd", "fab", "square"))
    md = (out / "adaptive.md").read_text()
    assert "full_eot attacks and is scored on a *randomized* purifier" in md
    assert "BPDA + PGD" in md and "oblivious pgd40 (purified), first 4" in md and "Convergence" in md
    assert (out / "adaptive.png").stat().st_size > 1000
