"""Adaptive attacks on the whole defended pipeline ``classifier(purifier(x))`` (L-inf, images Nx1x28x28 in [0, 1]).

Purification defenses look strong against attackers who ignore them (``evaluate.py``: the oblivious attacker) and
often fall to attackers who do not (Athalye, Carlini & Wagner 2018, "Obfuscated gradients give a false sense of
security"; Croce et al. 2022, "Evaluating the adversarial robustness of adaptive test-time defenses"). Every attack
here targets the defended model, each at every ``eps`` on the first ``n`` test images:

| name       | attacker | gradient / access |
|------------|----------|-------------------|
| ``bpda``     | PGD (``TrackedPGD``) | BPDA: purifier = identity on the backward pass, ``x + (purify(x) - x).detach()`` |
| ``bpda_eot`` | PGD + EOT | BPDA, averaged over ``eot_samples`` draws of a *randomised* purifier (R noisy restarts, fresh noise per draw) |
| ``full``     | PGD | exact gradient through all T unrolled purification steps (``Purifier(differentiable=True)``) |
| ``full_eot`` | PGD + EOT | the exact gradient of ``full`` through the *randomised* purifier of ``bpda_eot``, averaged over its draws |
| ``apgd``     | APGD-CE then APGD-T (torchattacks; AutoAttack's gradient components) | the better of bpda / full |
| ``fab``      | FAB-T (torchattacks; AutoAttack's minimum-norm component), success only within eps | as apgd |
| ``square``   | Square (torchattacks), scores only | queries the deployed runtime (``vaegan.runtime``, fused ONNX backend) |
| ``transfer`` | PGD on an independently trained surrogate classifier | none of the defended model |
| ``latent``   | PGD on ``||mu_E(x + d) - mu_E(x_target)||^2`` (x_target: an image of another class) | encoder only |

Accuracy is the defended model's accuracy on the attack's output. PGD attacks (``TrackedPGD``) keep, per image, the
first iterate that fools the (deterministic) defended model, checked every step where the model's own logits come
for free and at the convergence checkpoints (accuracy vs steps, e.g. 10/20/50/100) otherwise. ``bpda_eot`` attacks
(and is scored on) the randomised purifier, a different defense from the deployed deterministic one: its row says so.
``transfer`` scores the final iterate only (choosing iterates by querying the defended model would not be transfer),
and so do ``bpda_eot`` and ``full_eot``, with a fresh draw of the randomised purifier (a lucky draw must not count as a success).
The ``any`` row is the per-image worst case over the white-box/black-box attacks on the deterministic defense.

Each result records its budget, its device and the images it fooled (a packed mask), so that ``merge_reports`` can
join runs split by attack, eps or device into one table whose worst-case row is the per-image union. The attacks
run on the CPU or on a CUDA device (``device``); random starts and restart noise are drawn on the CPU from the
seeds, so both devices attack with the same draws.

Outputs: ``OUT/adaptive.md``, ``OUT/adaptive.json``, ``OUT/adaptive.png`` (accuracy vs eps per attack, with the
oblivious numbers from ``OUT/report.json`` when ``vaegan-eval`` wrote one there).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchattacks.attack import Attack

from . import checkpoint as ckpt_io
from .config import PurifyConfig, check_eps, resolve_device
from .errors import VaeganError
from .evaluate import predict
from .purifier import Defended, Purifier, check_config, purify

ATTACKS = ("bpda", "bpda_eot", "full", "full_eot", "apgd", "fab", "square", "transfer", "latent")
# attacked and scored on the randomized purifier (eot_restarts noisy restarts), not the deployed one
RANDOMIZED = ("bpda_eot", "full_eot")
# scored on the deterministic defense: the "any" (worst-case) row
WHITE_OR_BLACK_BOX = ("bpda", "full", "apgd", "fab", "square", "latent")
LOSSES = ("ce", "margin")
# the AdaptiveConfig fields that set each attack's budget: recorded per result, so that merged runs keep theirs
BUDGET = {"bpda": ("steps", "restarts", "alpha_ratio", "loss"), "full": ("steps", "restarts", "alpha_ratio", "loss"),
          "bpda_eot": ("steps", "alpha_ratio", "loss", "eot_samples", "eot_restarts"),
          "full_eot": ("steps", "alpha_ratio", "loss", "eot_samples", "eot_restarts"),
          "apgd": ("steps", "apgd_targets"), "fab": ("steps", "fab_targets"), "square": ("square_queries",),
          "transfer": ("steps", "alpha_ratio", "loss"), "latent": ("steps", "alpha_ratio")}


def attack_budget(name: str, config: dict) -> dict:
    """The budget of attack ``name`` under an AdaptiveConfig given as a dict (a report's "config")."""
    return {k: config[k] for k in BUDGET[name] if k in config}


def pack_mask(mask: torch.Tensor) -> str:
    """A per-image bool mask as hex (8 images per byte), so reports carry per-image outcomes compactly."""
    return np.packbits(mask.detach().cpu().numpy().astype(np.uint8)).tobytes().hex()


def unpack_mask(text: str, n: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))
    if len(bits) < n:
        raise VaeganError(f"a per-image mask holds {len(bits)} images, the report {n}")
    return bits[:n].astype(bool)


def _fmt_budget(b: dict) -> str:
    names = {"steps": ("step", "steps"), "restarts": ("restart", "restarts"), "apgd_targets": ("target", "targets"),
             "fab_targets": ("target", "targets"),
             "eot_samples": ("EOT sample", "EOT samples"), "eot_restarts": ("R", "R"),
             "square_queries": ("query", "queries")}
    parts = [f"{v:g} {names[k][v != 1]}" for k, v in b.items() if k in names and not (k == "restarts" and v == 1)]
    return ", ".join(parts + (["CW-margin loss"] if b.get("loss") == "margin" else []))


def _run_label(run: dict, runs: list[dict]) -> str:
    """A merged run's budget, with its device where another run of the list has the same budget."""
    label = _fmt_budget(run["budget"])
    if sum(r["budget"] == run["budget"] for r in runs) > 1:
        label += f" on {run.get('device', 'an unrecorded device')}"
    return label


