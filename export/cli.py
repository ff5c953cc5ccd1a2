"""``vaegan-export``: a thin click command over ``vaegan.export.core.export_all``.

Exit codes (``vaegan.errors``, as every vaegan CLI): 0 success; 1 a graph failed validation (every failure listed
with its numbers); 2 bad input (an option, a checkpoint, the output folder), or ``--trt`` asked for on a machine
without TensorRT / an NVIDIA GPU (the ONNX files are still written and validated): one ``Error: ...`` line, no
traceback. A failed export leaves a previous export in --out as it was: the new one is swapped in whole only once it
is complete. ``--help`` / ``--version`` import no torch.
"""

from __future__ import annotations

import click

from vaegan import __version__
from vaegan.errors import friendly_errors
from vaegan.extras import requires_extra

from .core import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET  # core imports nothing heavy at module level


def _default(kind: str) -> str:
    from vaegan.train.checkpoint import default_path  # imports torch; only called when the option is not given

    return str(default_path(kind))


@click.command(help="Export the VAE-GAN purifier (E, G, D, their input-gradient graphs, the fused purification "
                    "loop) and the classifier to ONNX, validate every graph against PyTorch, write manifest.json; "
                    "with --trt also build TensorRT engines.")
@click.version_option(__version__, prog_name="vaegan-export")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="VAE-GAN checkpoint (default: the shipped models/vaegan.pt)")
@click.option("--classifier", type=click.Path(dir_okay=False), default=None,
              help="classifier checkpoint, torch.export program (.pt2) or ONNX file (.onnx) (default: the shipped "
                   "models/classifier.pt)")
@click.option("--out", type=click.Path(file_okay=False), default="artifacts", show_default=True,
              help="output folder")
@click.option("--trt", is_flag=True, help="also build TensorRT engines (needs an NVIDIA GPU and vaegan[gpu])")
@click.option("--fp16", is_flag=True, help="build fp16 engines (with --trt)")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="largest batch (validation and TensorRT profile)")
@click.option("--max-restarts", type=click.IntRange(1, 256), default=8, show_default=True,
              help="largest R in the TensorRT profile of purify")
@click.option("--opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), default=DEFAULT_OPSET, show_default=True,
              help="ONNX opset")
@click.option("--steps", type=click.IntRange(min=0), default=None,
              help="purify_defaults.steps (default: the checkpoint's operating point)")
@click.option("--eta", type=float, default=None, help="purify_defaults.eta (default: the checkpoint's)")
@click.option("--lam", type=float, default=None, help="purify_defaults.lam (default: the checkpoint's)")
@click.option("--dataset", default=None,
              help="validate on this data set's test images (as vaegan-train --dataset; default: Fashion-MNIST for "
                   "its contract, else uniform random images)")
@click.option("--image-size", type=click.IntRange(1), default=None, help="with --dataset: as vaegan-train")
@click.option("--channels", type=click.IntRange(1, 3), default=None, help="with --dataset: as vaegan-train")
@click.option("--data-root", default=None, help="with --dataset: as vaegan-train")
@click.option("--threads", type=int, default=None, help="torch intra-op threads")
@friendly_errors
@requires_extra("train")
def main(checkpoint, classifier, out, trt, fp16, max_batch, max_restarts, opset, steps, eta, lam, dataset, image_size,
         channels, data_root, threads):
    if fp16 and not trt:
        raise click.UsageError("--fp16 applies to TensorRT engines: add --trt")
    import torch

    from vaegan.train.checkpoint import load_raw, purify_config

    from .core import export_all

    if threads:
        torch.set_num_threads(threads)
    checkpoint = checkpoint or _default("vaegan")
    cfg = purify_config(load_raw(checkpoint), steps=steps, eta=eta, lam=lam)  # the checkpoint's operating point
    data = None if dataset is None else {"dataset": dataset, "image_size": image_size, "channels": channels,
                                         "data_root": data_root}
    export_all(checkpoint, classifier or _default("classifier"), out, opset=opset, max_batch=max_batch, trt=trt,
               fp16=fp16, purify_cfg=cfg, max_restarts=max_restarts, echo=click.echo, data=data)
