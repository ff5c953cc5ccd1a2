"""FAB-T (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive boundary attack":
AutoAttack's minimum-norm component), L-inf; an image counts as fooled only within eps."""

from __future__ import annotations

from .apgd import run_gradient_attack


def fab(model, eps: float, steps: int, seed: int, targets: int, n_classes: int):
    """AutoAttack's minimum-norm component: FAB-T (Croce & Hein 2020), ``targets`` target classes (at most
    ``n_classes`` - 1) in turn, each run only on the images not yet fooled; an image counts as fooled only within
    ``eps`` (torchattacks ``FAB``)."""
    import torchattacks

    a = torchattacks.FAB(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, multi_targeted=True,
                         n_classes=n_classes)
    a.n_target_classes = min(targets, n_classes - 1)
    return a


def run_fab(ctx, eps: float):
    return run_gradient_attack(ctx, eps, "fab", lambda *a: fab(*a), ctx.cfg.fab_targets)
