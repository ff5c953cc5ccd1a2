"""``vaegan-run``: purify (and classify) a stream of frames with the exported artifacts, torch-free.

Outputs under ``--out``:

- ``purified/<relative name>.png``   purified frames: ``.png`` appended to every input's file name (``a.png`` ->
                                     ``a.png.png``, ``a.jpg`` -> ``a.jpg.png``) and ``_`` to a folder name ending in
                                     ``.png``, so distinct inputs never share a file (``io.purified_name``)
- ``predictions.jsonl``              one line per input: ``source`` (the input's absolute path, folders' symlinks
                                     resolved), ``status`` ("ok" | "error"), and ``class_id``, ``class_name``,
                                     ``confidence``, ``loss`` or ``error``
- ``summary.json``                   counts, backend, batch size, throughput, latency percentiles
- ``.lock``                          held (flock) while a run writes here: a second run on the folder is refused

Exit codes (``vaegan.errors``, as every vaegan CLI): 0 every input ok; 1 some inputs failed (see their error
records); 2 usage, artifact or backend error, or a failed write under --out such as a full disk (one ``Error: ...``
line on stderr, no traceback); 130 interrupted.

PNG and summary.json are written atomically (temp file + rename), with the umask's mode. predictions.jsonl is
appended whole records per batch (cut back to the last whole record if a write fails); ``--resume`` skips every
source already recorded in it (ok or error) and drops a trailing partial line left by a crash. A file name that is
not valid UTF-8 is recorded losslessly: each undecodable byte 0xXY as the JSON escape ``\\udcXY`` (Python's
surrogateescape; ``os.fsencode(record["source"])`` gives back the bytes). JSON never holds NaN or infinity.

Refused with exit 2: non-finite or out-of-range --eta / --lam / --momentum, --steps above ``MAX_STEPS``, --restarts
above ``MAX_RESTARTS`` (``runtime/limits.py``, which says why), --threads below 1, an --out that is or contains the
--input. Error records, not decoded or not opened: images above --max-pixels, FIFOs, devices and sockets.
"""

from __future__ import annotations

import sys

import click

from vaegan import __version__
from vaegan.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, friendly_errors
from vaegan.runtime.limits import DEFAULT_MAX_PIXELS, FAST_PATH_MAX_STEPS, MAX_RESTARTS, MAX_STEPS
from vaegan.runtime.names import BACKENDS, FAST_PATH_ENGINES, PRECISIONS


@click.command(help="Purify (and classify) frames with the exported artifacts: a folder of images, a glob, a video "
                    "file or a camera index. Exit codes: 0 all ok, 1 some inputs failed, 2 usage/artifact error.")
@click.version_option(__version__, prog_name="vaegan-run")
@click.option("--input", "input_", required=True, metavar="PATH",
              help="folder of frames, image file, glob pattern (quote it), video file, or camera index")
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(file_okay=False),
              help="directory written by `vaegan-export --out DIR`")
@click.option("--out", default="out", show_default=True, type=click.Path(file_okay=False))
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto = trt when TensorRT, a GPU and engines are present, else fused")
@click.option("--providers", default="cpu", show_default=True,
              help="onnxruntime execution providers, comma-separated: cpu, cuda, tensorrt (no fallback)")
@click.option("--threads", type=int, default=None, help="onnxruntime intra-op threads, >= 1 (default: CPU count)")
@click.option("--shard/--no-shard", default=None,
              help="fused on the CPU: split each batch into --threads one-thread shards run at once (default: on "
                   "when --threads > 1 and --providers cpu)")
@click.option("--fast-path/--no-fast-path", default=None,
              help=f"fused on the CPU: one-restart calls with T <= {FAST_PATH_MAX_STEPS} run the Loop unrolled at T "
                   "on --fast-path-engine (default: on with --providers cpu)")
@click.option("--fast-path-engine", type=click.Choice(FAST_PATH_ENGINES), default="auto",
              show_default=True,
              help="the fast path's engine: OpenVINO's CPU plugin or onnxruntime at graph optimisation 'all'; auto = "
                   "openvino when installed (`pip install 'vaegan[openvino]'`) and T <= 10, else onnxruntime")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="the fast path's arithmetic: bf16 runs it on OpenVINO in bf16 (CPUs with AVX512-BF16 or AMX, "
                   "one restart; speed and labels against fp32: bench/precision.py, docs/benchmarks.md)")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True,
              help="frames per purify call; from a camera, whatever has arrived is purified without waiting")
@click.option("--steps", type=int, default=None,
              help=f"T, 0..{MAX_STEPS} (default: the manifest's purify_defaults)")
@click.option("--eta", type=float, default=None, help="step size, > 0 (default: manifest)")
@click.option("--lam", type=float, default=None, help="weight of the discriminator term, >= 0 (default: manifest)")
@click.option("--momentum", type=float, default=None, help="heavy-ball momentum, in [0, 1) (default: manifest)")
@click.option("--restarts", type=int, default=None, help=f"R, 1..{MAX_RESTARTS} (default: manifest)")
@click.option("--classify/--no-classify", default=True, show_default=True)
@click.option("--save-purified/--no-save-purified", default=True, show_default=True)
@click.option("--resume", is_flag=True, help="skip inputs already recorded in OUT/predictions.jsonl")
@click.option("--recursive", is_flag=True, help="descend into subfolders of a folder input")
@click.option("--max-frames", type=click.IntRange(1), default=None, help="stop a video / camera after N frames")
@click.option("--prefetch", type=click.IntRange(1), default=64, show_default=True,
              help="frames decoded ahead by the reader thread (bounded queue)")
@click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="largest image (width x height, from its header); larger ones are error records, never decoded")
@click.option("--quiet", is_flag=True, help="no progress bar")
@friendly_errors
def main(input_, artifacts, out, backend, providers, threads, shard, fast_path, fast_path_engine, precision, batch_size,
         steps, eta, lam, momentum, restarts,
         classify, save_purified, resume, recursive, max_frames, prefetch, max_pixels, quiet):
    from .policy import BackendOptions
    from .run import RunOptions, run

    knobs = BackendOptions(providers=providers, threads=threads, shard=shard, fast_path=fast_path,
                           fast_path_engine=fast_path_engine, precision=precision)
    opts = RunOptions(input=input_, artifacts=artifacts, out=out, backend=backend, options=knobs,
                      batch_size=batch_size, steps=steps, eta=eta, lam=lam, momentum=momentum,
                      restarts=restarts, classify=classify, save_purified=save_purified, resume=resume,
                      recursive=recursive, max_frames=max_frames, prefetch=prefetch, max_pixels=max_pixels,
                      quiet=quiet)
    try:
        summary = run(opts)
    except KeyboardInterrupt:
        click.echo("vaegan-run: interrupted (rerun with --resume to continue)", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if not quiet:
        click.echo(f"{summary['frames']} frames ({summary['errors']} errors, {summary['skipped']} skipped) "
                   f"-> {out}; {summary['throughput_fps']:.1f} frames/s on {summary['backend']}", err=True)
    sys.exit(EXIT_FAILED if summary["errors"] else EXIT_OK)


if __name__ == "__main__":  # pragma: no cover
    main()
