import os
import subprocess
import sys
from pathlib import Path

import torch

from vaegan.train import checkpoint, trainer
from vaegan.train.config import ClassifierArgs, ClassifierConfig, VAEGANArgs, VAEGANConfig

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
