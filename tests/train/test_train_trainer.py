import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaegan.train import checkpoint, trainer
from vaegan.train.config import ClassifierArgs, ClassifierConfig, PurifierConfig, VAEGANArgs, VAEGANConfig
from vaegan.train.errors import VaeganError

from ..conftest import requires_data

TINY_V = dict(train_limit=256, eval_limit=64, batch_size=64, model=VAEGANArgs(latent_dim=8, width=8))


@requires_data
def test_vaegan_trains_and_resumes(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "v"
    m1 = trainer.train_vaegan(VAEGANConfig(out=str(out), epochs=1, **TINY_V))
    assert all(torch.isfinite(torch.tensor(v)) for v in m1.values())
    ck = checkpoint.load_raw(out / "ckpt.pt")
    assert ck["epoch"] == 1 and ck["step"] == 4 and "optimizer" in ck and ck["config"]["epochs"] == 1
    assert "optimizer" not in checkpoint.load_raw(out / "model.pt")
    # resume continues from epoch 1 to 2 with the same step counter
    trainer.train_vaegan(VAEGANConfig(out=str(out), epochs=2, **TINY_V), resume=True)
    ck2 = checkpoint.load_raw(out / "ckpt.pt")
    assert ck2["epoch"] == 2 and ck2["step"] == 8
    vg, _ = checkpoint.load_model(out / "model.pt", "vaegan")
    assert vg.args.latent_dim == 8
    # a third epoch with --lr-decay-epochs 1 decays the optimizer's learning rate from the resumed state
    trainer.train_vaegan(VAEGANConfig(out=str(out), epochs=3, lr_decay_epochs=1, **TINY_V), resume=True)
    ck3 = checkpoint.load_raw(out / "ckpt.pt")
    lr_last = ck3["optimizer"]["eg"]["param_groups"][0]["lr"]
    assert ck3["epoch"] == 3 and 0.1 * 3e-4 < lr_last < 0.5 * 3e-4


def test_lr_decay_is_constant_then_linear_to_ten_percent():
    scale = [trainer._lr_scale(s, epochs=4, decay_epochs=2, steps_per_epoch=10) for s in range(41)]
    assert scale[:21] == [1.0] * 21  # the first 2 epochs: a shorter run with the same lr is an exact prefix
    assert all(a > b for a, b in zip(scale[20:], scale[21:]))
    assert abs(scale[30] - 0.55) < 1e-12 and abs(scale[40] - 0.1) < 1e-12
    assert trainer._lr_scale(5, epochs=4, decay_epochs=0, steps_per_epoch=10) == 1.0


@requires_data
def test_classifier_learns(tmp_path):
    torch.set_num_threads(1)
    cfg = ClassifierConfig(out=str(tmp_path / "c"), epochs=2, train_limit=1024, eval_limit=256, batch_size=64,
                           lr=0.05, model=ClassifierArgs(width_div=16, fc_width=32))
    m = trainer.train_classifier(cfg)
    assert m["test_acc"] > 18.0  # well above the 10% of chance after 32 steps (measured: 23%)


def test_corruption_is_linf_bounded():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 1, 28, 28)
    xc = trainer.corrupt(x, 0.3, 1.0, g)
    assert (xc - x).abs().max() <= 0.3 + 1e-6 and xc.min() >= 0 and xc.max() <= 1
    assert (xc != x).any(dim=(1, 2, 3)).float().mean() > 0.9


