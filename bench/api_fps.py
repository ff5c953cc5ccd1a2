"""``python bench/api_fps.py``: frames/s through the ``Defense`` API against ``vaegan-run`` on the same frames.

The frames are the files of ``--frames`` repeated ``--repeat`` times. ``api``: the frames decoded once into uint8
arrays, then ``Defense`` called on batches of ``--batch-size`` (preprocessing, purification and classification
timed). ``vaegan-run``: ``runtime.run.run`` (what the command runs) on a folder of the same files, its wall time
from listing the folder to summary.json (decoding, the same preprocessing, purification, classification, the
purified PNGs and predictions.jsonl); its ``compute`` figure is purify + classify alone. The two take turns for
``--rounds`` rounds and each reports its best round: the speed of one process on a shared machine drifts.
Torch-free: it runs in a runtime-only install too.

    python bench/api_fps.py --artifacts artifacts --frames samples/frames --repeat 8 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vaegan.runtime import BackendOptions, Defense
from vaegan.runtime.io import IMAGE_EXTS
from vaegan.runtime.run import RunOptions, run


def api_round(defense: Defense, frames: list[np.ndarray], batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(frames), batch):
        defense(frames[i:i + batch])
    return len(frames) / (time.perf_counter() - t0)


def run_round(opts: RunOptions) -> tuple[float, float]:
    shutil.rmtree(opts.out, ignore_errors=True)
    s = run(opts)
    return s["throughput_fps"], s["compute_throughput_fps"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--frames", default="samples/frames")
    ap.add_argument("--repeat", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    files = sorted(f for f in Path(args.frames).iterdir() if f.suffix.lower() in IMAGE_EXTS)
    work = Path(tempfile.mkdtemp(prefix="vaegan-api-fps-"))
    try:
        folder = work / "frames"
        folder.mkdir()
        for k in range(args.repeat):
            for f in files:
                shutil.copyfile(f, folder / f"{k:03d}_{f.name}")
        names = sorted(folder.iterdir())
        frames = [np.asarray(Image.open(f)) for f in names]
        options = BackendOptions(threads=args.threads)
        opts = RunOptions(input=str(folder), artifacts=args.artifacts, out=str(work / "out"), options=options,
                          batch_size=args.batch_size, quiet=True)
        best = {"api": 0.0, "vaegan-run": 0.0, "vaegan-run compute": 0.0}
        with Defense.load(args.artifacts, options=options) as defense:
            defense(frames[:args.batch_size])  # warm-up: sessions and the fast path's first compile
            run_round(opts)
            for _ in range(args.rounds):
                best["api"] = max(best["api"], api_round(defense, frames, args.batch_size))
                e2e, compute = run_round(opts)
                best["vaegan-run"] = max(best["vaegan-run"], e2e)
                best["vaegan-run compute"] = max(best["vaegan-run compute"], compute)
            describe = defense.describe()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"frames": len(frames), "batch_size": args.batch_size, "threads": args.threads, "rounds": args.rounds,
              "cpu_count": os.cpu_count(), "purify": describe, "frames_per_s": {k: round(v, 1) for k, v in best.items()}}
    print(f"{len(frames)} frames, batch {args.batch_size}, {args.threads} thread(s), best of {args.rounds} rounds, "
          f"{describe['backend']} ({describe.get('fast_path_engine') or 'no fast path'}):")
    for k, v in result["frames_per_s"].items():
        print(f"  {k:20s} {v:8.1f} frames/s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
