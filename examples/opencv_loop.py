"""Purify and classify a video (or a camera) frame by frame with OpenCV, and write an annotated video.

    python examples/opencv_loop.py --artifacts artifacts --input clip.avi --out annotated.avi
    python examples/opencv_loop.py --artifacts artifacts --input 0 --max-frames 300 --batch 4   # camera 0

Each frame (OpenCV's BGR uint8, any size) goes to ``Defense`` as it is; ``--batch N`` collects N frames per call.
The output shows the frame next to its purified version (upscaled to the frame's height) with the label. One JSON
line per frame goes to stdout. Needs ``pip install 'vaegan[video]'`` (OpenCV) besides ``pip install vaegan``.
"""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np

from vaegan.runtime import Defense


def annotate(frame: np.ndarray, purified: np.ndarray, text: str) -> np.ndarray:
    """The BGR frame and its purified version (C x h x w in [0, 1]) side by side, ``text`` written on top."""
    h = frame.shape[0]
    p = np.clip(np.rint(purified.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
    p = cv2.resize(p, (round(p.shape[1] * h / p.shape[0]), h), interpolation=cv2.INTER_NEAREST)
    p = cv2.cvtColor(p, cv2.COLOR_GRAY2BGR) if p.ndim == 2 or p.shape[2] == 1 else cv2.cvtColor(p, cv2.COLOR_RGB2BGR)
    out = np.hstack([frame, p])
    cv2.putText(out, text, (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 255, 0), 1, cv2.LINE_AA)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--input", required=True, help="video file, or a camera index")
    ap.add_argument("--out", default="annotated.avi", help=".avi (MJPG) or .mp4 (mp4v)")
    ap.add_argument("--batch", type=int, default=1, help="frames per Defense call")
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    cap = cv2.VideoCapture(int(args.input) if args.input.isdigit() else args.input)
    if not cap.isOpened():
        raise SystemExit(f"cannot open {args.input}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    writer, index, pending = None, 0, []
    with Defense.load(args.artifacts, threads=args.threads) as defense:

        def flush():
            nonlocal writer, index
            result = defense(pending, bgr=True)  # OpenCV decodes BGR
            for frame, purified, rec in zip(pending, result.purified, result.records()):
                out = annotate(frame, purified, f"{rec['class_name']} {rec['confidence']:.2f}")
                if writer is None:
                    fourcc = "mp4v" if args.out.endswith(".mp4") else "MJPG"
                    writer = cv2.VideoWriter(args.out, cv2.VideoWriter_fourcc(*fourcc), fps, out.shape[1::-1])
                writer.write(out)
                print(json.dumps({"frame": index, **rec}), flush=True)
                index += 1
            pending.clear()

        while args.max_frames is None or index + len(pending) < args.max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            pending.append(frame)
            if len(pending) >= args.batch:
                flush()
        if pending:
            flush()
    cap.release()
    if writer is not None:
        writer.release()


if __name__ == "__main__":
    main()
