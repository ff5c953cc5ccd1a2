import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vaegan.train import checkpoint
from vaegan.train.attacks import AttackSpec, load_adversarial, run_attack, save_adversarial
from vaegan.train.cli import attack_cli, eval_cli, train_cli
from vaegan.train.errors import VaeganError

from ..conftest import requires_data


@pytest.fixture(scope="module")
def clf(tiny_classifier_ckpt):
    return checkpoint.load_model(tiny_classifier_ckpt, "classifier")[0]


@pytest.mark.parametrize("name", ["fgsm", "pgd", "tpgd"])
def test_linf_attacks_respect_budget(clf, name):
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    spec = AttackSpec(name, eps=0.1, steps=3)
    x_adv, targets = run_attack(clf, x, y, spec)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv != x).any()
    if name == "tpgd":
        assert (targets != y).all()
    else:
        assert targets is None


def test_adversarial_file_roundtrip(clf, tmp_path):
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    spec = AttackSpec("fgsm", eps=0.2)
    x_adv, _ = run_attack(clf, x, y, spec)
    p = save_adversarial(tmp_path / "a.npz", x_adv, y, torch.arange(4), spec, None, {"split": "test"})
    d = load_adversarial(p)
    assert np.allclose(d["x_adv"], x_adv.numpy()) and d["y"].tolist() == [0, 1, 2, 3]
    assert d["meta"]["name"] == "fgsm" and d["meta"]["tag"] == "fgsm_eps0.2"
    assert d["meta"]["eps"] == 0.2 and d["meta"]["split"] == "test" and d["target"].tolist() == [-1] * 4
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(VaeganError, match=r"bad\.npz: not a vaegan adversarial dataset"):
        load_adversarial(tmp_path / "bad.npz")


def test_bad_attack_options_are_one_line_errors():
    r = CliRunner().invoke(attack_cli, ["--attack", "deepfool"])
    assert r.exit_code == 2 and r.output.strip() == "Error: unknown attack 'deepfool' (expected one of fgsm, pgd, tpgd, cw)"
    r = CliRunner().invoke(attack_cli, ["--attack", "pgd", "--eps", "1.5"])
    assert r.exit_code == 2 and "eps 1.5 out of range" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(eval_cli, ["--eps", "0.1,-0.2"])
    assert r.exit_code == 2 and "eps -0.2 out of range" in r.output


def test_wrong_and_corrupt_checkpoints_are_one_line_errors(tiny_vaegan_ckpt, tiny_classifier_ckpt, tmp_path):
    r = CliRunner().invoke(attack_cli, ["--attack", "fgsm", "--classifier", str(tiny_vaegan_ckpt), "--n", "4"])
    assert r.exit_code == 2 and "is a vaegan checkpoint, expected a classifier checkpoint" in r.output
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00" * 100)
    r = CliRunner().invoke(eval_cli, ["--checkpoint", str(bad), "--classifier", str(tiny_classifier_ckpt), "--quick"])
    assert r.exit_code == 2 and "corrupt.pt: not a readable checkpoint" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_wrong_data_root_is_one_line_error(tmp_path):
    r = CliRunner().invoke(train_cli, ["classifier", "--data-root", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no Fashion-MNIST there" in r.output and len(r.output.strip().splitlines()) == 1


@requires_data
def test_eval_quick_writes_report(tiny_vaegan_ckpt, tiny_classifier_ckpt, tmp_path):
    out = tmp_path / "rep"
    r = CliRunner().invoke(eval_cli, ["--checkpoint", str(tiny_vaegan_ckpt), "--classifier", str(tiny_classifier_ckpt),
                                      "--quick", "--n", "12", "--steps", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["n"] == 12
    rows = rep["table"]
    assert "none" in rows and "VAE reconstruction only (T=0)" in rows
    assert set(rows["none"]) == {"clean", "fgsm_eps0.1", "fgsm_eps0.3", "pgd10_eps0.1", "pgd10_eps0.3"}
    assert all(0 <= v <= 100 for row in rows.values() for v in row.values())
    # per-class clean accuracy: one entry per class present, and their weighted mean is the row's clean accuracy
    from vaegan.train.data import CLASSES, test_subset

    y = test_subset(12)[1]
    counts = {c: int((y == k).sum()) for k, c in enumerate(CLASSES) if (y == k).any()}
    for row, per in rep["per_class_clean"].items():
        assert set(per) == set(counts)
        assert sum(per[c] * counts[c] for c in counts) / 12 == pytest.approx(rows[row]["clean"], abs=1e-4)
    assert "## Clean accuracy per class (%)" in (out / "report.md").read_text()
    for f in ("report.md", "grid.png", "accuracy_vs_eps.png"):
        assert (out / f).stat().st_size > 0
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@requires_data
def test_attack_cli_writes_dataset(tiny_classifier_ckpt, tmp_path):
    r = CliRunner().invoke(attack_cli, ["--attack", "pgd", "--eps", "0.1", "--steps", "2", "--n", "6",
                                        "--classifier", str(tiny_classifier_ckpt), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    d = load_adversarial(tmp_path / "test_pgd2_eps0.1_seed0.npz")
    assert d["x_adv"].shape == (6, 1, 28, 28) and d["index"].tolist() == list(range(6))
    assert d["meta"]["split"] == "test" and d["meta"]["steps"] == 2


def test_sweep_grid_parsing():
    from vaegan.train.cli import parse_grid

    assert parse_grid("steps=0,5; lam=0,10;eta=0.02") == {"steps": (0, 5), "lam": (0.0, 10.0), "eta": (0.02,)}
    for bad in ("steps", "mode=latent", "nope=1", "steps=a,b", ""):
        with pytest.raises(VaeganError, match="--grid"):
            parse_grid(bad)
    res = CliRunner().invoke(eval_cli, ["--sweep", "--grid", "T=1"])
    assert res.exit_code == 2 and "--grid" in res.output and "Traceback" not in res.output
