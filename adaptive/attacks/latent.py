"""Latent-space attack: PGD on ``||mu_E(x + d) - mu_E(x_target)||^2`` (x_target: an image of another class), the
encoder only; iterates are scored on the defended model."""

from __future__ import annotations

import torch
from torch import nn

from vaegan.train.attacks import random_targets
from vaegan.train.errors import VaeganError
from vaegan.train.evaluate import predict

from ..cache import BatchCache, tensor_sha256
from .pgd import TrackedPGD, tracked_over


class MeanEncoder(nn.Module):
    """x -> mu_E(x) (the latent attack's target network)."""

    def __init__(self, vg):
        super().__init__()
        self.vg = vg.eval()

    def forward(self, x):
        return self.vg.encoder(x)[0]


def latent_targets(y: torch.Tensor, pool_x: torch.Tensor, pool_y: torch.Tensor,
                   seed: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image a target class != y (seeded, as ``attacks.random_targets``, out of ``num_classes``) and x_target:
    the first image of that class in the pool."""
    t = random_targets(y, seed, num_classes)
    first = {}
    for i, c in enumerate(pool_y.tolist()):
        first.setdefault(c, i)
    missing = sorted({c for c in t.tolist() if c not in first})
    if missing:
        raise VaeganError(f"the latent-target pool has no image of class(es) {missing}: raise --latent-pool")
    return t, pool_x[torch.tensor([first[c] for c in t.tolist()])]


def latent_dist(vg, x, codes) -> float:
    with torch.no_grad():
        return (MeanEncoder(vg)(x) - codes).pow(2).sum(1).sqrt().mean().item()


class _LatentLoss(nn.Module):
    """-||mu_E(x) - code||^2 as a 'logits' stand-in: TrackedPGD ascends ``objective(model(x), labels)``."""

    def __init__(self, vg):
        super().__init__()
        self.enc = MeanEncoder(vg)

    def forward(self, x):
        return self.enc(x)


class LatentPGD(TrackedPGD):
    """Latent-space attack (the paper's future work): PGD on ``||mu_E(x + d) - mu_E(x_target)||^2`` (descended),
    x_target an image of another class; iterates are scored on the defended model. ``labels`` are target codes."""

    def objective(self, codes_pred, codes):
        return -(codes_pred - codes).pow(2).sum(1)


def latent_over(vg, defended, x, y, codes, cfg, eps, cache: BatchCache | None = None, tag: str = "",
                 budget: dict | None = None):
    """LatentPGD in batches (each seeded ``cfg.seed`` + its first image's index, toward ``codes`` of its images);
    returns (x_adv, fooled (N,), curve {step: acc}). With ``cache``, finished batches are kept under ``tag`` (the
    target codes are part of the key)."""
    enc = _LatentLoss(vg).eval()

    def one(i, xb, yb):
        atk = LatentPGD(enc, eps=eps, alpha=cfg.alpha_ratio * eps, steps=cfg.steps, restarts=cfg.restarts,
                        eval_model=defended, checkpoints=cfg.checkpoints, seed=cfg.seed + i)
        xa = atk.run(xb, codes[i:i + len(xb)], yb)
        return xa, {"fooled": atk.fooled, "curve": atk.curve}

    return tracked_over(one, x, y, cfg, cache, tag, {**(budget or {}), "codes": tensor_sha256(codes)})


def setup_latent(ctx, data=None) -> None:
    """Per image a target class and the code of its x_target (``data`` given: the pool is those images)."""
    cfg = ctx.cfg
    if data is None:
        from vaegan.train.data import test_subset

        from vaegan.train.data import data_kwargs

        px, py, _ = test_subset(max(cfg.latent_pool, cfg.n), **data_kwargs(cfg))
    else:
        px, py = data
    dev = ctx.x.device
    tcls, xt = latent_targets(ctx.y, px.to(dev), py.to(dev), cfg.seed, ctx.num_classes)
    with torch.no_grad():
        ctx.state["latent"] = tcls, MeanEncoder(ctx.vg)(xt)


def run_latent(ctx, eps: float):
    tcls, codes = ctx.state["latent"]
    xa, fooled, curve = latent_over(ctx.vg, ctx.defended, ctx.x, ctx.y, codes, ctx.cfg, eps, cache=ctx.cache,
                                    tag=f"latent_eps{eps:g}", budget=ctx.budget("latent"))
    with torch.no_grad():
        pred = predict(ctx.defended, xa, ctx.cfg.batch_size)
    return xa, fooled, {"curve": curve, "target_success": 100.0 * (pred == tcls).float().mean().item(),
                        "latent_distance_before": latent_dist(ctx.vg, ctx.x, codes),
                        "latent_distance_after": latent_dist(ctx.vg, xa, codes)}
