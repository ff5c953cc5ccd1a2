"""The whole chain through the CLIs on a tiny RGB image folder (tests/conftest.py ``rgb_chain``): train the
classifier, the VAE-GAN and the purifier 1 epoch each, export with a .pt2 classifier, vaegan-run on RGB frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ..conftest import RGB_CLASSES


def _ok(chain, step):
    res = chain["results"].get(step)
    assert res is not None, f"{step} did not run (an earlier step failed)"
    assert res.exit_code == 0, f"{step}: exit {res.exit_code}\n{res.output}\n{res.exception!r}"
    return res


def test_training_writes_the_folder_contract(rgb_chain):
    from vaegan.train.checkpoint import load_raw

    for step in ("classifier", "vaegan", "purifier"):
        _ok(rgb_chain, step)
    base = rgb_chain["base"]
    for d in ("clf", "vg", "pur"):
        c = load_raw(base / d / "model.pt")["contract"]
        assert (c["channels"], c["height"], c["width"]) == (3, 32, 32) and c["classes"] == list(RGB_CLASSES)
    assert load_raw(base / "clf" / "model.pt")["model_args"]["num_classes"] == 3
    assert load_raw(base / "pur" / "model.pt")["purify"]["lam"] == 5.0  # --purify-lam: the operating point


def test_export_validates_every_graph_on_the_rgb_contract(rgb_chain):
    res = _ok(rgb_chain, "export")
    m = json.loads((rgb_chain["base"] / "art" / "manifest.json").read_text())
    assert m["preprocess"]["channels"] == 3 and m["preprocess"]["mode"] == "RGB"
    assert (m["preprocess"]["height"], m["preprocess"]["width"]) == (32, 32)
    assert m["classes"] == list(RGB_CLASSES) and m["purify_defaults"]["lam"] == 5.0
    assert m["graphs"]["classifier"]["outputs"][0]["shape"] == ["N", 3]
    assert m["graphs"]["purify"]["inputs"][0]["shape"] == ["N", 3, 32, 32]
    for name in ("encoder_vjp", "decoder_vjp", "discriminator_grad", "purify", "classifier"):
        assert all(v["ok"] for v in m["graphs"][name]["validation"].values()), name
    assert "[x]" not in res.output and "test images" in res.output


def test_runtime_purifies_rgb_frames_in_the_contract_mode(rgb_chain):
    from PIL import Image

    from vaegan.runtime.io import load_image
    from vaegan.train.checkpoint import load_model, load_raw, purify_config
    from vaegan.train.purifier import purify

    _ok(rgb_chain, "run")
    out = rgb_chain["base"] / "run"
    recs = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    assert {r["class_name"] for r in recs} <= set(RGB_CLASSES)
    pre = json.loads((rgb_chain["base"] / "art" / "manifest.json").read_text())["preprocess"]
    ckpt = rgb_chain["base"] / "pur" / "model.pt"
    vg, _ = load_model(ckpt, "vaegan")
    for r in recs:
        img = Image.open(out / r["purified"])
        assert img.mode == "RGB" and img.size == (32, 32)
        x = torch.from_numpy(load_image(rgb_chain["frames"] / r["source"].split("/")[-1], pre))[None]
        ref = purify(vg, x, purify_config(load_raw(ckpt))).x[0].detach().numpy()
        got = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
        assert np.abs(got - ref).max() <= 1 / 255 + 1e-3  # the runtime's purified frame is torch's, 8-bit


@pytest.mark.slow
def test_eval_and_attack_run_on_the_folder_with_the_pt2_classifier(rgb_chain, tmp_path):
    from click.testing import CliRunner

    from vaegan.train.cli import attack_cli, eval_cli

    _ok(rgb_chain, "export")
    base, data = rgb_chain["base"], str(rgb_chain["data"])
    r = CliRunner()
    res = r.invoke(attack_cli, ["--attack", "tpgd", "--steps", "2", "--n", "6", "--dataset", data, "--classifier",
                                str(base / "classifier.pt2"), "--out", str(tmp_path / "adv")])
    assert res.exit_code == 0, res.output
    res = r.invoke(eval_cli, ["--quick", "--n", "6", "--dataset", data, "--checkpoint", str(base / "pur" / "model.pt"),
                              "--classifier", str(base / "classifier.pt2"), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["config"]["purify"]["lam"] == 5.0 and "vaegan (T=3, eta=0.005, lam=5, R=1)" in rep["table"]
    assert set(rep["per_class_clean"]["none"]) <= set(RGB_CLASSES)
    res = r.invoke(eval_cli, ["--quick", "--n", "6", "--checkpoint", str(base / "pur" / "model.pt"),
                              "--classifier", str(base / "classifier.pt2"), "--out", str(tmp_path / "rep2")])
    assert res.exit_code != 0 and "channels mismatch" in res.output and "fashion-mnist" in res.output


def test_flop_model_follows_the_contract(rgb_chain, tiny_artifacts):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import flops

    _ok(rgb_chain, "export")
    art = rgb_chain["base"] / "art"
    assert flops.image_shape(art) == (3, 32, 32) and flops.image_shape(tiny_artifacts) == (1, 28, 28)
    L = json.loads((art / "manifest.json").read_text())["latent_dim"]
    rgb, gray = flops.purify_flops(art, L), flops.purify_flops(tiny_artifacts, L)
    assert rgb["per_step"] > gray["per_step"] > 0  # same nets' widths, a larger image: more FLOPs per step