@requires_data
def test_torchrun_two_processes(tmp_path):
    """The same trainer under torchrun with 2 gloo processes (DDP)."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "vaegan.train.cli_entry", "vaegan", "--out", str(out), "--epochs", "1", "--train-limit", "256",
           "--eval-limit", "64", "--batch-size", "32", "--latent-dim", "8", "--width", "8", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = checkpoint.load_raw(Path(out) / "ckpt.pt")
    # 256 images / (32 per process * 2 processes) = 4 steps
    assert ck["world_size"] == 2 and ck["step"] == 4 and ck["epoch"] == 1


@requires_data
def test_purifier_finetune_trains_resumes_and_loads(tmp_path, tiny_vaegan_ckpt, tiny_classifier_ckpt):
    """`vaegan-train purifier` on tiny nets: finite losses and metrics, a vaegan-kind checkpoint that records its
    start point, resumable with the same step counter."""
    torch.set_num_threads(1)
    out = tmp_path / "p"
    cfg = dict(out=str(out), init=str(tiny_vaegan_ckpt), classifier=str(tiny_classifier_ckpt), train_limit=128,
               eval_limit=32, batch_size=32, adaptive_steps=2)
    m = trainer.train_purifier(PurifierConfig(epochs=1, guide_loss="ce+logits", **cfg))
    assert all(torch.isfinite(torch.tensor(float(v))) for v in m.values())
    for key in ("guide", "clf_acc_rec", "oblivious_pgd_acc", "adaptive_pgd_acc"):
        assert key in m
    ck = checkpoint.load_raw(out / "ckpt.pt")
    assert ck["kind"] == "vaegan" and ck["epoch"] == 1 and ck["step"] == 4
    assert ck["config"]["guide_weight"] == PurifierConfig().guide_weight and ck["init_config"] == {}
    assert ck["config"]["guide_loss"] == "ce+logits"
    start, _ = checkpoint.load_model(tiny_vaegan_ckpt, "vaegan")
    tuned, _ = checkpoint.load_model(out / "model.pt", "vaegan")
    assert tuned.args.latent_dim == 8
    assert not torch.equal(start.encoder.head.weight, tuned.encoder.head.weight)
    trainer.train_purifier(PurifierConfig(epochs=2, **cfg), resume=True)
    assert checkpoint.load_raw(out / "ckpt.pt")["step"] == 8
    # --encoder-width / --decoder-width: E and G widened (function-preserving) before fine-tuning; the checkpoint
    # rebuilds the wider nets, D keeps the init's width
    cfg["out"] = str(tmp_path / "wide")
    trainer.train_purifier(PurifierConfig(epochs=1, encoder_width=10, decoder_width=12, **cfg))
    wide, ck = checkpoint.load_model(tmp_path / "wide" / "model.pt", "vaegan")
    assert (wide.encoder.width, wide.decoder.width, wide.discriminator.body[0].out_channels) == (10, 12, 8)
    assert (ck["model_args"]["encoder_width"], ck["model_args"]["decoder_width"]) == (10, 12)
    trainer.train_purifier(PurifierConfig(epochs=2, encoder_width=10, decoder_width=12, **cfg), resume=True)
    assert checkpoint.load_raw(tmp_path / "wide" / "ckpt.pt")["step"] == 8
    with pytest.raises(VaeganError, match="can only grow"):
        trainer.train_purifier(PurifierConfig(epochs=1, decoder_width=4, **cfg))


def test_purifier_inputs_are_the_four_groups_within_their_budgets(tiny_vaegan_ckpt, tiny_classifier_ckpt):
    torch.manual_seed(0)
    vg, _ = checkpoint.load_model(tiny_vaegan_ckpt, "vaegan")
    clf, _ = checkpoint.load_model(tiny_classifier_ckpt, "classifier")
    x, y = torch.rand(40, 1, 28, 28), torch.randint(0, 10, (40,))
    cfg = PurifierConfig(noise_frac=0.25, oblivious_frac=0.25, adaptive_frac=0.25, noise_eps=0.3,
                         oblivious_eps=0.2, adaptive_eps=0.1, adaptive_steps=3)
    xi = trainer._purifier_inputs(vg, clf, x, y, cfg, torch.Generator().manual_seed(0))
    d = (xi - x).abs().flatten(1).max(1).values
    assert xi.shape == x.shape and xi.min() >= 0 and xi.max() <= 1
    assert (d[:10] == 0).all()                                   # clean
    assert (d[10:20] > 0).all() and (d[10:20] <= 0.3 + 1e-6).all()  # sign noise
    assert (d[20:30] > 0).all() and (d[20:30] <= 0.2 + 1e-6).all()  # FGSM-RS on the classifier
    assert (d[30:] > 0).all() and (d[30:] <= 0.1 + 1e-6).all()      # PGD through classifier(G(mu_E(.)))
    with pytest.raises(ValueError, match="must be <= 1"):
        trainer._purifier_inputs(vg, clf, x, y, PurifierConfig(noise_frac=0.5, oblivious_frac=0.5, adaptive_frac=0.5),
                                 torch.Generator())


def test_guide_losses(tiny_classifier_ckpt, tmp_path):
    """``ce``: cross-entropy with the labels; ``logits``: zero when the purified image is the clean one (the
    classifier sees the same thing), positive otherwise, and blind to the labels; ``ce+logits``: their sum; another
    name is a one-line error before any work."""
    torch.manual_seed(0)
    clf, _ = checkpoint.load_model(tiny_classifier_ckpt, "classifier")
    clf.eval()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    xm = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    ce = torch.nn.functional.cross_entropy(clf(xm), y)
    assert torch.allclose(trainer._guide(clf, xm, x, y, "ce"), ce)
    assert trainer._guide(clf, x, x, y, "logits") == 0
    lg = trainer._guide(clf, xm, x, y, "logits")
    assert lg > 0 and torch.equal(lg, trainer._guide(clf, xm, x, (y + 1) % 10, "logits"))
    assert torch.allclose(trainer._guide(clf, xm, x, y, "ce+logits"), ce + lg)
    with pytest.raises(VaeganError, match=r"--guide-loss 'kl': choose from ce, logits, ce\+logits"):
        trainer.train_purifier(PurifierConfig(out=str(tmp_path / "p"), guide_loss="kl"))


def test_training_pgd_raises_the_loss_it_attacks():
    torch.manual_seed(0)
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))  # any differentiable classifier
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    eps = torch.full((16, 1, 1, 1), 0.1)
    xa = trainer._pgd(clf, x, y, eps, 5, torch.Generator().manual_seed(0))
    xf = trainer._fgsm_rs(clf, x, y, eps, torch.Generator().manual_seed(0))
    ce = lambda v: torch.nn.functional.cross_entropy(clf(v), y).item()  # noqa: E731
    assert (xa - x).abs().max() <= 0.1 + 1e-6 and (xf - x).abs().max() <= 0.1 + 1e-6
    assert ce(xa) > ce(x) and ce(xf) > ce(x)


def test_training_on_a_bad_device_is_a_one_line_error(tmp_path):
    from click.testing import CliRunner

    from vaegan.train.cli import train_cli

    r = CliRunner().invoke(train_cli, ["vaegan", "--out", str(tmp_path / "v"), "--device", "gpu0"])
    assert r.exit_code == 2 and r.output.strip() == "Error: unknown device 'gpu0' (expected cpu, cuda or cuda:N)"
    if not torch.cuda.is_available():
        r = CliRunner().invoke(train_cli, ["classifier", "--out", str(tmp_path / "c"), "--device", "cuda"])
        assert r.exit_code == 2 and "torch sees no CUDA device" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "v").exists() and not (tmp_path / "c").exists()  # refused before anything was written


@requires_data
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_all_three_trainers_run_on_cuda_and_write_cpu_checkpoints(tmp_path, tiny_vaegan_ckpt, tiny_classifier_ckpt):
    """Classifier, VAE-GAN and purifier fine-tuning on CUDA: finite metrics, checkpoints with CPU tensors (they load
    with and without map_location), resumable on the device, and the CPU generators' draws: the first step of a
    VAE-GAN run on CUDA lands near the same run's first step on the CPU."""
    out = tmp_path / "cuda"
    m = trainer.train_classifier(ClassifierConfig(out=str(out / "c"), epochs=1, train_limit=256, eval_limit=64,
                                                  batch_size=64, model=ClassifierArgs(width_div=16, fc_width=32),
                                                  device="cuda"))
    assert all(torch.isfinite(torch.tensor(float(v))) for v in m.values())
    trainer.train_vaegan(VAEGANConfig(out=str(out / "v"), device="cuda", epochs=1, **TINY_V))
    trainer.train_vaegan(VAEGANConfig(out=str(out / "v"), device="cuda", epochs=2, **TINY_V), resume=True)
    ck = torch.load(out / "v" / "ckpt.pt", weights_only=True)  # no map_location: every tensor must be a CPU one
    assert ck["step"] == 8 and all(v.device.type == "cpu" for v in ck["model"].values())
    assert all(t.device.type == "cpu" for s in ck["optimizer"]["eg"]["state"].values() for t in s.values()
               if isinstance(t, torch.Tensor))
    pm = trainer.train_purifier(PurifierConfig(out=str(out / "p"), init=str(tiny_vaegan_ckpt),
                                               classifier=str(tiny_classifier_ckpt), train_limit=128, eval_limit=32,
                                               batch_size=32, adaptive_steps=2, epochs=1, device="cuda"))
    assert all(torch.isfinite(torch.tensor(float(v))) for v in pm.values())
    checkpoint.load_model(out / "p" / "model.pt", "vaegan")
    one = dict(TINY_V, train_limit=64, batch_size=64, epochs=1)
    trainer.train_vaegan(VAEGANConfig(out=str(out / "v1c"), device="cuda", **one))
    trainer.train_vaegan(VAEGANConfig(out=str(out / "v1p"), device="cpu", **one))
    a = checkpoint.load_raw(out / "v1c" / "model.pt")["model"]
    b = checkpoint.load_raw(out / "v1p" / "model.pt")["model"]
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=1e-3, rtol=1e-2), k  # one Adam step from the same init and draws


