"""A user's own ONNX classifier through the whole export and the runtime, for a 1-channel and a 3-channel contract
(tiny nets): ``vaegan-export --classifier user.onnx``, the manifest, the classifier graph in the artifacts against
onnxruntime on the user's file, ``Defense`` labels against the user's ONNX on the purified frames; and the files
refused before any slow work (one ``Error:`` line, exit 2)."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from vaegan.runtime.contract import FASHION_MNIST
from vaegan.train import checkpoint
from vaegan.train.config import VAEGANArgs
from vaegan.train.models import VAEGAN

from .test_contract_stages import CONTRACTS, RGB


class UserNet(nn.Module):
    """A user's small CNN: takes [0, 1] images, normalises inside itself, returns logits."""

    def __init__(self, contract, k=None):
        super().__init__()
        c = contract.channels
        self.register_buffer("mean", torch.tensor(contract.mean).reshape(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(contract.std).reshape(1, c, 1, 1))
        self.f = nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(16, k or contract.num_classes))
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.f((x - self.mean) / self.std)


class TwoHeads(UserNet):
    def forward(self, x):
        y = super().forward(x)
        return y, y.softmax(1)


class Bytes(UserNet):
    def forward(self, x):
        return super().forward(x.float() / 255)


def write_onnx(model, path, shape, names=("images", "scores"), dynamic=True, dynamo=False):
    """``torch.onnx.export`` of ``model`` at input ``shape`` (batch axis dynamic unless ``dynamic=False``; the
    legacy exporter unless ``dynamo``: both are what users have)."""
    import warnings

    model.eval()
    outs = [names[1]] if not isinstance(model, TwoHeads) else [names[1], "probs"]
    x = torch.rand(2, *shape) if not isinstance(model, Bytes) else torch.zeros(2, *shape, dtype=torch.uint8)
    kw = ({"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if dynamo else
          {"dynamic_axes": {names[0]: {0: "batch"}, **{o: {0: "batch"} for o in outs}}}) if dynamic else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's deprecation notice
        torch.onnx.export(model, (x,), str(path), input_names=[names[0]], output_names=outs, dynamo=dynamo, **kw)
    return path


def _vaegan(tmp_path, contract):
    torch.manual_seed(0)
    vg = VAEGAN(VAEGANArgs(latent_dim=8, width=8), contract)
    path = tmp_path / "vg.pt"
    checkpoint.save(path, {"kind": "vaegan", "model": vg.state_dict(), "model_args": asdict(vg.args),
                           "contract": contract.to_dict()})
    return path


def _export(vg, clf, out):
    from vaegan.export.cli import main

    return CliRunner().invoke(main, ["--checkpoint", str(vg), "--classifier", str(clf), "--out", str(out),
                                     "--max-batch", "4", "--threads", "1"])


def _ort(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.mark.slow
@CONTRACTS
def test_user_onnx_classifier_through_export_and_runtime(contract, tmp_path):
    from vaegan.export import specs
    from vaegan.export.validate import structural_problems
    from vaegan.runtime import Defense

    vg = _vaegan(tmp_path, contract)
    torch.manual_seed(1)
    # the user's own names: renamed to the manifest's x / logits (one of them already "x" for the RGB contract)
    names = ("images", "scores") if contract.channels == 1 else ("x", "out")
    user = write_onnx(UserNet(contract), tmp_path / "user.onnx", contract.shape, names, dynamo=contract.channels == 1)
    res = _export(vg, user, tmp_path / "art")
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    assert "user ONNX classifier" in res.output and "[x]" not in res.output

    art = tmp_path / "art"
    m = json.loads((art / "manifest.json").read_text())
    assert m["classes"] == list(contract.classes)
    assert m["preprocess"] == contract.preprocess()
    g = m["graphs"]["classifier"]
    assert g["inputs"][0]["name"] == "x" and g["outputs"][0]["name"] == "logits"
    assert g["outputs"][0]["shape"] == ["N", contract.num_classes] and g["source"].startswith("user ONNX")
    assert m["classifier_checkpoint"]["file"] == "user.onnx"
    spec = specs.graph_specs(8, contract)["classifier"]
    io = [p for p in structural_problems(onnx.load(str(art / g["file"])), spec) if ": inputs" in p or ": outputs" in p
          or ".x:" in p or ".logits:" in p]
    assert io == []  # its file's inputs, outputs and symbolic batch axis are the manifest's

    mine, theirs = _ort(art / g["file"]), _ort(user)
    x = np.random.default_rng(0).random((5, *contract.shape), dtype=np.float32)
    got = mine.run(["logits"], {"x": x})[0]
    np.testing.assert_allclose(got, theirs.run([names[1]], {names[0]: x})[0], rtol=1e-6, atol=1e-6)

    h, w = contract.height, contract.width
    frames = np.random.default_rng(1).integers(0, 256, (6, h, w, 3) if contract.channels == 3 else (6, h, w),
                                               dtype=np.uint8)
    with Defense.load(art, backend="fused", threads=1) as d:
        r = d(list(frames))  # uint8 frames of the contract's size, 1 or 3 channels
    assert r.purified.shape == (6, *contract.shape)
    want = theirs.run([names[1]], {names[0]: r.purified})[0].argmax(1)
    np.testing.assert_array_equal(r.labels, want)
    assert r.class_names == [contract.classes[k] for k in want]


def _refused(tmp_path, contract, user, match):
    res = _export(_vaegan(tmp_path, contract), user, tmp_path / "art")
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and __import__("re").search(match, lines[0]), res.output
    assert not (tmp_path / "art").exists() or not any((tmp_path / "art").iterdir())


def test_user_onnx_classifier_of_other_channels_or_size_is_refused(tmp_path):
    u3 = write_onnx(UserNet(RGB, k=10), tmp_path / "rgb.onnx", RGB.shape)
    _refused(tmp_path, FASHION_MNIST, u3, r"rgb\.onnx: input shape \['batch', 3, 32, 32\] does not take the "
                                          r"purifier's images N x 1 x 28 x 28")
    u1 = write_onnx(UserNet(FASHION_MNIST, k=6), tmp_path / "gray.onnx", (1, 32, 32))
    _refused(tmp_path, RGB, u1, r"gray\.onnx: input shape \['batch', 1, 32, 32\] does not take the purifier's "
                                r"images N x 3 x 32 x 32")


def test_user_onnx_classifier_with_other_outputs_is_refused(tmp_path):
    k6 = write_onnx(UserNet(FASHION_MNIST, k=6), tmp_path / "k6.onnx", FASHION_MNIST.shape)
    _refused(tmp_path, FASHION_MNIST, k6, r"output shape \['batch', 6\], the purifier's contract has 10 classes")
    two = write_onnx(TwoHeads(FASHION_MNIST), tmp_path / "two.onnx", FASHION_MNIST.shape)
    _refused(tmp_path, FASHION_MNIST, two, r"two\.onnx: the ONNX classifier has 1 inputs and 2 outputs")


def test_user_onnx_classifier_with_a_static_batch_is_refused(tmp_path):
    st = write_onnx(UserNet(FASHION_MNIST), tmp_path / "static.onnx", FASHION_MNIST.shape, dynamic=False)
    _refused(tmp_path, FASHION_MNIST, st, r"static\.onnx: input batch dimension is fixed at 2; export it with a "
                                          r"dynamic batch axis")


def test_user_onnx_classifier_of_other_input_type_is_refused(tmp_path):
    u8 = write_onnx(Bytes(FASHION_MNIST), tmp_path / "u8.onnx", FASHION_MNIST.shape)
    _refused(tmp_path, FASHION_MNIST, u8, r"u8\.onnx: input 'images' is uint8 \(expected float32: images in \[0, 1\]")
