"""Adversarial training of the classifier (``vaegan-train classifier --adversarial pgd|trades``) on tiny data."""

import pytest
import torch
from click.testing import CliRunner

from vaegan.train import checkpoint, trainer
from vaegan.train.cli import train_cli
from vaegan.train.config import ClassifierArgs, ClassifierConfig
from vaegan.train.errors import VaeganError

from ..conftest import requires_data

TINY = dict(batch_size=64, lr=0.05, model=ClassifierArgs(width_div=16, fc_width=32))


@requires_data
@pytest.mark.slow
def test_pgd_training_is_robust_where_plain_training_is_not(tmp_path):
    """Same data, seed and net: PGD-AT at eps 0.2 keeps far more accuracy under PGD-10 than plain training, at a cost
    in clean accuracy and training loss."""
    torch.set_num_threads(1)
    common = dict(epochs=3, train_limit=2048, eval_limit=256, eps=0.2, **TINY)
    plain = trainer.train_classifier(ClassifierConfig(out=str(tmp_path / "plain"), **common))
    at = trainer.train_classifier(ClassifierConfig(out=str(tmp_path / "at"), adversarial="pgd", adv_steps=3, **common))
    assert "test_pgd_acc" not in plain and at["train_loss"] > plain["train_loss"]
    xe, ye = trainer._eval_set(ClassifierConfig(eval_limit=256), torch.device("cpu"))
    clf_plain, _ = checkpoint.load_model(tmp_path / "plain" / "model.pt", "classifier")
    clf_at, ck = checkpoint.load_model(tmp_path / "at" / "model.pt", "classifier")
    pgd_plain = trainer._pgd_accuracy(clf_plain, xe, ye, 0.2, seed=0)
    pgd_at = trainer._pgd_accuracy(clf_at, xe, ye, 0.2, seed=0)
    assert pgd_at == pytest.approx(at["test_pgd_acc"])  # the logged check is the same attack on the same images
    assert pgd_plain < 5.0 < 20.0 < pgd_at < at["test_acc"]
    assert ck["config"]["adversarial"] == "pgd" and ck["config"]["eps"] == 0.2


@requires_data
def test_trades_runs_and_plain_ignores_the_adversarial_options(tmp_path):
    torch.set_num_threads(1)
    one = dict(epochs=1, train_limit=256, eval_limit=64, **TINY)
    m = trainer.train_classifier(ClassifierConfig(out=str(tmp_path / "t"), adversarial="trades", trades_beta=6.0,
                                                  adv_steps=2, eps_ramp_epochs=0.5, adv_eval_limit=32, **one))
    assert all(torch.isfinite(torch.tensor(float(v))) for v in m.values()) and 0 <= m["test_pgd_acc"] <= 100
    # adversarial="none" does not read eps / steps / beta: two plain runs with different ones are the same weights
    trainer.train_classifier(ClassifierConfig(out=str(tmp_path / "a"), **one))
    trainer.train_classifier(ClassifierConfig(out=str(tmp_path / "b"), eps=0.3, adv_steps=1, trades_beta=1.0, **one))
    a, b = (checkpoint.load_raw(tmp_path / d / "model.pt")["model"] for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad, message", [
    (dict(adversarial="madry"), r"--adversarial 'madry': choose from none, pgd, trades"),
    (dict(adversarial="pgd", eps=0.0), r"--eps 0: adversarial training needs a budget in \(0, 1\]"),
    (dict(adversarial="pgd", eps=1.5), r"--eps 1.5: adversarial training needs a budget"),
    (dict(adversarial="pgd", adv_steps=0), r"--adv-steps 0: must be at least 1"),
    (dict(adversarial="pgd", adv_alpha=-0.01), r"--adv-alpha -0.01: must be positive"),
    (dict(adversarial="trades", trades_beta=-1.0), r"--trades-beta -1: must be >= 0"),
    (dict(adversarial="trades", eps_ramp_epochs=-1.0), r"--eps-ramp-epochs -1: must be >= 0"),
])
def test_bad_adversarial_options_are_one_line_errors(tmp_path, bad, message):
    with pytest.raises(VaeganError, match=message):
        trainer.train_classifier(ClassifierConfig(out=str(tmp_path / "c"), **bad))
    assert not (tmp_path / "c").exists()


def test_cli_bad_adversarial_option(tmp_path):
    r = CliRunner().invoke(train_cli, ["classifier", "--out", str(tmp_path / "c"), "--adversarial", "pgd",
                                       "--adv-steps", "0"])
    assert r.exit_code == 2 and r.output.strip() == "Error: --adv-steps 0: must be at least 1"