@dataclass
class AdaptiveConfig:
    n: int = 1000                        # the first n test images (fixed subset)
    eps: tuple = (0.05, 0.1, 0.2, 0.3)
    attacks: tuple = ATTACKS
    steps: int = 100                     # PGD steps (bpda, bpda_eot, full, full_eot, transfer, latent); APGD too
    checkpoints: tuple = (10, 20, 50, 100)  # convergence check: accuracy after this many steps (<= steps)
    alpha_ratio: float = 0.1             # PGD step size = alpha_ratio * eps
    restarts: int = 1                    # PGD random restarts (per-image worst case over restarts)
    loss: str = "ce"                     # PGD loss: "ce" or "margin" (CW margin)
    eot_samples: int = 20                # draws of the randomised purifier per gradient (bpda_eot, full_eot)
    eot_restarts: int = 4                # R of the randomised purifier they attack (fresh noise per draw)
    apgd_grad: str = "auto"              # "bpda", "full" or "auto" (the one with the lower accuracy at that eps)
    apgd_targets: int = 9                # APGD-T target classes (AutoAttack: 9)
    fab_targets: int = 9                 # FAB-T target classes (AutoAttack: 9)
    square_queries: int = 1000           # per image (AutoAttack standard: 5000)
    artifacts: str | None = None         # exported artifacts for square (default: export to OUT/artifacts)
    surrogate: str | None = None         # surrogate classifier checkpoint for transfer (default: train one)
    surrogate_epochs: int = 2
    surrogate_train_limit: int | None = None
    surrogate_width_div: int = 8
    latent_pool: int = 2000              # x_target is the first image of the target class among the first K test images
    seed: int = 0
    batch_size: int = 100
    threads: int | None = None
    device: str = "cpu"                  # torch device of the attacks ("cuda", "cuda:1"); square: the CPU runtime
    purify: PurifyConfig = field(default_factory=PurifyConfig)
    out: str = "reports"
    data_root: str | None = None

    def __post_init__(self):
        self.eps = tuple(float(e) for e in self.eps)
        self.attacks = tuple(self.attacks)
        self.checkpoints = tuple(int(c) for c in self.checkpoints)
        bad = [a for a in self.attacks if a not in ATTACKS]
        if bad:
            raise VaeganError(f"unknown adaptive attack {bad[0]!r} (expected one of {', '.join(ATTACKS)})")
        if not self.attacks:
            raise VaeganError("no attack selected")
        for e in self.eps:
            check_eps(e)
        if self.n < 1 or self.steps < 1 or self.restarts < 1 or self.eot_samples < 1 or self.batch_size < 1:
            raise VaeganError(f"n, steps, restarts, eot-samples and batch-size must be >= 1 (got n={self.n}, "
                              f"steps={self.steps}, restarts={self.restarts}, eot_samples={self.eot_samples}, "
                              f"batch_size={self.batch_size})")
        if self.eot_restarts < 2:
            raise VaeganError(f"eot-restarts must be >= 2 (the randomness of the purifier; got {self.eot_restarts})")
        if self.loss not in LOSSES:
            raise VaeganError(f"unknown loss {self.loss!r} (expected one of {', '.join(LOSSES)})")
        if self.apgd_grad not in ("auto", "bpda", "full"):
            raise VaeganError(f"unknown apgd gradient {self.apgd_grad!r} (expected auto, bpda or full)")
        if not 0 < self.alpha_ratio <= 1:
            raise VaeganError(f"alpha-ratio must be in (0, 1] (got {self.alpha_ratio})")
        for flag, v in (("apgd-targets", self.apgd_targets), ("fab-targets", self.fab_targets)):
            if not 1 <= v <= 9:
                raise VaeganError(f"{flag} must be in 1..9 (got {v})")
        resolve_device(self.device)
        try:
            check_config(self.purify)
        except ValueError as e:
            raise VaeganError(str(e)) from None


# ------------------------------------------------------------------------------------------------ defended models

class StraightThrough(nn.Module):
    """BPDA (Athalye et al. 2018): the purifier on the forward pass, the identity on the backward pass,
    ``x + (purify(x) - x).detach()``; so d classifier(purifier(x)) / dx = the classifier's gradient at purify(x)."""

    def __init__(self, purifier: nn.Module):
        super().__init__()
        self.purifier = purifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            p = self.purifier(x.detach())
        return x + (p - x).detach()


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


class MeanEncoder(nn.Module):
    """x -> mu_E(x) (the latent attack's target network)."""

    def __init__(self, vg):
        super().__init__()
        self.vg = vg.eval()

    def forward(self, x):
        return self.vg.encoder(x)[0]


class RuntimeModel(nn.Module):
    """The deployed runtime (``vaegan.runtime``: purifier backend + classifier over ONNX Runtime) as an
    ``nn.Module`` that returns logits computed in numpy: scores only, no gradient ever reaches the input (the output
    is a fresh leaf tensor, ``grad_fn is None``). For black-box attacks (Square).

    ``queries`` counts the images sent to the runtime; ``grad_enabled_calls`` how many calls arrived with autograd
    on (harmless: nothing here is differentiable, it is recorded so tests can see it)."""

    def __init__(self, artifacts_dir, purify_cfg: PurifyConfig | None = None, backend: str = "fused",
                 threads: int | None = None):
        super().__init__()
        from vaegan.runtime.artifacts import load_artifacts
        from vaegan.runtime.purify import PurifyParams, make_classifier, make_purifier

        self.artifacts = load_artifacts(artifacts_dir)
        params = None
        if purify_cfg is not None:
            if purify_cfg.mode != "latent" or purify_cfg.init != "encoder":
                raise VaeganError(f"the runtime implements mode=latent, init=encoder only (got mode={purify_cfg.mode}"
                                  f", init={purify_cfg.init}): square cannot attack this purifier")
            params = PurifyParams.from_settings(asdict(purify_cfg))
        self.purifier = make_purifier(self.artifacts, backend, params, threads=threads)
        self.classifier = make_classifier(self.artifacts, backend, threads=threads)
        self._active = False
        # a zero-size frozen parameter so torchattacks finds the device (it reads next(model.parameters()))
        self._device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)
        self.queries = 0
        self.calls = 0
        self.grad_enabled_calls = 0

    def activate(self):
        if not self._active:
            self.purifier.activate()
            self.classifier.runner.activate()
            self._active = True

    def close(self):
        if self._active:
            self.purifier.deactivate()
            self.classifier.runner.deactivate()
            self._active = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.grad_enabled_calls += int(torch.is_grad_enabled())
        self.queries += x.shape[0]
        self.activate()
        xn = x.detach().cpu().float().numpy()
        out = self.purifier.purify(xn)
        _, _, logits = self.classifier(out.purified, self.artifacts.max_batch)
        return torch.from_numpy(logits.copy()).to(x.device)


