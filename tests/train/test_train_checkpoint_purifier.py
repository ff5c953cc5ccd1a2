import pytest
import torch

from vaegan.train import checkpoint
from vaegan.train.config import PurifyConfig
from vaegan.train.errors import VaeganError
from vaegan.train.purifier import (Defended, Purifier, defense_gan_config, latent_loss, purify, restart_noise)


def test_checkpoint_roundtrip_and_errors(tiny_vaegan_ckpt, tiny_classifier_ckpt, tmp_path):
    vg, ck = checkpoint.load_model(tiny_vaegan_ckpt, "vaegan")
    assert ck["kind"] == "vaegan" and ck["model_args"]["latent_dim"] == 8 and not vg.training
    with pytest.raises(VaeganError, match=r"tiny_classifier\.pt: is a classifier checkpoint, expected a vaegan"):
        checkpoint.load_model(tiny_classifier_ckpt, "vaegan")
    with pytest.raises(VaeganError, match=r"missing\.pt: checkpoint not found"):
        checkpoint.load_model(tmp_path / "missing.pt", "vaegan")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(tiny_vaegan_ckpt.read_bytes()[:2000])
    with pytest.raises(VaeganError, match=r"corrupt\.pt: not a readable checkpoint"):
        checkpoint.load_model(bad, "vaegan")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(VaeganError, match=r"other\.pt: not a vaegan checkpoint"):
        checkpoint.load_model(other, "classifier")


@pytest.fixture(scope="module")
def vg(tiny_vaegan_ckpt):
    return checkpoint.load_model(tiny_vaegan_ckpt, "vaegan")[0]


def test_t0_is_the_vae_reconstruction(vg):
    x = torch.rand(4, 1, 28, 28)
    out = purify(vg, x, PurifyConfig(steps=0)).x
    assert torch.allclose(out, vg.reconstruct(x), atol=1e-6)


def test_descent_lowers_the_objective(vg):
    torch.manual_seed(1)
    x = torch.rand(6, 1, 28, 28)
    z0 = vg.encoder(x)[0]
    before = latent_loss(vg, z0, x, lam=1.0).detach()
    res = purify(vg, x, PurifyConfig(steps=20, eta=0.01, lam=1.0))
    assert (res.loss < before).all()
    # and it matches latent_loss evaluated at the returned z
    assert torch.allclose(res.loss, latent_loss(vg, res.z, x, 1.0).detach(), atol=1e-4)


def test_restarts_keep_the_lowest_loss(vg):
    x = torch.rand(5, 1, 28, 28)
    cfg = PurifyConfig(steps=3, restarts=4, noise=1.0, seed=3)
    noise = restart_noise(cfg, 5, vg.args.latent_dim)
    assert noise.shape == (4, 5, 8) and (noise[0] == 0).all()
    best = purify(vg, x, cfg, noise=noise)
    singles = torch.stack([purify(vg, x, cfg, noise=noise[r:r + 1]).loss for r in range(4)])
    assert torch.allclose(best.loss, singles.min(0).values, atol=1e-4)


def test_pixel_mode_and_defense_gan(vg):
    x = torch.rand(3, 1, 28, 28)
    p = purify(vg, x, PurifyConfig(mode="pixel", steps=3, eta=0.01)).x
    assert p.shape == x.shape and 0 <= p.min() and p.max() <= 1
    dg = purify(vg, x, defense_gan_config(steps=4, restarts=2))
    assert dg.x.shape == x.shape and torch.isfinite(dg.loss).all()
    with pytest.raises(ValueError, match="unknown purification mode 'bogus'"):
        purify(vg, x, PurifyConfig(mode="bogus"))


def test_defended_module_gradients(vg, tiny_classifier_ckpt):
    clf, _ = checkpoint.load_model(tiny_classifier_ckpt, "classifier")
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    full = Defended(Purifier(vg, PurifyConfig(steps=2), differentiable=True), clf)
    g, = torch.autograd.grad(full(x).sum(), x)
    assert g.abs().sum() > 0  # gradients flow through the unrolled loop
    plain = Defended(Purifier(vg, PurifyConfig(steps=2)), clf)
    assert torch.allclose(plain(x.detach()), full(x).detach(), atol=1e-5)
