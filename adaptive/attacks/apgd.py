"""APGD-CE then APGD-T (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks": AutoAttack's gradient components), L-inf, through the BPDA or the full gradient."""

from __future__ import annotations

import torch

from vaegan.train.evaluate import predict


def apgd(model, eps: float, steps: int, seed: int, targets: int, n_classes: int):
    """AutoAttack's gradient components (Croce & Hein 2020): APGD-CE, then APGD-T (DLR, ``targets`` target
    classes, at most ``n_classes`` - 1) on the images APGD-CE did not fool (torchattacks ``MultiAttack``)."""
    import torchattacks

    ce = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce")
    t = torchattacks.APGDT(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, n_classes=n_classes)
    t.n_target_classes = min(targets, n_classes - 1)
    return torchattacks.MultiAttack([ce, t])


def gradient_choice(ctx, eps: float) -> str:
    """``cfg.apgd_grad``; "auto": the one of bpda / full with the lower accuracy at this eps (full if neither ran)."""
    grad = ctx.cfg.apgd_grad
    if grad == "auto":
        done = {g: ctx.results[g][str(eps)]["accuracy"] for g in ("bpda", "full") if str(eps) in ctx.results.get(g, {})}
        grad = min(done, key=done.get) if done else "full"
    return grad


def run_gradient_attack(ctx, eps: float, name: str, make, targets: int):
    """``make(model, eps, steps, seed, targets)`` (a torchattacks attack) in batches through the cache, on the
    defended model with the chosen gradient; scored on the deterministic defended model."""
    cfg = ctx.cfg
    grad = gradient_choice(ctx, eps)
    model = ctx.bpda if grad == "bpda" else ctx.full
    xa, _ = ctx.cache.map(f"{name}_{grad}_eps{eps:g}", ctx.budget(name),
                          lambda _, xb, yb: (make(model, eps, cfg.steps, cfg.seed, targets, ctx.num_classes)(xb, yb),
                                             {}),
                          ctx.x, ctx.y, cfg.batch_size)
    with torch.no_grad():
        fooled = predict(ctx.defended, xa, cfg.batch_size) != ctx.y
    return xa, fooled, {"gradient": grad}


def run_apgd(ctx, eps: float):
    # ``apgd`` looked up at call time, so a test can wrap it
    return run_gradient_attack(ctx, eps, "apgd", lambda *a: apgd(*a), ctx.cfg.apgd_targets)
