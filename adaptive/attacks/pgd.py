"""The PGD engine every gradient attack here shares: ``TrackedPGD`` (L-inf PGD with random starts, restarts, EOT and
a convergence record) and ``pgd_over``, which runs it in seeded batches through the resumable ``BatchCache``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchattacks.attack import Attack

from ..cache import BatchCache
from ..config import LOSSES, AdaptiveConfig


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logit of the label minus the largest other logit, per image (> 0: correctly classified)."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return true - other.max(1).values


class TrackedPGD(Attack):
    r"""L-inf PGD (Madry et al. 2018) with random start, random restarts, EOT (Athalye et al. 2018) and a
    convergence record.

    Arguments:
        model (nn.Module): the attacked function (its gradient is what the attack follows): a BPDA defended model,
            a differentiable defended model, a surrogate, ...
        eps (float): L-inf budget. alpha (float): step size. steps (int): iterations. restarts (int).
        loss (str): "ce" (ascend cross-entropy) or "margin" (descend the CW margin).
        eot_iter (int): forward/backward samples averaged per gradient (``model`` should be random); the samples
            run as one batch of ``eot_iter * N`` rows (in chunks of at most ``eot_rows``).
        eval_model (nn.Module | None): the defended model that scores iterates (default: ``model``).
        checkpoints (tuple): steps at which ``eval_model`` scores the iterate (accuracy vs steps); the last step
            is always one.
        worst_case (bool): keep per image the first scored iterate that fools ``eval_model`` (and score every step
            for free from ``model``'s logits when ``model`` is ``eval_model`` and ``eot_iter == 1``); False: score
            and return the final iterate (transfer attacks).
        seed (int): seeds the random start (own generator).

    Shape: images (N, C, H, W) in [0, 1]; labels (N,). After a call, ``curve`` maps step -> accuracy (%) and
    ``fooled`` is the per-image bool tensor.
    """

    def __init__(self, model, eps=0.1, alpha=0.01, steps=100, restarts=1, loss="ce", eot_iter=1, eval_model=None,
                 checkpoints=(), worst_case=True, seed=0, eot_rows=2000):
        super().__init__("TrackedPGD", model)
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}")
        self.eps, self.alpha, self.steps, self.restarts = eps, alpha, steps, restarts
        self.loss, self.eot_iter, self.eval_model = loss, eot_iter, eval_model
        self.checkpoints = tuple(sorted({c for c in checkpoints if 0 < c < steps} | {steps}))
        self.worst_case, self.seed, self.eot_rows = worst_case, seed, eot_rows
        self.supported_mode = ["default"]
        self.curve: dict[int, float] = {}
        self.fooled: torch.Tensor | None = None

    def objective(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image quantity to *ascend*."""
        if self.loss == "ce":
            return F.cross_entropy(logits, y, reduction="none")
        return -margin(logits, y)

    def gradient(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean over ``eot_iter`` samples of d objective / dx, mean logits), both for the N images of x."""
        n = x.shape[0]
        per = max(1, self.eot_rows // max(n, 1))
        grad = torch.zeros_like(x)
        logits_sum = None
        done = 0
        while done < self.eot_iter:
            k = min(per, self.eot_iter - done)
            xk = x.detach().repeat(k, 1, 1, 1).requires_grad_(True)  # sample-major: row s*n + i
            with torch.enable_grad():
                logits = self.get_logits(xk)
                obj = self.objective(logits, y.repeat(k, *([1] * (y.dim() - 1)))).sum()
                g, = torch.autograd.grad(obj, xk)
            grad += g.view(k, *x.shape).sum(0)
            ls = logits.detach().view(k, n, -1).sum(0)
            logits_sum = ls if logits_sum is None else logits_sum + ls
            done += k
        return grad / self.eot_iter, logits_sum / self.eot_iter

    @torch.no_grad()
    def _predict(self, x):
        model = self.eval_model if self.eval_model is not None else self.model
        return model(x).argmax(1)

    def forward(self, images, labels):
        return self.run(images, labels, labels)

    def run(self, images, labels, eval_labels):
        """``labels`` feed the objective, ``eval_labels`` the scoring (the latent attack's labels are codes)."""
        x0 = images.clone().detach().to(self.device)
        y = labels.clone().detach().to(self.device)
        ye = eval_labels.clone().detach().to(self.device)
        gen = torch.Generator().manual_seed(self.seed)
        n = x0.shape[0]
        best = x0.clone()
        fooled = torch.zeros(n, dtype=torch.bool, device=x0.device)
        fooled_by = {t: torch.zeros(n, dtype=torch.bool, device=x0.device) for t in self.checkpoints}
        free = self.worst_case and self.eval_model is None and self.eot_iter == 1
        for r in range(self.restarts):
            start = torch.empty(x0.shape).uniform_(-self.eps, self.eps, generator=gen)  # CPU: same on every device
            x = (x0 + start.to(x0.device)).clamp(0, 1)
            fooled_r = torch.zeros(n, dtype=torch.bool, device=x0.device)
            for t in range(1, self.steps + 1):
                g, logits = self.gradient(x, y)
                if free:  # the logits of the exact defended model at the current iterate
                    new = (logits.argmax(1) != ye) & ~fooled
                    best[new], fooled[new] = x[new], True
                    fooled_r |= logits.argmax(1) != ye
                x = x.detach() + self.alpha * g.sign()
                x = (x0 + (x - x0).clamp(-self.eps, self.eps)).clamp(0, 1)
                if t in fooled_by:
                    wrong = self._predict(x) != ye
                    if self.worst_case:
                        new = wrong & ~fooled
                        best[new], fooled[new] = x[new], True
                        fooled_r |= wrong
                        fooled_by[t] |= fooled_r
                    else:
                        fooled_by[t] = wrong
            if not self.worst_case:
                best, fooled = x.detach(), fooled_by[self.steps]
        self.curve = {t: 100.0 * (1 - fooled_by[t].float().mean().item()) for t in self.checkpoints}
        self.fooled = fooled.cpu()
        return best.detach()


def pgd_over(model, x, y, cfg: AdaptiveConfig, eps, eval_model=None, eot_iter=1, worst_case=True, restarts=None,
              cache: BatchCache | None = None, tag: str = "", budget: dict | None = None, generators=()):
    """TrackedPGD in batches (each seeded ``cfg.seed`` + its first image's index); returns (x_adv, fooled (N,),
    curve {step: acc}). With ``cache``, finished batches are kept under ``tag`` (``generators``: those of the
    randomized purifiers the attack draws from, see ``BatchCache``)."""

    def one(i, xb, yb):
        atk = TrackedPGD(model, eps=eps, alpha=cfg.alpha_ratio * eps, steps=cfg.steps,
                         restarts=cfg.restarts if restarts is None else restarts, loss=cfg.loss, eot_iter=eot_iter,
                         eval_model=eval_model, checkpoints=cfg.checkpoints, worst_case=worst_case,
                         seed=cfg.seed + i)
        xa = atk(xb, yb)
        return xa, {"fooled": atk.fooled, "curve": atk.curve}

    return tracked_over(one, x, y, cfg, cache, tag, budget, generators)


def tracked_over(one, x, y, cfg: AdaptiveConfig, cache: BatchCache | None, tag: str, budget: dict | None,
                  generators=()):
    """``one(start, xb, yb) -> (x_adv_b, {"fooled", "curve"})`` over the batches, through ``cache`` when given;
    returns (x_adv, fooled (N,), curve {step: acc} weighted by batch size)."""
    if cache is None:
        starts = range(0, len(x), cfg.batch_size)
        parts = [one(i, x[i:i + cfg.batch_size], y[i:i + cfg.batch_size]) for i in starts]
        adv, extras = torch.cat([a for a, _ in parts]), [e for _, e in parts]
    else:
        adv, extras = cache.map(tag, {**(budget or {}), "checkpoints": list(cfg.checkpoints)}, one, x, y,
                                cfg.batch_size, generators)
    sizes = [len(e["fooled"]) for e in extras]
    curve = {t: sum(e["curve"][t] * s for e, s in zip(extras, sizes)) / sum(sizes) for t in extras[0]["curve"]}
    return adv, torch.cat([e["fooled"] for e in extras]), curve


def run_pgd(ctx, eps: float, name: str, model):
    """Attack ``name``: TrackedPGD on ``model`` (the defended model with BPDA or the full gradient), each image's
    first fooling iterate kept; scored on the deterministic defended model."""
    xa, fooled, curve = pgd_over(model, ctx.x, ctx.y, ctx.cfg, eps, cache=ctx.cache, tag=f"{name}_eps{eps:g}",
                                 budget=ctx.budget(name))
    return xa, fooled, {"curve": curve}
