"""The image contract through every stage, parametrised over two contracts: Fashion-MNIST's 1 x 28 x 28 x 10 and
an RGB 3 x 32 x 32 with 6 classes (tiny nets)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from vaegan.runtime.contract import FASHION_MNIST, ContractError, ImageContract, from_checkpoint
from vaegan.train import checkpoint
from vaegan.train.config import ClassifierArgs, PurifyConfig, VAEGANArgs
from vaegan.train.errors import VaeganError
from vaegan.train.models import VAEGAN, VGG16

RGB = ImageContract(3, 32, 32, ("a", "b", "c", "d", "e", "f"), (0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
CONTRACTS = pytest.mark.parametrize("contract", [FASHION_MNIST, RGB], ids=["fmnist-1x28x28x10", "rgb-3x32x32x6"])


def _save(path, kind, model, contract, **extra):
    checkpoint.save(path, {"kind": kind, "model": model.state_dict(), "model_args": asdict(model.args),
                           "contract": contract.to_dict(), **extra})
    return path


def test_contract_roundtrip_and_validation():
    for c in (FASHION_MNIST, RGB):
        assert ImageContract.from_dict(c.to_dict()) == c
        assert ImageContract.from_manifest({"preprocess": c.preprocess(), "classes": list(c.classes)}) == c
    assert from_checkpoint({}) == FASHION_MNIST  # the shipped checkpoints predate the key
    assert RGB.mode == "RGB" and FASHION_MNIST.mode == "L" and RGB.num_classes == 6
    with pytest.raises(ContractError, match="channels 2"):
        ImageContract(2, 8, 8, ("a", "b"), (0, 0), (1, 1))
    with pytest.raises(ContractError, match="1 class"):
        ImageContract(1, 8, 8, ("a",), (0,), (1,))
    with pytest.raises(ContractError, match="one value per channel"):
        ImageContract(3, 8, 8, ("a", "b"), (0,), (1,))
    with pytest.raises(ContractError, match=r"30 x 30 is not one the VAE-GAN takes.*multiples of 4"):
        VAEGAN(VAEGANArgs(latent_dim=4, width=4), ImageContract(1, 30, 30, ("a", "b"), (0,), (1,)))


@CONTRACTS
def test_nets_are_sized_from_the_contract(contract):
    torch.manual_seed(0)
    vg = VAEGAN(VAEGANArgs(latent_dim=8, width=8), contract).eval()
    clf = VGG16(ClassifierArgs(width_div=16, fc_width=32), contract).eval()
    x = torch.rand(3, *contract.shape)
    mu, logvar = vg.encoder(x)
    assert mu.shape == logvar.shape == (3, 8)
    assert vg.decoder(mu).shape == x.shape and vg.discriminator(x).shape == (3, 1)
    assert clf(x).shape == (3, contract.num_classes)
    r = __import__("vaegan.train.purifier", fromlist=["purify"]).purify(vg, x, PurifyConfig(steps=2, restarts=2))
    assert r.x.shape == x.shape and r.z.shape == (3, 8)


@CONTRACTS
def test_checkpoints_keep_the_contract_and_the_operating_point(contract, tmp_path):
    vg = VAEGAN(VAEGANArgs(latent_dim=8, width=8), contract)
    clf = VGG16(ClassifierArgs(width_div=16, fc_width=32), contract)
    pv = _save(tmp_path / "vg.pt", "vaegan", vg, contract, purify=asdict(PurifyConfig(steps=7, lam=3.0)))
    pc = _save(tmp_path / "clf.pt", "classifier", clf, contract)
    vg2, ck = checkpoint.load_model(pv, "vaegan")
    clf2, _ = checkpoint.load_model(pc, "classifier")
    assert vg2.contract == contract and clf2.contract == contract
    cfg = checkpoint.purify_config(ck, lam=None, eta=0.5)  # options given on top; None keeps the checkpoint's
    assert (cfg.steps, cfg.lam, cfg.eta) == (7, 3.0, 0.5)
    x = torch.rand(2, *contract.shape)
    with torch.no_grad():
        assert torch.equal(clf2.eval()(x), clf.eval()(x))
    checkpoint.check_pair(vg2, clf2, pv, pc)


def test_a_mismatch_between_purifier_and_classifier_names_both(tmp_path):
    vg = VAEGAN(VAEGANArgs(latent_dim=8, width=8), FASHION_MNIST)
    clf = VGG16(ClassifierArgs(width_div=16, fc_width=32), RGB)
    with pytest.raises(VaeganError, match=r"channels mismatch: purifier P has 1, classifier C has 3"):
        checkpoint.check_pair(vg, clf, "P", "C")
    rgb8 = ImageContract(3, 32, 32, tuple("abcdefgh"), RGB.mean, RGB.std)
    vg3 = VAEGAN(VAEGANArgs(latent_dim=8, width=8), rgb8)
    with pytest.raises(VaeganError, match=r"class-count mismatch: purifier P has 8 classes, classifier C has 6"):
        checkpoint.check_pair(vg3, clf, "P", "C")
    with pytest.raises(VaeganError, match=r"image size mismatch: P has 32 x 32, data set D has 28 x 28"):
        checkpoint.check_data(rgb8, ImageContract(3, 28, 28, tuple("abcdefgh"), RGB.mean, RGB.std), "P", "D")
    with pytest.raises(ContractError, match="class-count mismatch: the classifier has 10 outputs"):
        VGG16(ClassifierArgs(num_classes=10), RGB)


def test_shipped_weights_load_as_fashion_mnist_with_their_operating_point(shipped_vaegan, shipped_classifier):
    vg, ck = checkpoint.load_model(shipped_vaegan, "vaegan")
    clf, _ = checkpoint.load_model(shipped_classifier, "classifier")
    assert "contract" not in ck and vg.contract == FASHION_MNIST and clf.contract == FASHION_MNIST
    cfg = checkpoint.purify_config(ck)
    assert (cfg.steps, cfg.eta, cfg.lam) == (3, 0.005, 10.0)


@CONTRACTS
def test_pt2_classifier_is_accepted_and_a_static_batch_refused(contract, tmp_path):
    clf = VGG16(ClassifierArgs(width_div=16, fc_width=32), contract).eval()
    x = torch.rand(2, *contract.shape)
    ep = torch.export.export(clf, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(ep, str(tmp_path / "c.pt2"))
    m, ck = checkpoint.load_model(tmp_path / "c.pt2", "classifier")
    m.eval()  # harmless on the wrapper (torch.export programs refuse eval() themselves)
    assert m.contract.shape == contract.shape and m.contract.num_classes == contract.num_classes
    xs = torch.rand(5, *contract.shape, requires_grad=True)
    out = m(xs)
    out.sum().backward()  # differentiable: attacks and the purifier fine-tune work through it
    assert out.shape == (5, contract.num_classes) and xs.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(m(xs), clf(xs))
    torch.export.save(torch.export.export(clf, (x,)), str(tmp_path / "static.pt2"))
    with pytest.raises(VaeganError, match=r"static batch size 2.*dynamic_shapes=\{\"x\": \{0: torch.export.Dim"):
        checkpoint.load_model(tmp_path / "static.pt2", "classifier")


@CONTRACTS
def test_training_noise_and_augmentation_keep_the_shape(contract):
    from vaegan.train.trainer import _augment, corrupt

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, *contract.shape)
    assert _augment(x, g).shape == x.shape
    xc = corrupt(x, 0.3, 1.0, g)
    assert xc.shape == x.shape and (xc - x).abs().max() <= 0.3 + 1e-6 and not torch.equal(xc, x)


@CONTRACTS
def test_attacks_use_the_classifier_class_count(contract):
    from vaegan.train.attacks import AttackSpec, run_attack

    torch.manual_seed(0)
    clf = VGG16(ClassifierArgs(width_div=16, fc_width=32), contract).eval()
    x, y = torch.rand(6, *contract.shape), torch.arange(6) % contract.num_classes
    xa, t = run_attack(clf, x, y, AttackSpec("tpgd", eps=0.1, steps=2))
    assert xa.shape == x.shape and (t != y).all() and (t < contract.num_classes).all()


def test_onnx_classifier_is_checked_against_the_contract(tiny_artifacts):
    from vaegan.export.core import load_onnx_classifier

    m = load_onnx_classifier(tiny_artifacts / "classifier.onnx", FASHION_MNIST)
    assert [i.name for i in m.graph.input] == ["x"] and [o.name for o in m.graph.output] == ["logits"]
    with pytest.raises(VaeganError, match=r"input shape \['N', 1, 28, 28\] does not take the purifier's images "
                                          r"N x 3 x 32 x 32"):
        load_onnx_classifier(tiny_artifacts / "classifier.onnx", RGB)
    c10 = ImageContract(1, 28, 28, tuple("abcdefghijkl"), (0.5,), (0.5,))
    with pytest.raises(VaeganError, match="output shape \\['N', 10\\], the purifier's contract has 12 classes"):
        load_onnx_classifier(tiny_artifacts / "classifier.onnx", c10)


# ------------------------------------------------------------------------------------------------- runtime input

def test_to_model_input_keeps_rgb_and_converts_to_the_contract():
    from PIL import Image

    from vaegan.runtime.io import from_model_output, to_model_input

    rgb = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    x = to_model_input(Image.fromarray(rgb, mode="RGB"), RGB.preprocess())
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(x, rgb.transpose(2, 0, 1) / np.float32(255))  # same size: exact, RGB stays RGB
    gray = Image.fromarray(rgb[..., 0], mode="L")
    g3 = to_model_input(gray, RGB.preprocess())
    assert np.array_equal(g3[0], g3[1]) and np.array_equal(g3[1], g3[2])  # grayscale repeated into three planes
    small = to_model_input(Image.fromarray(rgb, mode="RGB").resize((64, 48)), RGB.preprocess())
    assert small.shape == (3, 32, 32)
    one = to_model_input(Image.fromarray(rgb, mode="RGB"), FASHION_MNIST.preprocess())
    assert one.shape == (1, 28, 28)
    out = from_model_output(x)
    assert out.mode == "RGB" and out.size == (32, 32) and np.array_equal(np.asarray(out), rgb)
    assert from_model_output(one).mode == "L"
    with pytest.raises(ValueError, match="channels=2"):
        to_model_input(gray, {**RGB.preprocess(), "channels": 2})


def test_artifacts_accept_one_or_three_channels(tiny_artifacts, tmp_path):
    import json
    import shutil

    from vaegan.runtime.artifacts import load_artifacts
    from vaegan.runtime.errors import ArtifactError

    d = tmp_path / "a"
    shutil.copytree(tiny_artifacts, d)
    m = json.loads((d / "manifest.json").read_text())
    assert load_artifacts(d).contract == FASHION_MNIST
    m["preprocess"] = RGB.preprocess()
    m["classes"] = list(RGB.classes)
    (d / "manifest.json").write_text(json.dumps(m))
    assert load_artifacts(d).contract == RGB
    m["preprocess"]["channels"] = 4
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"channels: expected one of 1, 3, got 4"):
        load_artifacts(d)
