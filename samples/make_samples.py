"""Create samples/frames/: clean Fashion-MNIST test images, larger RGB/JPEG frames (the resize path), and -- once
models/classifier.pt exists -- PGD adversarial frames (L-inf eps 0.1, 40 steps, alpha 0.01, torchattacks) against
the trained classifier.

    .venv/bin/python samples/make_samples.py            # uses $VAEGAN_DATA / ../shared/data

Names: clean_0000_<class>.png (first test images, class id), adv_pgd0.1_0000_<class>.png (same images attacked),
rgb_200x160_0000_<class>.png / .jpg (upscaled, colourised). Kept under 1 MB.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
N_CLEAN = 24
N_ADV = 16


def _png(a: np.ndarray, path: Path) -> None:
    Image.fromarray(np.clip(np.rint(a * 255), 0, 255).astype(np.uint8), mode="L").save(path, optimize=True)


def _colourise(a: np.ndarray, size=(200, 160)) -> Image.Image:
    g = Image.fromarray(np.clip(np.rint(a * 255), 0, 255).astype(np.uint8), mode="L").resize(size, Image.BICUBIC)
    return Image.merge("RGB", [g, g.point(lambda v: int(v * 0.75)), g.point(lambda v: int(v * 0.45))])


def main() -> int:
    if "VAEGAN_DATA" not in os.environ and (ROOT.parent / "shared" / "data").exists():
        os.environ["VAEGAN_DATA"] = str(ROOT.parent / "shared" / "data")
    from vaegan.train.data import test_subset

    out = HERE / "frames"
    out.mkdir(exist_ok=True)
    x, y, _ = test_subset(max(N_CLEAN, N_ADV))
    xs, ys = x.numpy(), y.numpy()
    for i in range(N_CLEAN):
        _png(xs[i, 0], out / f"clean_{i:04d}_{ys[i]}.png")
    for i in (0, 1, 2):
        rgb = _colourise(xs[i, 0])
        rgb.save(out / f"rgb_200x160_{i:04d}_{ys[i]}.png", optimize=True)
    _colourise(xs[3, 0]).save(out / f"rgb_200x160_0003_{ys[3]}.jpg", quality=85)
    clf_path = ROOT / "models" / "classifier.pt"
    if not clf_path.exists():
        print(f"{clf_path} not found: skipped the adversarial frames (rerun once it exists)", file=sys.stderr)
    else:
        import torch
        import torchattacks

        from vaegan.train.checkpoint import load_model

        clf, _ = load_model(clf_path, "classifier")
        atk = torchattacks.PGD(clf, eps=0.1, alpha=0.01, steps=40, random_start=True)
        torch.manual_seed(0)
        adv = atk(x[:N_ADV], y[:N_ADV]).detach()
        with torch.no_grad():
            pred = clf(adv).argmax(1)
        for i in range(N_ADV):
            _png(adv[i, 0].numpy(), out / f"adv_pgd0.1_{i:04d}_{ys[i]}.png")
        print(f"adversarial accuracy of the classifier alone: {(pred == y[:N_ADV]).float().mean():.2%}")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {len(list(out.iterdir()))} frames, {total / 1024:.0f} KiB, to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