def test_the_shared_epoch_loop_logs_checkpoints_and_resumes(tmp_path, capsys):
    """``_run_epochs``, the loop of the three trainers: the batch step on every full batch with the running step
    counter, one log line and both checkpoints (ckpt.pt with the optimizer, model.pt without) per epoch, and a
    resumed run that continues from ckpt.pt's epoch, step, best metric, weights and optimizer state."""
    from types import SimpleNamespace

    ds = torch.utils.data.TensorDataset(torch.rand(20, 3), torch.zeros(20, dtype=torch.long))  # 2 batches of 8
    cfg = SimpleNamespace(out=str(tmp_path), seed=0, batch_size=8, epochs=1)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps = []

    def train_step(x, y, step, gen):
        steps.append(step)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    def evaluate(metrics):
        metrics["score"] = -float(len(steps))  # falls every epoch: the best stays the first epoch's
        return f"loss {metrics['loss']:.3f} score {metrics['score']:g}"

    def run(resume):
        start = trainer._resume(cfg, resume, "toy", model, {"opt": opt}, -math.inf)
        return start, trainer._run_epochs(cfg, "toy", (0, 1, torch.device("cpu")), ds, model, {"opt": opt},
                                          {"kind": "toy", "config": {}}, start, ("score", max), ("loss",),
                                          model.train, train_step, evaluate)

    assert run(False)[0] == (0, 0, -math.inf) and steps == [0, 1]
    ck = checkpoint.load_raw(tmp_path / "ckpt.pt")
    assert (ck["kind"], ck["epoch"], ck["step"], ck["best_metric"]) == ("toy", 1, 2, -2.0)
    assert "momentum_buffer" in ck["optimizer"]["opt"]["state"][0]
    assert "optimizer" not in checkpoint.load_raw(tmp_path / "model.pt")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_parameters()
    opt.state.clear()
    assert trainer._resume(cfg, True, "toy", model, {"opt": opt}, -math.inf) == (1, 2, -2.0)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items()) and len(opt.state) == 2
    cfg.epochs = 3
    start, metrics = run(True)
    assert start == (1, 2, -2.0) and steps == [0, 1, 2, 3, 4, 5] and metrics["score"] == -6.0
    ck = checkpoint.load_raw(tmp_path / "ckpt.pt")
    assert (ck["epoch"], ck["step"], ck["best_metric"]) == (3, 6, -2.0)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 2", "epoch 3"]
    assert lines[2].startswith("epoch 3: loss ") and lines[2].endswith("s") and "score -6" in lines[2]
    assert trainer._resume(cfg, True, "other kind", model, {"opt": opt}, 0.5) == (0, 0, 0.5)
