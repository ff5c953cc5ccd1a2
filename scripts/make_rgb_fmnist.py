"""Write an RGB image-folder data set made from Fashion-MNIST (docs/any-data.md): 32 x 32 x 3 PNGs, each garment
tinted with a colour and placed at an offset on a coloured, textured background, in ``OUT/train/<class>/`` and
``OUT/test/<class>/``. Eight of the ten classes (no Pullover, no Shirt), so the class count differs from
Fashion-MNIST's. Deterministic: image i of a split is drawn from a generator seeded by (split, i).

    python scripts/make_rgb_fmnist.py --out data/rgb-fmnist --train-per-class 500 --test-per-class 125
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

KEEP = (0, 1, 3, 4, 5, 7, 8, 9)   # Fashion-MNIST class ids kept (drops 2 Pullover and 6 Shirt)
NAMES = {0: "tshirt", 1: "trouser", 3: "dress", 4: "coat", 5: "sandal", 7: "sneaker", 8: "bag", 9: "ankle-boot"}
SIZE = 32


def render(garment: np.ndarray, seed: int) -> np.ndarray:
    """One 28 x 28 garment (uint8) -> a 32 x 32 x 3 uint8 image: a background of a random colour with a random
    texture (stripes or checks of random period, phase and contrast, plus pixel noise), the garment tinted with
    another random colour and pasted at a random offset, its intensity as the alpha matte."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    bg_col = rng.uniform(0.1, 0.9, 3)
    period = rng.uniform(3, 9)
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    if rng.random() < 0.5:
        tex = np.sin(2 * np.pi * u / period)
    else:
        v = -xx * np.sin(angle) + yy * np.cos(angle)
        tex = np.sign(np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period))
    contrast = rng.uniform(0.05, 0.2)
    bg = bg_col[None, None, :] + contrast * tex[..., None] * rng.uniform(-1, 1, 3)[None, None, :]
    bg = bg + rng.normal(0, 0.03, (SIZE, SIZE, 3))
    fg_col = rng.uniform(0.0, 1.0, 3)
    if np.abs(fg_col - bg_col).max() < 0.35:   # keep the garment visible against its background
        fg_col = 1.0 - bg_col
    dy, dx = rng.integers(0, SIZE - 28 + 1, 2)
    alpha = np.zeros((SIZE, SIZE), np.float32)
    alpha[dy:dy + 28, dx:dx + 28] = garment.astype(np.float32) / 255.0
    shade = 0.6 + 0.4 * alpha                      # the garment's own texture survives the tint
    img = bg * (1 - alpha[..., None]) + (fg_col[None, None, :] * shade[..., None]) * alpha[..., None]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


@click.command()
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--train-per-class", type=int, default=500, show_default=True)
@click.option("--test-per-class", type=int, default=125, show_default=True)
@click.option("--data-root", default=None, help="Fashion-MNIST root (default: the project's resolution)")
def main(out, train_per_class, test_per_class, data_root):
    from PIL import Image

    from vaegan.train.data import load_split

    for split, per_class, split_seed in (("train", train_per_class, 1), ("test", test_per_class, 2)):
        x, y = load_split(split == "train", data_root).tensors
        imgs = (x[:, 0] * 255).round().byte().numpy()
        labels = y.numpy()
        for c in KEEP:
            d = Path(out) / split / NAMES[c]
            d.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(labels == c)[:per_class]:
                Image.fromarray(render(imgs[i], split_seed * 1_000_003 + int(i)), mode="RGB").save(
                    d / f"{int(i):05d}.png")
        click.echo(f"{split}: {per_class} per class x {len(KEEP)} classes in {Path(out) / split}")


if __name__ == "__main__":
    main()
