"""Full-gradient PGD: the exact gradient through all T unrolled purification steps (``Purifier(differentiable=True)``),
and ``full_eot``, the same through the randomized purifier, averaged over its draws."""

from __future__ import annotations

from .eot import run_eot
from .pgd import run_pgd


def run_full(ctx, eps: float):
    return run_pgd(ctx, eps, "full", ctx.full)


def run_full_eot(ctx, eps: float):
    return run_eot(ctx, eps, "full_eot", exact=True)
