import gzip
import shutil
from pathlib import Path

import pytest
import torch

from vaegan.train import data
from vaegan.train.config import ClassifierArgs, VAEGANArgs
from vaegan.train.errors import VaeganError
from vaegan.train.models import VAEGAN, VGG16, count_params

from ..conftest import requires_data


def test_resolution_order_and_missing_message(monkeypatch, tmp_path):
    monkeypatch.delenv("VAEGAN_DATA", raising=False)
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    with pytest.raises(VaeganError, match=r"--data-root.*\$VAEGAN_DATA.*dataset-fashion-mnist.*--download"):
        data.resolve_data_root(None)
    with pytest.raises(VaeganError, match=r"--data-root=.*nowhere: no Fashion-MNIST there"):
        data.resolve_data_root(tmp_path / "nowhere")
    monkeypatch.setenv("VAEGAN_DATA", str(tmp_path / "env-nowhere"))
    with pytest.raises(VaeganError, match=r"\$VAEGAN_DATA=.*env-nowhere"):
        data.resolve_data_root(None)
    # --download falls back to the cache dir instead of failing
    monkeypatch.delenv("VAEGAN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.resolve_data_root(None, download=True) == tmp_path / "cache" / "vaegan" / "data"


@requires_data
def test_flat_gz_folder_like_debian(monkeypatch, tmp_path):
    """Debian's package ships the four .gz files flat; they are decompressed into the cache in torchvision layout."""
    src = data.resolve_data_root(None) / "FashionMNIST" / "raw"
    flat = tmp_path / "debian"
    flat.mkdir()
    for name in data.RAW_FILES:
        gz = src / f"{name}.gz"
        if gz.exists():
            shutil.copy(gz, flat / gz.name)
        else:
            with open(src / name, "rb") as f, gzip.open(flat / f"{name}.gz", "wb") as g:
                shutil.copyfileobj(f, g)
    monkeypatch.delenv("VAEGAN_DATA")
    monkeypatch.setattr(data, "DEBIAN_DIR", flat)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = data.resolve_data_root(None)
    assert root == tmp_path / "cache" / "vaegan" / "data"
    x, y, idx = data.test_subset(5)
    assert x.shape == (5, 1, 28, 28) and x.min() >= 0 and x.max() <= 1 and x.dtype == torch.float32
    assert y.tolist() == [9, 2, 1, 1, 6]  # the first five Fashion-MNIST test labels
    assert idx.tolist() == [0, 1, 2, 3, 4]


def _flat_gz_folder(flat, payload: dict) -> Path:
    """A Debian-style flat folder: ``<name>.gz`` holding ``payload[name]`` for each raw file."""
    flat.mkdir()
    for name, blob in payload.items():
        with gzip.open(flat / f"{name}.gz", "wb") as g:
            g.write(blob)
    return flat


def test_flat_gz_decompression_survives_a_second_process_arriving_mid_copy(monkeypatch, tmp_path):
    """Runs started together (torchrun, parallel fine-tunes) decompress the same files at once: one arriving while
    another is half-way through a file must not rename that half-written file away from under it."""
    payload = {name: bytes(range(256)) * (i + 1) for i, name in enumerate(data.RAW_FILES)}
    flat = _flat_gz_folder(tmp_path / "debian", payload)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    copy, arrived = shutil.copyfileobj, []

    def copy_then_let_another_run_in(src, dst):
        copy(src, dst)
        if not arrived:  # the second run starts while the first has written its copy but not yet renamed it
            arrived.append(True)
            data._from_flat_gz(flat)

    monkeypatch.setattr(data.shutil, "copyfileobj", copy_then_let_another_run_in)
    root = data._from_flat_gz(flat)
    raw = root / "FashionMNIST" / "raw"
    assert arrived and sorted(p.name for p in raw.iterdir()) == sorted(data.RAW_FILES)  # no temporary left behind
    assert all((raw / name).read_bytes() == blob for name, blob in payload.items())


def test_corrupt_flat_gz_is_a_one_line_error_naming_the_file(monkeypatch, tmp_path):
    flat = _flat_gz_folder(tmp_path / "debian", dict.fromkeys(data.RAW_FILES, b"ok"))
    (flat / f"{data.RAW_FILES[1]}.gz").write_bytes(gzip.compress(b"x" * 1000)[:20])  # truncated
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(VaeganError, match=rf"{data.RAW_FILES[1]}\.gz: cannot decompress it"):
        data._from_flat_gz(flat)
    raw = tmp_path / "cache" / "vaegan" / "data" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == [data.RAW_FILES[0]]  # no temporary of the failed file left


def test_vaegan_shapes_and_ranges():
    vg = VAEGAN(VAEGANArgs()).eval()
    x = torch.rand(3, 1, 28, 28)
    mu, logvar = vg.encoder(x)
    assert mu.shape == logvar.shape == (3, 48)
    xr = vg.decoder(mu)
    assert xr.shape == (3, 1, 28, 28) and 0 <= xr.min() and xr.max() <= 1
    f, logit = vg.discriminator.features(x)
    assert logit.shape == (3, 1) and f.shape[0] == 3
    assert torch.allclose(vg.decoder(mu, logits=True).sigmoid(), xr)
    # no MaxPool / Dropout in E, G, D (their input-gradients must export cleanly)
    banned = (torch.nn.MaxPool2d, torch.nn.Dropout)
    assert not any(isinstance(m, banned) for m in vg.modules())
    # the sizes stated in models.py and the model card
    assert (count_params(vg.encoder), count_params(vg.decoder), count_params(vg.discriminator)) == (
        208_152, 323_209, 61_993)


def test_vgg16_topology():
    m = VGG16(ClassifierArgs())
    convs = [l for l in m.modules() if isinstance(l, torch.nn.Conv2d)]
    fcs = [l for l in m.modules() if isinstance(l, torch.nn.Linear)]
    assert (len(convs), len(fcs)) == (13, 3)  # VGG16 configuration "D"
    assert count_params(m) == 1_022_938
    out = m.eval()(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("enc_w, dec_w", [(None, 12), (12, None), (10, 12)])
def test_widen_keeps_the_function_and_trains_the_new_channels(tiny_vaegan_ckpt, enc_w, dec_w):
    """Net2Net growth of E and / or G: same outputs (eval-mode BatchNorm with randomised statistics), more
    parameters in the grown part only, D untouched; the new channels reach the output once training moves their zero
    outgoing weights."""
    from vaegan.train.checkpoint import load_model
    from vaegan.train.models import widen

    vg, _ = load_model(tiny_vaegan_ckpt, "vaegan")
    wide = widen(vg, enc_w, dec_w)
    assert (wide.encoder.width, wide.decoder.width) == (enc_w or 8, dec_w or 8) and wide.args.width == vg.args.width
    for part, w in (("encoder", enc_w), ("decoder", dec_w), ("discriminator", None)):
        grew = count_params(getattr(wide, part)) > count_params(getattr(vg, part))
        assert grew == (w is not None), part
    torch.manual_seed(1)
    z, x = torch.randn(6, vg.args.latent_dim), torch.rand(6, 1, 28, 28)
    torch.testing.assert_close(wide.encoder(x), vg.encoder(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(wide.decoder(z), vg.decoder(z), atol=1e-6, rtol=0)
    torch.testing.assert_close(wide.reconstruct(x), vg.reconstruct(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(wide.discriminator(x), vg.discriminator(x), atol=0, rtol=0)
    # one gradient step on the reconstruction error reaches the new channels: through G's last conv and E's head
    wide.reconstruct(x).sub(0.5).pow(2).sum().backward()
    if dec_w:
        assert wide.decoder.net[-1].weight.grad[:, 8:].abs().sum() > 0
    if enc_w:
        assert wide.encoder.head.weight.grad[:, 4 * 8 * 16:].abs().sum() > 0
    with pytest.raises(ValueError, match="can only grow"):
        widen(vg, decoder_width=4)
