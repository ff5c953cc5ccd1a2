"""The reference purifier (PyTorch, autograd): the ground truth that every exported graph and runtime backend
is checked against.

``latent`` mode (default), after Defense-GAN (Samangouei et al. 2018) but seeded by the encoder:
    z_r(0) = mu_E(x) + noise_r                       (noise_0 = 0; restarts r = 0..R-1)
    v <- momentum * v + grad_z L(z);  z <- z - eta * v,   T times, with
    L(z) = ||G(z) - x||^2 + lam * -log sigmoid(D(G(z)))    (sum over pixels, per image)
    keep, per image, the restart with the lowest final L; output G(z*).
``pixel`` mode descends on the image itself:
    L(x') = ||G(mu_E(x')) - x'||^2 + lam * -log sigmoid(D(x')),   x' <- clip(x' - eta * grad, 0, 1),  output G(mu_E(x')).
``init="random"`` with ``lam=0`` is Defense-GAN: random z, L steps, R restarts, no encoder seed, no D term.

All inputs are N x C x H x W in [0, 1] (the VAE-GAN's image contract). The restart noise is an explicit tensor (``noise``, shape R x N x latent_dim)
so other backends can be fed exactly the same one; ``restart_noise`` draws it from ``cfg.seed``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .config import PurifyConfig
from .models import VAEGAN

MODES = ("latent", "pixel")
INITS = ("encoder", "random")


def check_config(cfg: PurifyConfig) -> None:
    if cfg.mode not in MODES:
        raise ValueError(f"unknown purification mode {cfg.mode!r} (expected one of {', '.join(MODES)})")
    if cfg.init not in INITS:
        raise ValueError(f"unknown init {cfg.init!r} (expected one of {', '.join(INITS)})")
    if cfg.steps < 0 or cfg.restarts < 1:
        raise ValueError(f"steps must be >= 0 and restarts >= 1 (got steps={cfg.steps}, restarts={cfg.restarts})")


def latent_objective(vg: VAEGAN, z: torch.Tensor, x: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent mode: (per-image objective ||G(z) - x||^2 - lam * log sigmoid(D(G(z))), shape (N,); the image G(z)).
    The image comes along so the final restart selection and the output share one decode."""
    xg = vg.decoder(z)
    rec = (xg - x).pow(2).flatten(1).sum(1)
    return rec + lam * F.softplus(-vg.discriminator(xg).squeeze(1)), xg


def latent_loss(vg: VAEGAN, z: torch.Tensor, x: torch.Tensor, lam: float) -> torch.Tensor:
    """Per-image objective of latent mode (``latent_objective`` without the image), shape (N,)."""
    return latent_objective(vg, z, x, lam)[0]