# ------------------------------------------------------------------------------------------------ attacks

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


def apgd(model, eps: float, steps: int, seed: int = 0, targets: int = 9):
    """AutoAttack's gradient components (Croce & Hein 2020): APGD-CE, then APGD-T (DLR, ``targets`` target
    classes) on the images APGD-CE did not fool (torchattacks ``MultiAttack``)."""
    import torchattacks

    ce = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce")
    t = torchattacks.APGDT(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, n_classes=10)
    t.n_target_classes = targets
    return torchattacks.MultiAttack([ce, t])


def fab(model, eps: float, steps: int, seed: int = 0, targets: int = 9):
    """AutoAttack's minimum-norm component: FAB-T (Croce & Hein 2020), ``targets`` target classes in turn, each
    run only on the images not yet fooled; an image counts as fooled only within ``eps`` (torchattacks ``FAB``)."""
    import torchattacks

    a = torchattacks.FAB(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, multi_targeted=True,
                         n_classes=10)
    a.n_target_classes = targets
    return a


def latent_targets(y: torch.Tensor, pool_x: torch.Tensor, pool_y: torch.Tensor,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image a target class != y (seeded, as ``attacks.random_targets``) and x_target: the first image of that
    class in the pool."""
    from .attacks import random_targets

    t = random_targets(y, seed)
    first = {}
    for i, c in enumerate(pool_y.tolist()):
        first.setdefault(c, i)
    missing = sorted({c for c in t.tolist() if c not in first})
    if missing:
        raise VaeganError(f"the latent-target pool has no image of class(es) {missing}: raise --latent-pool")
    return t, pool_x[torch.tensor([first[c] for c in t.tolist()])]


# ------------------------------------------------------------------------------------------------ the evaluation

@torch.no_grad()
def accuracy(model, x, y, bs=250) -> float:
    return 100.0 * (predict(model, x, bs) == y).float().mean().item()


def _pgd_over(model, x, y, cfg: AdaptiveConfig, eps, eval_model=None, eot_iter=1, worst_case=True, restarts=None,
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

    return _tracked_over(one, x, y, cfg, cache, tag, budget, generators)


def _tracked_over(one, x, y, cfg: AdaptiveConfig, cache: BatchCache | None, tag: str, budget: dict | None,
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


def _sha256(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class BatchCache:
    """The finished batches of every attack (bpda, full, apgd, fab, square, transfer, latent on the deterministic
    defense; bpda_eot, full_eot on the randomized one), one file each under ``OUT/partial/``, so that an interrupted run resumes at its first unfinished batch
    (an AutoAttack-budget Square run is hours on this CPU). Each batch of these attacks is a function of its images,
    labels and seed alone (torchattacks seeds every call, ``TrackedPGD`` takes the batch's seed), so a resumed run
    writes what an uninterrupted one would. The EOT attacks (bpda_eot, full_eot) also depend on the randomized
    purifiers' generators, which draw across batches: ``map(..., generators=...)`` keys each batch on the generators'
    states at its start and keeps their states at its end, restored when the batch is reused, so a resumed EOT run
    continues the same random streams. A file is reused only when its key matches: attack, eps, budget, seed, device,
    checkpoints, purifier settings, the sha256 of the batch's images and labels (and of the generator states); anything
    else (another budget, corrupt file) is recomputed and overwritten. ``_evaluate_adaptive`` removes the folder once
    the report is written."""

    def __init__(self, root: Path, base: dict, echo=print):
        self.root = Path(root)
        self.base = base
        self.echo = echo
        self.reused = 0  # batches the last ``map`` took from disk

    def _key(self, tag: str, budget: dict, index: int, xb: torch.Tensor, yb: torch.Tensor, generators=()) -> str:
        rng = {"rng": _sha256(*(g.get_state() for g in generators))} if generators else {}
        return json.dumps({**self.base, "tag": tag, "budget": budget, "batch": index, "inputs": _sha256(xb, yb),
                           **rng}, sort_keys=True, default=str)

    def map(self, tag: str, budget: dict, fn, x: torch.Tensor, y: torch.Tensor, batch_size: int, generators=()):
        """``fn(start, xb, yb) -> (x_adv_b, extras)`` over the batches (``start``: the batch's first image; extras: a
        dict of numbers, CPU tensors and dicts of numbers); returns (x_adv, the batches' extras in order) and sets
        ``reused`` to the number of batches taken from an earlier run. ``budget``: what else sets the result (part
        of the key). ``generators``: the ``torch.Generator`` s that ``fn`` draws from (their states enter the key,
        and a reused batch leaves them where the batch that wrote it did)."""
        advs, extras, reused = [], [], 0
        batches = list(zip(x.split(batch_size), y.split(batch_size)))
        for i, (xb, yb) in enumerate(batches):
            path = self.root / f"{tag}_b{i:04d}.pt"
            key = self._key(tag, budget, i, xb, yb, generators)
            hit = None
            if path.is_file():
                try:
                    saved = torch.load(path, map_location="cpu", weights_only=True)
                    if (saved.get("key") == key and saved["x_adv"].shape == xb.shape
                            and len(saved.get("rng_after", [])) == len(generators)):
                        hit = saved
                except Exception as e:  # a truncated file from a killed run: recompute it
                    self.echo(f"{path}: unreadable ({type(e).__name__}: {e}); recomputing that batch")
            if hit is None:
                t0 = time.perf_counter()
                xa, ex = fn(i * batch_size, xb, yb)
                hit = {"key": key, "x_adv": xa.detach().cpu(), "rng_after": [g.get_state() for g in generators],
                       "extras": {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in ex.items()}}
                self.root.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save(hit, tmp)
                os.replace(tmp, path)  # a kill mid-write leaves the .tmp, never a half-written batch file
                self.echo(f"{tag}: batch {i + 1}/{len(batches)} done ({time.perf_counter() - t0:.0f}s), "
                          f"kept in {path}")
            else:
                reused += 1
                for g, state in zip(generators, hit["rng_after"]):
                    g.set_state(state)
            advs.append(hit["x_adv"].to(x.device))
            extras.append(hit["extras"])
        if reused:
            self.echo(f"{tag}: {reused} of {len(batches)} batches reused from {self.root}")
        self.reused = reused
        return torch.cat(advs), extras

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def ensure_artifacts(cfg: AdaptiveConfig, vaegan_path, classifier_path, echo=print) -> Path:
    """The artifacts Square queries: ``cfg.artifacts``, else OUT/artifacts (exported there on first use). Refuses
    artifacts exported from other checkpoints."""
    root = Path(cfg.artifacts) if cfg.artifacts else Path(cfg.out) / "artifacts"
    if not (root / "manifest.json").is_file():
        if cfg.artifacts:
            raise VaeganError(f"{root}: no manifest.json (export with `vaegan-export --out {root}`)")
        from vaegan.export import export_all

        echo(f"exporting the runtime artifacts to {root} (for square) ...")
        export_all(vaegan_path, classifier_path, root, purify_cfg=cfg.purify, echo=lambda *a, **k: None)
    m = json.loads((root / "manifest.json").read_text())
    for key, path in (("checkpoint", vaegan_path), ("classifier_checkpoint", classifier_path)):
        sha = (m.get(key) or {}).get("sha256")
        if sha != ckpt_io.file_sha256(path):
            raise VaeganError(f"{root}: exported from another {key.replace('_', ' ')} than {path} "
                              f"(sha256 {str(sha)[:12]}...); square must query the model under test: re-export")
    return root


def surrogate_checkpoint(cfg: AdaptiveConfig, echo=print) -> Path:
    """``cfg.surrogate``, else a VGG16 trained here on another seed and width (OUT/surrogate/model.pt)."""
    if cfg.surrogate:
        return Path(cfg.surrogate)
    from .config import ClassifierArgs, ClassifierConfig
    from .trainer import train_classifier

    out = Path(cfg.out) / "surrogate"
    if not (out / "model.pt").is_file():
        echo(f"training a surrogate classifier (seed {cfg.seed + 1}, width_div {cfg.surrogate_width_div}, "
             f"{cfg.surrogate_epochs} epochs) in {out} ...")
        train_classifier(ClassifierConfig(out=str(out), epochs=cfg.surrogate_epochs, seed=cfg.seed + 1,
                                          train_limit=cfg.surrogate_train_limit, eval_limit=500,
                                          data_root=cfg.data_root,
                                          model=ClassifierArgs(width_div=cfg.surrogate_width_div, fc_width=128)))
    return out / "model.pt"


@contextmanager
def _full_fp32(dev: torch.device):
    """On CUDA: fp32 convolutions and matmuls as on the CPU (cuDNN would use TF32 by default); the caller's settings
    come back on exit."""
    if dev.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def evaluate_adaptive(vaegan_path, classifier_path, cfg: AdaptiveConfig, data=None, echo=print) -> dict:
    """Run ``cfg.attacks`` at every ``cfg.eps`` on the first ``cfg.n`` test images; write OUT/adaptive.{md,json,png}.
    ``data`` = (x, y) overrides the test subset (tests); the latent-target pool is then x itself."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dev = torch.device(cfg.device)
    with _full_fp32(dev):
        return _evaluate_adaptive(vaegan_path, classifier_path, cfg, dev, data, echo)


def _evaluate_adaptive(vaegan_path, classifier_path, cfg: AdaptiveConfig, dev: torch.device, data, echo) -> dict:
    from .data import test_subset

    vg, _ = ckpt_io.load_model(vaegan_path, "vaegan")
    clf, _ = ckpt_io.load_model(classifier_path, "classifier")
    vg, clf = vg.to(dev), clf.to(dev)
    if data is None:
        x, y, _ = test_subset(cfg.n, cfg.data_root)
    else:
        x, y = data[0][: cfg.n], data[1][: cfg.n]
    x, y = x.to(dev), y.to(dev)
    pcfg = cfg.purify
    # .eval() on every wrapper: nn.Module starts in training mode, and torchattacks restores the mode it found
    # after each attack (``_recover_model_mode``), which would leave the shared classifier in training mode
    # (dropout, batch-statistics BatchNorm) for everything scored afterwards.
    defended = Defended(Purifier(vg, pcfg), clf).eval()                   # scores everything deterministic
    bpda = Defended(StraightThrough(Purifier(vg, pcfg)), clf).eval()
    full = Defended(Purifier(vg, pcfg, differentiable=True), clf).eval()
    rcfg = replace(pcfg, restarts=max(cfg.eot_restarts, pcfg.restarts))
    rand_eval = Defended(RandomizedPurifier(vg, rcfg, seed=cfg.seed + 1_000_003), clf).eval()

    res: dict = {"clean": {"classifier": accuracy(clf, x, y), "defended": accuracy(defended, x, y)},
                 "attacks": {}, "any": {}}
    if any(a in cfg.attacks for a in RANDOMIZED):
        res["clean"]["defended_randomized"] = accuracy(rand_eval, x, y)
    echo(f"clean: classifier {res['clean']['classifier']:.2f}%, defended {res['clean']['defended']:.2f}% "
         f"(first {len(x)} test images)")
    fooled_any = {e: torch.zeros(len(x), dtype=torch.bool) for e in cfg.eps}
    n_threads = torch.get_num_threads()
    device_name = (f"cuda ({torch.cuda.get_device_name(dev)}, torch {torch.__version__})" if dev.type == "cuda"
                   else f"cpu ({n_threads} thread{'s' * (n_threads != 1)}, torch {torch.__version__})")
    extras: dict = {}
    if "transfer" in cfg.attacks:
        sp = surrogate_checkpoint(cfg, echo)
        surrogate, _ = ckpt_io.load_model(sp, "classifier")
        surrogate = surrogate.to(dev)
        extras["surrogate"] = {"path": str(sp), "sha256": ckpt_io.file_sha256(sp),
                               "clean_accuracy": accuracy(surrogate, x, y)}
    if "square" in cfg.attacks:
        runtime = RuntimeModel(ensure_artifacts(cfg, vaegan_path, classifier_path, echo), pcfg,
                               threads=cfg.threads).eval()
        extras["runtime"] = {"backend": runtime.purifier.name, "clean_accuracy": accuracy(runtime, x, y)}
    if "latent" in cfg.attacks:
        if data is None:
            px, py, _ = test_subset(max(cfg.latent_pool, cfg.n), cfg.data_root)
        else:
            px, py = data
        tcls, xt = latent_targets(y, px.to(dev), py.to(dev), cfg.seed)
        with torch.no_grad():
            codes = MeanEncoder(vg)(xt)

    cache = BatchCache(Path(cfg.out) / "partial",
                       {"checkpoints": [ckpt_io.file_sha256(vaegan_path), ckpt_io.file_sha256(classifier_path)],
                        "purify": asdict(pcfg), "seed": cfg.seed, "device": dev.type},
                       echo)
    for name in [a for a in ATTACKS if a in cfg.attacks]:
        res["attacks"][name] = {}
        for eps in cfg.eps:
            t0 = time.perf_counter()
            rec: dict = {}
            cache.reused = 0
            if name in ("bpda", "full"):
                xa, fooled, curve = _pgd_over(bpda if name == "bpda" else full, x, y, cfg, eps, cache=cache,
                                              tag=f"{name}_eps{eps:g}", budget=attack_budget(name, asdict(cfg)))
                rec["curve"] = curve
            elif name in RANDOMIZED:
                exact = name == "full_eot"  # the gradient through the loop; bpda_eot: straight through it
                rand = RandomizedPurifier(vg, rcfg, seed=cfg.seed + int(eps * 1e4), differentiable=exact)
                rand_grad = Defended(rand if exact else StraightThrough(rand), clf).eval()
                xa, fooled, curve = _pgd_over(rand_grad, x, y, cfg, eps, eval_model=rand_eval,
                                              eot_iter=cfg.eot_samples, worst_case=False, restarts=1, cache=cache,
                                              tag=f"{name}_eps{eps:g}", budget=attack_budget(name, asdict(cfg)),
                                              generators=(rand.gen, rand_eval.purifier.gen))
                seed_at = "mu_E(x) + " if rcfg.init == "encoder" else ""
                rec.update(curve=curve, defense=f"R={rcfg.restarts} restarts, all seeded at {seed_at}"
                                                f"{rcfg.noise:g} N(0, I), fresh noise per call",
                           eot_samples=cfg.eot_samples)
            elif name in ("apgd", "fab"):
                grad = cfg.apgd_grad
                if grad == "auto":
                    done = {g: res["attacks"][g][str(eps)]["accuracy"] for g in ("bpda", "full")
                            if str(eps) in res["attacks"].get(g, {})}
                    grad = min(done, key=done.get) if done else "full"
                model = bpda if grad == "bpda" else full
                make = apgd if name == "apgd" else fab
                targets = cfg.apgd_targets if name == "apgd" else cfg.fab_targets
                xa, _ = cache.map(f"{name}_{grad}_eps{eps:g}", attack_budget(name, asdict(cfg)),
                                  lambda _, xb, yb: (make(model, eps, cfg.steps, cfg.seed, targets)(xb, yb), {}),
                                  x, y, cfg.batch_size)
                with torch.no_grad():
                    fooled = predict(defended, xa, cfg.batch_size) != y
                rec["gradient"] = grad
            elif name == "square":
                import torchattacks

                def square_batch(_, xb, yb):
                    q0 = runtime.queries
                    xa = torchattacks.Square(runtime, norm="Linf", eps=eps, n_queries=cfg.square_queries,
                                             n_restarts=1, seed=cfg.seed, loss="margin")(xb, yb)
                    return xa, {"queries": runtime.queries - q0}

                xa, per_batch = cache.map(f"square_eps{eps:g}", attack_budget(name, asdict(cfg)), square_batch,
                                          x, y, cfg.batch_size)
                with torch.no_grad():
                    fooled = predict(runtime, xa, cfg.batch_size) != y
                    torch_acc = accuracy(defended, xa, y)
                rec.update(queries=sum(b["queries"] for b in per_batch), torch_reference_accuracy=torch_acc)
            elif name == "transfer":
                xa, _, curve = _pgd_over(surrogate, x, y, cfg, eps, eval_model=defended, worst_case=False,
                                         restarts=1, cache=cache, tag=f"transfer_eps{eps:g}",
                                         budget={**attack_budget(name, asdict(cfg)),
                                                 "surrogate": extras["surrogate"]["sha256"]})
                with torch.no_grad():
                    fooled = predict(defended, xa, cfg.batch_size) != y
                rec.update(curve=curve, surrogate_accuracy=accuracy(surrogate, xa, y),
                           undefended_accuracy=accuracy(clf, xa, y))
            else:  # latent
                xa, fooled, curve = _latent_over(vg, defended, x, y, codes, cfg, eps, cache=cache,
                                                 tag=f"latent_eps{eps:g}", budget=attack_budget(name, asdict(cfg)))
                with torch.no_grad():
                    pred = predict(defended, xa, cfg.batch_size)
                rec.update(curve=curve, target_success=100.0 * (pred == tcls).float().mean().item(),
                           latent_distance_before=_latent_dist(vg, x, codes),
                           latent_distance_after=_latent_dist(vg, xa, codes))
            assert not clf.training and not vg.training, f"{name}: a net was left in training mode"
            linf = (xa - x).abs().amax().item()
            if linf > eps + 1e-5:  # a bug, not a user error
                raise AssertionError(f"{name} eps {eps}: perturbation {linf} exceeds the budget")
            rec.update(accuracy=100.0 * (1 - fooled.float().mean().item()), seconds=time.perf_counter() - t0,
                       linf=linf, budget=attack_budget(name, asdict(cfg)), device=device_name,
                       fooled=pack_mask(fooled))
            if cache.reused:  # ``seconds`` then covers only the batches this run computed
                rec["resumed_batches"] = cache.reused
            if name in WHITE_OR_BLACK_BOX or name == "transfer":
                fooled_any[eps] |= fooled.cpu()
            res["attacks"][name][str(eps)] = rec
            echo(f"{name:9s} eps {eps:<5g} accuracy {rec['accuracy']:6.2f}%  ({rec['seconds']:.0f}s)"
                 + (f"  curve {_fmt_curve(rec['curve'])}" if "curve" in rec else ""))
    if any(a in cfg.attacks for a in WHITE_OR_BLACK_BOX + ("transfer",)):
        res["any"] = {str(e): 100.0 * (1 - f.float().mean().item()) for e, f in fooled_any.items()}
    report = {"n": len(x), "eps": list(cfg.eps), "config": json.loads(json.dumps(asdict(cfg), default=list)),
              **res, **extras,
              "checkpoints": {"vaegan": ckpt_io.file_sha256(vaegan_path),
                              "classifier": ckpt_io.file_sha256(classifier_path)},
              "threads": torch.get_num_threads(), "device": device_name,
              "oblivious": oblivious_numbers(Path(cfg.out) / "report.json")}
    if "square" in cfg.attacks:
        runtime.close()
    write_adaptive(report, Path(cfg.out))
    cache.clear()
    return report


def _latent_dist(vg, x, codes) -> float:
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


def _latent_over(vg, defended, x, y, codes, cfg, eps, cache: BatchCache | None = None, tag: str = "",
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

    return _tracked_over(one, x, y, cfg, cache, tag, {**(budget or {}), "codes": _sha256(codes)})


def _fmt_curve(curve: dict) -> str:
    return " ".join(f"{t}:{a:.1f}" for t, a in curve.items())


# ------------------------------------------------------------------------------------------------ report

def oblivious_numbers(path: Path) -> dict | None:
    """From ``vaegan-eval``'s report.json: {attack: {eps: accuracy}} of the classifier alone ("none") and of the
    vaegan purifier row, and the n they were measured on; None if there is no report."""
    if not path.is_file():
        return None
    try:
        rep = json.loads(path.read_text())
        table = rep["table"]
    except (OSError, ValueError, KeyError):
        return None
    rows = {"undefended": table.get("none", {})}
    rows.update({"purified": v for k, v in table.items() if k.startswith("vaegan (")})
    out: dict = {"n": rep.get("n"), "rows": {}}
    for row, vals in rows.items():
        for col, acc in vals.items():
            if "_eps" in col:
                atk, e = col.split("_eps")
                out["rows"].setdefault(f"oblivious {atk} ({row})", {})[str(float(e))] = acc
    return out


LABELS = {"bpda": "BPDA + PGD", "bpda_eot": "BPDA + EOT + PGD (randomized purifier)",
          "full": "full-gradient PGD (unrolled T steps)",
          "full_eot": "full-gradient EOT + PGD (randomized purifier)", "apgd": "APGD-CE + APGD-T", "fab": "FAB-T",
          "square": "Square (runtime, scores)",
          "transfer": "transfer from surrogate", "latent": "latent-space PGD"}


def write_adaptive(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    eps = [str(e) for e in report["eps"]]
    c = report["clean"]
    md = [f"# Adaptive attacks on classifier(purifier(x)) (first {report['n']} test images, L-inf)", "",
          f"Clean accuracy: classifier {c['classifier']:.2f}%, defended {c['defended']:.2f}%"
          + (f", defended with the randomized purifier {c['defended_randomized']:.2f}%"
             if "defended_randomized" in c else "") + ".", "",
          "Accuracy (%) of the defended model on each attack's output:", "",
          "| attack | " + " | ".join(f"eps {e}" for e in eps) + " |", "|---" * (len(eps) + 1) + "|"]
    cut = [f"{name} eps {e} ({run['cut_from']} images)" for name, per in report["attacks"].items()
           for e in eps if e in per for run in per[e].get("runs", [per[e]]) if "cut_from" in run]
    if cut:
        md[4:4] = [f"Cut to these {report['n']} images from runs over more, by their per-image outcomes (their "
                   f"convergence curves are not shown): {', '.join(cut)}.", ""]
    for name, per in report["attacks"].items():
        md.append(f"| {LABELS[name]} | " + " | ".join(f"{per[e]['accuracy']:.2f}" if e in per else "–" for e in eps)
                  + " |")
    if report["any"]:
        label = {"min": "lowest over the attacks above (merged runs; per image within each run)",
                 "union+min": "worst case over the attacks above (per image where runs recorded it, else the lowest)",
                 "union": "worst case over the attacks above and their runs (per image)"}.get(
            report.get("any_kind"), "worst case over the attacks above (per image; deterministic purifier)")
        md.append(f"| **{label}** | " + " | ".join(f"**{report['any'][e]:.2f}**" if e in report["any"] else "–"
                                                 for e in eps) + " |")
    obl = report.get("oblivious")
    if obl:
        for row, per in obl["rows"].items():
            md.append(f"| {row}, first {obl['n']} | " + " | ".join(f"{per[e]:.2f}" if e in per else "–" for e in eps)
                      + " |")
    else:
        md.append("")
        md.append("(No OUT/report.json: run `vaegan-eval --out OUT` for the oblivious numbers beside these.)")
    md += ["", "## Convergence: accuracy (%) vs attack steps", "",
           "Per image, the worst iterate so far (transfer, bpda_eot, full_eot: the iterate at that step). "
           "Flat = more steps do not help.",
           "", "| attack | eps | " + " | ".join(f"{t}" for t in _curve_steps(report)) + " |",
           "|---" * (len(_curve_steps(report)) + 2) + "|"]
    for name, per in report["attacks"].items():
        for e in eps:
            for run in per[e].get("runs", [per[e]]) if e in per else []:
                if "curve" not in run:
                    continue
                cur = {int(k): v for k, v in run["curve"].items()}
                label = f"{name} ({_run_label(run, per[e]['runs'])})" if "runs" in per[e] else name
                md.append(f"| {label} | {e} | " + " | ".join(f"{cur[t]:.2f}" if t in cur else "–"
                                                            for t in _curve_steps(report)) + " |")
    notes = []
    repeated = [f"{name} eps {e}: " + ", ".join(f"{_run_label(run, per[e]['runs'])} {run['accuracy']:.2f}"
                                                for run in per[e]["runs"])
                for name, per in report["attacks"].items() for e in eps if e in per and "runs" in per[e]]
    if repeated:
        notes.append("- the same attack run with several budgets (the table keeps the lowest): "
                     + "; ".join(repeated) + ".")
    for name in [a for a in RANDOMIZED if a in report["attacks"]]:
        notes.append(f"- {name} attacks and is scored on a *randomized* purifier "
                     f"({next(iter(report['attacks'][name].values()))['defense']}), not the deployed "
                     f"deterministic one; it is left out of the worst-case row.")
    for name in ("apgd", "fab"):
        if name in report["attacks"]:
            notes.append(f"- {name} gradient per eps: " + ", ".join(f"{e}: {v['gradient']}"
                                                                  for e, v in report["attacks"][name].items()))
    if "square" in report["attacks"]:
        rt = report.get("runtime", {})
        about = [f"{rt['backend']} backend"] if "backend" in rt else []
        about += [f"clean accuracy {rt['clean_accuracy']:.2f}%"] if "clean_accuracy" in rt else []
        notes.append("- square queried the runtime" + (f" ({', '.join(about)})" if about else "")
                     + "; torch reference accuracy on its outputs: "
                     + _per_eps(report["attacks"]["square"], "torch_reference_accuracy", "{:.2f}"))
    if "transfer" in report["attacks"]:
        s = report["surrogate"]
        notes.append(f"- transfer surrogate `{s['path']}`"
                     + (f" (clean {s['clean_accuracy']:.2f}%)" if "clean_accuracy" in s else "")
                     + "; undefended classifier on the transfer examples: "
                     + _per_eps(report["attacks"]["transfer"], "undefended_accuracy", "{:.2f}"))
    if "latent" in report["attacks"]:
        notes.append("- latent: defended prediction = target class: "
                     + _per_eps(report["attacks"]["latent"], "target_success", "{:.2f}%"))
    cfgd = report["config"]
    budgets = []
    for name, per in report["attacks"].items():
        by: dict = {}
        for e, v in per.items():
            b = _fmt_budget(v.get("budget") or attack_budget(name, cfgd))
            by.setdefault(b, []).append(e)
        budgets.append(f"{name} " + "; ".join(f"{b} (eps {', '.join(es)})" if len(by) > 1 else b
                                              for b, es in by.items()))
    devices: dict = {}
    for name, per in report["attacks"].items():
        for e, v in per.items():  # reports from before devices were recorded ran on the CPU
            devices.setdefault(v.get("device", "cpu"), {}).setdefault(name, []).append(e)
    if len(devices) > 1 or "cpu" not in next(iter(devices), "cpu"):
        notes.append("- device of each result in the table: " + "; ".join(
            f"{d}: " + ", ".join(f"{n} (eps {', '.join(es)})" for n, es in by.items()) for d, by in devices.items()))
    md += ["", "## Notes", ""] + notes + [
        "- budget of each result in the table: " + "; ".join(budgets) + f". PGD step {cfgd['alpha_ratio']:g} x eps, "
        f"loss {cfgd['loss']}; purifier {cfgd['purify']}.",
        f"- Threads: {report['threads']}. Checkpoints: vaegan `{report['checkpoints']['vaegan'][:12]}`, classifier "
        f"`{report['checkpoints']['classifier'][:12]}`.", "", "![accuracy vs eps](adaptive.png)", ""]
    (out / "adaptive.md").write_text("\n".join(md))
    (out / "adaptive.json").write_text(json.dumps(report, indent=2))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, per in report["attacks"].items():
        clean = c["defended_randomized"] if name in RANDOMIZED else c["defended"]
        pts = [(float(e), per[e]["accuracy"]) for e in eps if e in per]
        ax.plot([0.0] + [p[0] for p in pts], [clean] + [p[1] for p in pts], marker="o", label=LABELS[name])
    if report["any"]:
        pts = [(float(e), report["any"][e]) for e in eps if e in report["any"]]
        ax.plot([0.0] + [p[0] for p in pts], [c["defended"]] + [p[1] for p in pts], "k-", lw=2.5,
                label="worst case (adaptive)")
    if obl:
        for row, per in obl["rows"].items():
            pts = sorted((float(e), v) for e, v in per.items())
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", marker="x", alpha=0.6, label=row)
    ax.set_xlabel("eps (L-inf)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"defended accuracy, first {report['n']} test images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "adaptive.png", dpi=120)
    plt.close(fig)


def merge_reports(reports: list[dict], names: list[str] | None = None) -> dict:
    """One report from several ``evaluate_adaptive`` runs over the same images, checkpoints and purifier, split by
    eps or by attack so that they can run in parallel. A run keeps no per-image outcomes, so across runs the
    worst-case row is the per-image union over every result that recorded its per-image outcome (``fooled``, a
    packed mask; every run of this version does), marked ``any_kind: "union"``. Results from older reports without
    it enter as their accuracy: the row is then the lower of that union and those accuracies (and each run's own
    per-image worst case), an upper bound on the true union, marked ``"min"`` (no masks at all) or
    ``"union+min"``.

    The same attack at the same eps may come from several runs with different budgets (e.g. 50 and 200 steps, 1
    and 9 APGD targets, or the same budget on the CPU and on a GPU, whose floating-point results differ): the
    strongest (lowest accuracy) is the one reported, and every run is listed under ``runs`` with its budget, device,
    accuracy and curve. The same attack, eps, budget and device twice is refused.

    Reports over different image counts (each run attacks the first n test images) are merged over the first
    min(n): a larger run's results are cut to those images by their per-image masks (``_cut_report``), and one
    without a mask is refused. ``names``: what to call each report in an error (e.g. its file; default: its place)."""
    if not reports:
        raise VaeganError("merge: no reports")
    n = min(r["n"] for r in reports)
    names = names or [f"report {i + 1}" for i in range(len(reports))]
    reports = [_cut_report(r, n, name) for r, name in zip(reports, names)]
    first = reports[0]
    for r, rname in zip(reports[1:], names[1:]):
        if r["checkpoints"] != first["checkpoints"]:
            raise VaeganError(f"merge: {names[0]} and {rname} differ in checkpoints ({first['checkpoints']} vs "
                              f"{r['checkpoints']})")
        if r["config"]["purify"] != first["config"]["purify"]:
            raise VaeganError(f"merge: {names[0]} and {rname} were measured with different purifier settings "
                              f"({first['config']['purify']} vs {r['config']['purify']})")
    merged = {k: v for k, v in first.items() if k not in ("attacks", "any", "eps", "clean")}
    merged["clean"] = dict(first["clean"])
    merged["attacks"], eps = {}, set()
    origin: dict[tuple, str] = {}  # (attack, eps, budget, device) -> the report it came from, for the refusal
    for r, rname in zip(reports, names):
        eps |= {float(e) for e in r["eps"]}
        for name, per in r["attacks"].items():
            dst = merged["attacks"].setdefault(name, {})
            for e, rec in per.items():
                rec = {**rec, "budget": rec.get("budget") or attack_budget(name, r["config"])}
                run = {k: rec[k] for k in ("budget", "accuracy", "curve", "device", "seconds", "fooled", "cut_from")
                       if k in rec}
                key = (name, e, json.dumps(run["budget"], sort_keys=True), run.get("device"))
                if key in origin:
                    raise VaeganError(f"merge: {name} at eps {e} with the same budget ({_fmt_budget(run['budget'])}) "
                                      f"on the same device is in more than one report ({origin[key]} and {rname})")
                origin[key] = rname
                if e not in dst:
                    dst[e] = {**rec, "runs": [run]}
                    continue
                runs = dst[e]["runs"] + [run]
                if rec["accuracy"] < dst[e]["accuracy"]:
                    dst[e] = rec
                dst[e]["runs"] = runs
        for key in ("surrogate", "runtime", "oblivious"):
            if r.get(key) and not merged.get(key):
                merged[key] = r[key]
        for k, v in r["clean"].items():  # e.g. the randomized purifier's clean accuracy, from the bpda_eot runs
            merged["clean"].setdefault(k, v)
    for per in merged["attacks"].values():   # one run: nothing to list
        for rec in per.values():
            if len(rec["runs"]) == 1:
                del rec["runs"]
    merged["eps"] = sorted(eps)
    merged["attacks"] = {a: dict(sorted(merged["attacks"][a].items(), key=lambda kv: float(kv[0])))
                         for a in ATTACKS if a in merged["attacks"]}
    scored = WHITE_OR_BLACK_BOX + ("transfer",)
    merged["any"], kinds = {}, set()
    merged["n"] = n
    for e in (str(x) for x in merged["eps"]):
        results = [run for a, per in merged["attacks"].items() if a in scored and e in per
                   for run in per[e].get("runs", [per[e]])]
        masks = [unpack_mask(run["fooled"], n) for run in results if "fooled" in run]
        accs = [run["accuracy"] for run in results if "fooled" not in run]
        accs += [r["any"][e] for r in reports if e in r.get("any", {})]
        if masks:
            accs.append(100.0 * (1 - np.logical_or.reduce(masks).mean()))
            kinds.add("union" if len(masks) == len(results) else "union+min")
        elif accs:
            kinds.add("min")
        if accs:
            merged["any"][e] = min(accs)
    merged["any_kind"] = ("union" if kinds == {"union"} else "min" if kinds == {"min"} else "union+min")
    merged["merged_from"] = len(reports)
    return merged


def _cut_report(report: dict, n: int, name: str = "a report") -> dict:
    """``report`` restricted to its first ``n`` images (itself when it has n): each result's accuracy recomputed
    from its per-image mask cut to n, and marked ``cut_from`` (the run's own image count). What holds for the run's
    whole image set only is dropped (``_CUT_KEEPS`` lists what stays): convergence curves, the other per-result
    numbers (e.g. Square's torch reference accuracy), clean accuracies and the run's own worst-case row (the merge
    recomputes that from the masks). A result without a mask cannot be cut: a ``VaeganError``."""
    if report["n"] == n:
        return report
    attacks: dict = {}
    for attack, per in report["attacks"].items():
        attacks[attack] = {}
        for e, rec in per.items():
            if "fooled" not in rec:
                raise VaeganError(f"merge: {name}: {attack} at eps {e} over {report['n']} images recorded no "
                                  f"per-image outcomes, so it cannot be cut to the first {n} images of the other "
                                  f"reports")
            fooled = unpack_mask(rec["fooled"], report["n"])[:n]
            attacks[attack][e] = {**{k: v for k, v in rec.items() if k in _CUT_KEEPS},
                                  "accuracy": 100.0 * (1 - fooled.mean()),
                                  "fooled": pack_mask(torch.from_numpy(fooled)), "cut_from": report["n"]}
    whole_set = ("clean_accuracy",)  # the surrogate's and the runtime's, over the run's images
    return {**report, "n": n, "attacks": attacks, "clean": {}, "any": {},
            **{k: {a: b for a, b in report[k].items() if a not in whole_set}
               for k in ("surrogate", "runtime") if report.get(k)}}


# what a result cut to fewer images keeps: its settings; numbers over the run's whole image set are dropped
_CUT_KEEPS = ("budget", "device", "seconds", "gradient", "defense", "eot_samples", "linf", "resumed_batches")


def _per_eps(per: dict, key: str, fmt: str) -> str:
    """'eps: value, ...' of ``key`` over the eps whose result has it (a result cut from a larger run has none)."""
    vals = [f"{e}: {fmt.format(v[key])}" for e, v in per.items() if key in v]
    return ", ".join(vals) if vals else "not kept (results cut from runs over more images)"


def _curve_steps(report) -> list[int]:
    s = set()
    for per in report["attacks"].values():
        for v in per.values():
            for run in v.get("runs", [v]):
                s |= {int(k) for k in run.get("curve", {})}
    return sorted(s)


__all__ = ["ATTACKS", "AdaptiveConfig", "StraightThrough", "RandomizedPurifier", "RuntimeModel", "TrackedPGD",
           "LatentPGD", "apgd", "fab", "margin", "evaluate_adaptive", "write_adaptive", "oblivious_numbers",
           "merge_reports", "pack_mask", "unpack_mask"]
