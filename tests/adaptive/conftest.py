"""Fixtures of the adaptive tests: the tiny random-init nets with live BatchNorm statistics, a batch, artifacts."""

import pytest
import torch

from vaegan.train import checkpoint
from vaegan.train.config import PurifyConfig

CFG = PurifyConfig(steps=3, eta=0.05)  # the purifier every test attacks


def _calibrate_bn(net, *batches):
    """Set every BatchNorm's statistics to those of one batch per callable (training-mode forward)."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics to that batch's
    net.train()
    with torch.no_grad():
        for fn in batches:
            fn()
    return net.eval()


@pytest.fixture(scope="module")
def live_ckpts(tmp_path_factory, tiny_vaegan_ckpt, tiny_classifier_ckpt):
    """The tiny checkpoints with BatchNorm statistics calibrated on one batch of noise: with the init statistics
    the classifier's activations vanish through 13 layers (logits independent of the input) and G(z) is a flat grey
    image whatever z, so there would be nothing to attack."""
    g = torch.Generator().manual_seed(2)
    out = tmp_path_factory.mktemp("live")
    paths = []
    for kind, src in (("vaegan", tiny_vaegan_ckpt), ("classifier", tiny_classifier_ckpt)):
        net, raw = checkpoint.load_model(src, kind)
        if kind == "classifier":
            _calibrate_bn(net, lambda: net(torch.rand(64, 1, 28, 28, generator=g)))
        else:
            _calibrate_bn(net, lambda: net.encoder(torch.rand(64, 1, 28, 28, generator=g)),
                          lambda: net.decoder(torch.randn(64, net.args.latent_dim, generator=g)))
        path = out / f"live_{kind}.pt"
        checkpoint.save(path, {**{k: v for k, v in raw.items() if k != "format"}, "model": net.state_dict()})
        paths.append(path)
    return tuple(paths)


@pytest.fixture(scope="module")
def nets(live_ckpts):
    return checkpoint.load_model(live_ckpts[0], "vaegan")[0], checkpoint.load_model(live_ckpts[1], "classifier")[0]


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 1, 28, 28, generator=g), torch.tensor([0, 3, 5, 7])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, live_ckpts):
    from vaegan.export import export_all

    out = tmp_path_factory.mktemp("adaptive_artifacts")
    export_all(*live_ckpts, out, opset=18, max_batch=16, echo=lambda *a, **k: None)
    return out
