"""The runtime's bounds on settings and inputs, in one place (imports nothing: the CLIs show them at ``--help``).

- ``MAX_STEPS``: largest T. The Loop graph and the modular loop hold one step's tensors whatever T is, but a call
  takes T times one step's time; T beyond this is far outside any operating point (the shipped T is 3) and is
  refused rather than left to run for hours.
- ``FAST_PATH_MAX_STEPS``: largest T the fused backend's CPU fast path unrolls. The unrolled graph holds one copy of
  the loop body per step, so its memory and build time grow with T (hundreds of MB at T = 1,000, a crash near
  T = 100,000); calls with a larger T run the Loop graph instead, whose memory does not grow with T.
- ``MAX_RESTARTS``: largest R. Each graph call holds R x N rows (the purifiers cut a batch into chunks of
  ``max_batch // R`` images, at least one), so one image at R = ``MAX_RESTARTS`` is one call of that many rows;
  the same bound as ``vaegan-export --max-restarts`` (the TensorRT profile).
- ``DEFAULT_MAX_PIXELS``: largest input image (width x height, read from the file's header before any pixel is
  decoded; ``--max-pixels``). The purifier works on 28 x 28 frames; a 32-Mpx image already decodes to about
  0.2 GB of float pixels. Pillow's own bomb limit (about 179 Mpx) is far above it.
"""

MAX_STEPS = 10_000
FAST_PATH_MAX_STEPS = 100
MAX_RESTARTS = 256
DEFAULT_MAX_PIXELS = 32_000_000
