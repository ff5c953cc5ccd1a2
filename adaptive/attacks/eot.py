"""The randomized purifier that the EOT attacks (Athalye et al. 2018, "Synthesizing robust adversarial examples")
attack and are scored on, and the EOT attack itself (BPDA or exact gradient through it)."""

from __future__ import annotations

import torch
from torch import nn

from vaegan.train.config import PurifyConfig
from vaegan.train.errors import VaeganError
from vaegan.train.purifier import Defended, purify

from .pgd import pgd_over


class RandomizedPurifier(nn.Module):
    """The purifier with fresh restart noise on every call (its own generator, so every row of every call is an
    independent draw): R = ``cfg.restarts`` restarts from mu_E(x) + ``cfg.noise`` * N(0, I) (init "encoder") or
    from ``cfg.noise`` * N(0, I) (init "random"); per image the restart with the lowest objective wins (``purify``).

    ``noisy_seed=False`` keeps ``purify``'s convention that restart 0 starts at mu_E(x) itself; that restart usually
    wins, which makes the purifier nearly deterministic, so the default puts noise on every restart.
    ``draws`` counts purified rows (EOT samples x images), ``calls`` forward calls. ``differentiable=True``
    back-propagates through the T unrolled steps of the restart that wins for each image (``full_eot``)."""

    def __init__(self, vg, cfg: PurifyConfig, seed: int = 0, noisy_seed: bool = True, differentiable: bool = False):
        super().__init__()
        if cfg.noise <= 0 or (cfg.restarts < 2 and cfg.init == "encoder" and not noisy_seed):
            raise VaeganError(f"purifier config restarts={cfg.restarts}, noise={cfg.noise} has no randomness")
        self.vg = vg.eval()
        self.cfg = cfg
        self.noisy_seed = noisy_seed
        self.differentiable = differentiable
        self.gen = torch.Generator().manual_seed(seed)
        self.draws = 0
        self.calls = 0

    def noise(self, n: int) -> torch.Tensor:
        noise = torch.randn(self.cfg.restarts, n, self.vg.args.latent_dim, generator=self.gen) * self.cfg.noise
        if self.cfg.init == "encoder" and not self.noisy_seed:
            noise[0] = 0
        return noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.draws += x.shape[0]
        self.calls += 1
        if self.differentiable:
            return purify(self.vg, x, self.cfg, noise=self.noise(x.shape[0]), create_graph=True).x
        with torch.no_grad():
            return purify(self.vg, x.detach(), self.cfg, noise=self.noise(x.shape[0])).x


def run_eot(ctx, eps: float, name: str, exact: bool):
    """PGD + EOT against a fresh randomized purifier (its own seed per eps): ``exact`` follows the gradient through
    the unrolled loop (full_eot), else straight through it (bpda_eot). Scored on ``ctx.rand_eval`` at the final
    iterate with a fresh draw (a lucky draw must not count as a success)."""
    from .bpda import StraightThrough

    cfg, rcfg = ctx.cfg, ctx.rcfg
    rand = RandomizedPurifier(ctx.vg, rcfg, seed=cfg.seed + int(eps * 1e4), differentiable=exact)
    rand_grad = Defended(rand if exact else StraightThrough(rand), ctx.clf).eval()
    xa, fooled, curve = pgd_over(rand_grad, ctx.x, ctx.y, cfg, eps, eval_model=ctx.rand_eval,
                                 eot_iter=cfg.eot_samples, worst_case=False, restarts=1, cache=ctx.cache,
                                 tag=f"{name}_eps{eps:g}", budget=ctx.budget(name),
                                 generators=(rand.gen, ctx.rand_eval.purifier.gen))
    seed_at = "mu_E(x) + " if rcfg.init == "encoder" else ""
    return xa, fooled, {"curve": curve, "defense": f"R={rcfg.restarts} restarts, all seeded at {seed_at}"
                                                   f"{rcfg.noise:g} N(0, I), fresh noise per call",
                        "eot_samples": cfg.eot_samples}