def pixel_objective(vg: VAEGAN, xp: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel mode: (per-image objective ||G(mu_E(x')) - x'||^2 - lam * log sigmoid(D(x')), shape (N,);
    the reconstruction G(mu_E(x')))."""
    recon = vg.decoder(vg.encoder(xp)[0])
    rec = (recon - xp).pow(2).flatten(1).sum(1)
    return rec + lam * F.softplus(-vg.discriminator(xp).squeeze(1)), recon


def pixel_loss(vg: VAEGAN, xp: torch.Tensor, lam: float) -> torch.Tensor:
    """Per-image objective of pixel mode (``pixel_objective`` without the image), shape (N,)."""
    return pixel_objective(vg, xp, lam)[0]


def restart_noise(cfg: PurifyConfig, n: int, latent_dim: int) -> torch.Tensor:
    """R x N x latent_dim noise drawn from ``cfg.seed`` by torch's generator; restart 0 is zero unless init is random.

    The torch-free runtime cannot draw torch's stream, so it has its own (``vaegan.runtime.purify.restart_noise``,
    numpy): the same distribution, other values. The two are compared by feeding one noise to both."""
    g = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn(cfg.restarts, n, latent_dim, generator=g) * cfg.noise
    if cfg.init == "encoder":
        noise[0] = 0
    return noise


@dataclass
class PurifyResult:
    x: torch.Tensor     # purified images, N x C x H x W
    loss: torch.Tensor  # final objective of the chosen restart, (N,)
    z: torch.Tensor | None = None  # chosen latent (latent mode)


def _descend(loss_fn, v0: torch.Tensor, cfg: PurifyConfig, create_graph: bool, clip: bool) -> torch.Tensor:
    """T steps of (momentum) gradient descent on ``loss_fn`` (per-image losses) from ``v0``."""
    v = v0
    vel = torch.zeros_like(v0)
    for _ in range(cfg.steps):
        if not v.requires_grad:
            v = v.detach().requires_grad_(True)
        with torch.enable_grad():
            g, = torch.autograd.grad(loss_fn(v).sum(), v, create_graph=create_graph)
        vel = cfg.momentum * vel + g if cfg.momentum else g
        v = v - cfg.eta * vel
        if clip:
            v = v.clamp(0, 1)
        if not create_graph:
            v = v.detach()
    return v


def purify(vg: VAEGAN, x: torch.Tensor, cfg: PurifyConfig = PurifyConfig(), noise: torch.Tensor | None = None,
           create_graph: bool = False) -> PurifyResult:
    """Purify a batch. ``create_graph=True`` keeps the unrolled loop differentiable (full-gradient attacks)."""
    check_config(cfg)
    vg.eval()
    n = x.shape[0]
    if cfg.mode == "pixel":
        xp = _descend(lambda v: pixel_loss(vg, v, cfg.lam), x, cfg, create_graph, clip=True)
        with torch.set_grad_enabled(create_graph or torch.is_grad_enabled()):
            loss, out = pixel_objective(vg, xp, cfg.lam)
        return PurifyResult(out, loss.detach())

    latent_dim = vg.args.latent_dim
    if noise is None:
        noise = restart_noise(cfg, n, latent_dim)
    noise = noise.to(x.device, x.dtype)  # drawn on the CPU (one seed, same draws on every device)
    r = noise.shape[0]
    if cfg.init == "encoder":
        mu = vg.encoder(x)[0]
        z0 = (mu.unsqueeze(0) + noise).reshape(r * n, latent_dim)
    else:
        z0 = noise.reshape(r * n, latent_dim)
    xr = x.repeat(r, 1, 1, 1)  # restart-major: row k*n + i is restart k of image i
    z = _descend(lambda v: latent_loss(vg, v, xr, cfg.lam), z0, cfg, create_graph, clip=False)
    with torch.set_grad_enabled(create_graph or torch.is_grad_enabled()):
        loss, xg = latent_objective(vg, z, xr, cfg.lam)                # the final objective decodes every row once
        loss = loss.view(r, n)
        best = loss.argmin(0)                                          # (N,)
        pick = (best, torch.arange(n, device=x.device))
        z_best = z.view(r, n, latent_dim)[pick]                        # (N, latent)
        out = xg.view(r, n, *xg.shape[1:])[pick]                       # = G(z_best), not decoded a second time
    return PurifyResult(out, loss.min(0).values.detach(), z_best.detach())


class Purifier(nn.Module):
    """``x -> purify(x)`` as a module (fixed config), so a defended model is ``nn.Sequential(purifier, classifier)``.

    ``differentiable=True`` back-propagates through all T unrolled steps (for full-gradient adaptive attacks);
    otherwise the output is a function of x only through the forward pass (no gradient to x)."""

    def __init__(self, vg: VAEGAN, cfg: PurifyConfig = PurifyConfig(), differentiable: bool = False):
        super().__init__()
        self.vg = vg.eval()
        self.cfg = cfg
        self.differentiable = differentiable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.differentiable:
            return purify(self.vg, x, self.cfg, create_graph=True).x
        with torch.no_grad():
            return purify(self.vg, x, self.cfg).x


class Defended(nn.Module):
    """classifier(purifier(x)): the whole defended pipeline as one module, so any attack can target it."""

    def __init__(self, purifier: nn.Module, classifier: nn.Module):
        super().__init__()
        self.purifier = purifier
        self.classifier = classifier
        self.eval()  # both parts are inference-only; an attack that toggles train() would enable dropout/BN stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.purifier(x))


def defense_gan_config(steps: int = 200, restarts: int = 10, eta: float = 0.02, momentum: float = 0.7,
                       seed: int = 0) -> PurifyConfig:
    """Defense-GAN (Samangouei et al. 2018) on our G: random z ~ N(0, I), ``steps`` GD steps, ``restarts`` restarts,
    no encoder seed, no D term."""
    return PurifyConfig(mode="latent", init="random", steps=steps, eta=eta, lam=0.0, momentum=momentum,
                        restarts=restarts, noise=1.0, seed=seed)


__all__ = ["PurifyConfig", "PurifyResult", "purify", "latent_objective", "latent_loss", "pixel_objective", "pixel_loss",
           "restart_noise", "Purifier", "Defended", "defense_gan_config", "check_config", "replace"]
