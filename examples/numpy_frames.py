"""Purify and classify frames held as numpy arrays: no OpenCV, no files written.

    python examples/numpy_frames.py --artifacts artifacts --frames samples/frames    # a folder of images
    python examples/numpy_frames.py --artifacts artifacts --frames frames.npy        # N x H x W (x C) uint8

Frames of any size and 1, 3 or 4 channels go to ``Defense`` as uint8 arrays; the same batch already in the model's
contract (N x C x H x W float32 in [0, 1], what ``Defense.prepare`` returns) gives the same result. One JSON line per
frame goes to stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from vaegan.runtime import Defense


def read_frames(src: str) -> tuple[list[str], list[np.ndarray]]:
    p = Path(src)
    if p.suffix == ".npy":
        stack = np.load(p)
        return [f"{p.name}[{i}]" for i in range(len(stack))], list(stack)
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    return [f.name for f in files], [np.asarray(Image.open(f)) for f in files]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--frames", default="samples/frames", help="folder of images, or a .npy stack of uint8 frames")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    names, frames = read_frames(args.frames)
    with Defense.load(args.artifacts, threads=args.threads) as defense:
        result = defense(frames)                  # uint8 frames: preprocessed like vaegan-run's files
        x = defense.prepare(frames)               # N x C x H x W float32, the artifacts' contract
        again = defense(x)                        # a float32 batch in the contract is taken as it is
        if not np.array_equal(again.labels, result.labels):
            raise SystemExit("the float32 batch was labelled differently from the same frames as uint8")
        for name, rec in zip(names, result.records()):
            print(json.dumps({"frame": name, **rec}))


if __name__ == "__main__":
    main()
