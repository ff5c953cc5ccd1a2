"""Transfer: PGD on an independently trained surrogate classifier (another seed and width), scored on the defended
model at the final iterate (choosing iterates by querying the defended model would not be transfer)."""

from __future__ import annotations

from pathlib import Path

import torch

from vaegan.train import checkpoint as ckpt_io
from vaegan.train.evaluate import accuracy, predict
from vaegan.util import file_sha256

from ..config import SCORE_BATCH, AdaptiveConfig
from .pgd import pgd_over


def surrogate_checkpoint(cfg: AdaptiveConfig, echo=print) -> Path:
    """``cfg.surrogate``, else a VGG16 trained here on another seed and width (OUT/surrogate/model.pt)."""
    if cfg.surrogate:
        return Path(cfg.surrogate)
    from vaegan.train.config import ClassifierArgs, ClassifierConfig
    from vaegan.train.trainer import train_classifier

    out = Path(cfg.out) / "surrogate"
    if not (out / "model.pt").is_file():
        echo(f"training a surrogate classifier (seed {cfg.seed + 1}, width_div {cfg.surrogate_width_div}, "
             f"{cfg.surrogate_epochs} epochs) in {out} ...")
        train_classifier(ClassifierConfig(out=str(out), epochs=cfg.surrogate_epochs, seed=cfg.seed + 1,
                                          train_limit=cfg.surrogate_train_limit, eval_limit=500,
                                          data_root=cfg.data_root, dataset=cfg.dataset,
                                          image_size=cfg.image_size, channels=cfg.channels, download=cfg.download,
                                          model=ClassifierArgs(width_div=cfg.surrogate_width_div, fc_width=128)))
    return out / "model.pt"


def setup_transfer(ctx, echo=print) -> None:
    sp = surrogate_checkpoint(ctx.cfg, echo)
    surrogate, _ = ckpt_io.load_model(sp, "classifier")
    surrogate = surrogate.to(ctx.x.device)
    ctx.state["surrogate"] = surrogate
    ctx.extras["surrogate"] = {"path": str(sp), "sha256": file_sha256(sp),
                               "clean_accuracy": accuracy(surrogate, ctx.x, ctx.y, SCORE_BATCH)}


def run_transfer(ctx, eps: float):
    cfg, surrogate = ctx.cfg, ctx.state["surrogate"]
    xa, _, curve = pgd_over(surrogate, ctx.x, ctx.y, cfg, eps, eval_model=ctx.defended, worst_case=False,
                            restarts=1, cache=ctx.cache, tag=f"transfer_eps{eps:g}",
                            budget={**ctx.budget("transfer"), "surrogate": ctx.extras["surrogate"]["sha256"]})
    with torch.no_grad():
        fooled = predict(ctx.defended, xa, cfg.batch_size) != ctx.y
    return xa, fooled, {"curve": curve, "surrogate_accuracy": accuracy(surrogate, xa, ctx.y, SCORE_BATCH),
                        "undefended_accuracy": accuracy(ctx.clf, xa, ctx.y, SCORE_BATCH)}
