"""Training of the classifier, the VAE-GAN and the purifier, on one process or several (``torchrun``, DDP over gloo).

Each is driven by a dataclass config and brings its models, optimizers, batch step and evaluation to one shared,
seeded epoch loop (``_run_epochs``): one f-string log line per epoch, a resumable checkpoint (``OUT/ckpt.pt``, with
optimizer) and the shippable weights (``OUT/model.pt``, without) after every epoch.
They run on the CPU or on a CUDA device (``device``; under torchrun each process takes ``cuda:LOCAL_RANK`` and NCCL).
Every random draw (batch order, noise, corruption, attack starts) comes from CPU generators and is then moved to the
device, so a seed means the same draws everywhere; checkpoints are written with CPU tensors.

VAE-GAN objective (per image, averaged over the batch), after Larsen et al. 2016 plus a denoising term:
    L_EG = BCE_pixels(G(z), x) + kl_weight * KL(q(z|x~) || N(0, I))
           + fm_weight * ||D_feat(G(z)) - D_feat(x)||^2 / n_feat + adv_weight * [BCE(D(G(z)), 1) + BCE(D(G(z_p)), 1)]
    L_D  = BCE(D(x), 1) + BCE(D(G(z)), 0) + BCE(D(G(z_p)), 0)
where z ~ q(z | x~), x~ is x corrupted (with probability ``denoise_prob``) by L-inf sign noise of random amplitude
U(0, ``denoise_eps``) on a random grid (1, 2 or 4 pixel blocks), and z_p ~ N(0, I). The denoising term teaches E to map
perturbed inputs to the clean image's code: it is what lets the purifier's encoder seed survive large perturbations
(docs/training.md has the measurement).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from . import checkpoint as ckpt_io
from vaegan.runtime.contract import ContractError

from .config import ClassifierConfig, PurifierConfig, PurifyConfig, VAEGANConfig, resolve_device
from .data import data_kwargs, dataset_contract, load_split
from .errors import VaeganError
from .models import VAEGAN, VGG16, widen


# --------------------------------------------------------------------------------------------------------------
# distributed helpers

def _dist_setup(cfg) -> tuple[int, int, torch.device]:
    """(rank, world size, this process's device) for ``cfg.device``: gloo on the CPU; on CUDA, NCCL and
    ``cuda:LOCAL_RANK`` per process when torchrun started several. Seeds torch's global generator with ``cfg.seed``
    (the models' initialisation and dropout draw from it)."""
    dev = resolve_device(cfg.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    elif dev.type == "cuda" and dev.index is None:  # set_device refuses a bare "cuda" (torch 2.11)
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    torch.manual_seed(cfg.seed)
    return dist.get_rank() if dist.is_initialized() else 0, world, dev


def _wrap(module: torch.nn.Module, world: int) -> torch.nn.Module:
    if world == 1:
        return module
    dev = next(module.parameters()).device
    return DDP(module, device_ids=[dev] if dev.type == "cuda" else None)


def _cpu_tree(obj):
    """A state dict (model or optimizer) with its tensors on the CPU: checkpoints load anywhere, ``map_location`` or
    not (``Optimizer.load_state_dict`` moves optimizer state back to its parameters' device)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu_tree(v) for v in obj]
    return obj


def _loader(ds, cfg, world: int, rank: int, epoch: int) -> DataLoader:
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed) if world > 1 else None
    if sampler is not None:
        sampler.set_epoch(epoch)
    g = torch.Generator().manual_seed(cfg.seed + epoch)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler, generator=g,
                      drop_last=True)


def _steps_per_epoch(ds, cfg, world: int) -> int:
    """Optimizer steps per epoch on each process: the length of its loader (full batches of its shard)."""
    return len(_loader(ds, cfg, world, 0, 0))


def _train_set(cfg):
    ds = load_split(True, **data_kwargs(cfg))
    if cfg.train_limit:
        ds = Subset(ds, range(min(cfg.train_limit, len(ds))))
    return ds


def _eval_set(cfg, dev: torch.device):
    x, y = load_split(False, **data_kwargs(cfg)).tensors
    return x[: cfg.eval_limit].to(dev), y[: cfg.eval_limit].to(dev)


def _data_name(cfg) -> str:
    return str(getattr(cfg, "dataset", "fashion-mnist"))


def _resume(cfg, resume: bool, kind: str, model, optimizers: dict, best: float) -> tuple[int, int, float]:
    """(start epoch, step, best metric): (0, 0, ``best``) for a fresh run; with ``resume`` and an OUT/ckpt.pt of this
    ``kind``, its three, after loading its weights into ``model`` and its optimizer states into ``optimizers``
    (checkpoint name -> optimizer or scheduler)."""
    path = Path(cfg.out) / "ckpt.pt"
    state = ckpt_io.load_raw(path) if resume and path.exists() else None
    if state is None or state["kind"] != kind:
        return 0, 0, best
    model.load_state_dict(state["model"])
    for name, o in optimizers.items():
        o.load_state_dict(state["optimizer"][name])
    return state["epoch"], state["step"], state["best_metric"]


def _run_epochs(cfg, name: str, ddp: tuple, train_ds, model, optimizers: dict, ckpt_meta: dict, start: tuple,
                best_of: tuple, losses: tuple, mode, train_step, evaluate) -> dict:
    """The epoch loop of the three trainers; returns the last epoch's metrics (rank 0; {} elsewhere).

    Each epoch from ``start`` (``_resume``) to ``cfg.epochs``: ``mode()`` (train or eval mode), then
    ``train_step(x, y, step, gen)`` -> {loss name: float} on each batch of this process's shard (``_loader``), the
    ``losses`` averaged into the metrics. On rank 0, ``evaluate(metrics)`` adds the evaluation and returns the log
    line's middle, ``best_of`` = (metric, max or min) keeps the best metric, the line is printed, and OUT/ckpt.pt
    (``ckpt_meta`` with the weights, the counters and ``optimizers``' states) and OUT/model.pt (slim) are written.
    ``ddp`` is ``_dist_setup``'s (rank, world, device); every random draw of a step comes from ``gen``, a CPU
    generator seeded by the seed and the rank."""
    (rank, world, dev), (epoch0, step, best), (key, better) = ddp, start, best_of
    gen = torch.Generator().manual_seed(cfg.seed + 1 + rank)
    metrics = {}
    for epoch in range(epoch0, cfg.epochs):
        mode()
        t0 = time.time()
        sums, n = dict.fromkeys(losses, 0.0), 0
        loader = _loader(train_ds, cfg, world, rank, epoch)
        for x, y in tqdm(loader, desc=f"{name} epoch {epoch + 1}/{cfg.epochs}", disable=rank != 0, leave=False):
            for k, v in train_step(x.to(dev), y.to(dev), step, gen).items():
                sums[k] += v
            step, n = step + 1, n + 1
        if rank == 0:
            metrics = {k: v / max(n, 1) for k, v in sums.items()}
            line = evaluate(metrics)
            metrics["epoch_seconds"] = time.time() - t0
            best = better(best, metrics[key])
            print(f"epoch {epoch + 1}: {line}, {metrics['epoch_seconds']:.0f}s", flush=True)
            ckpt = {"kind": ckpt_meta["kind"], "model": _cpu_tree(model.state_dict()), **ckpt_meta, "epoch": epoch + 1,
                    "step": step, "metrics": metrics, "best_metric": best, "world_size": world,
                    "optimizer": {k: _cpu_tree(o.state_dict()) for k, o in optimizers.items()}}
            ckpt_io.save(Path(cfg.out) / "ckpt.pt", ckpt)
            ckpt_io.save(Path(cfg.out) / "model.pt", ckpt_io.slim(ckpt))
        if world > 1:
            dist.barrier()
    return metrics


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """``evaluate.accuracy`` with ``model`` put in eval mode first (the training loops hand it over in train mode)."""
    from .evaluate import accuracy as top1

    model.eval()
    return top1(model, x, y, batch)


# --------------------------------------------------------------------------------------------------------------
# classifier

def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 2-pixel shifts (pad + crop) and horizontal flips, batched."""
    n, h, w = x.shape[0], x.shape[2], x.shape[3]
    padded = F.pad(x, (2, 2, 2, 2))
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    x = padded[:, :, dy:dy + h, dx:dx + w]
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@torch.no_grad()
def _mix_reconstructions(vg, x: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Replace a ``prob`` fraction of the batch by the purifier's reconstruction G(mu_E(x~)) of a sign-noise
    corrupted copy (half of them corrupted, amplitude U(0, 0.35)): the classifier learns the purifier's output
    distribution (docs/training.md has what it does to the accuracy after purification)."""
    sel = (torch.rand(x.shape[0], generator=gen) < prob).to(x.device)
    if sel.any():
        x = x.clone()
        x[sel] = vg.reconstruct(corrupt(x[sel], 0.35, 0.5, gen))
    return x


ADVERSARIAL = ("none", "pgd", "trades")


def _check_adversarial(cfg: ClassifierConfig) -> None:
    """The adversarial-training options, each bad one a one-line VaeganError naming it."""
    if cfg.adversarial not in ADVERSARIAL:
        raise VaeganError(f"--adversarial {cfg.adversarial!r}: choose from {', '.join(ADVERSARIAL)}")
    if cfg.adversarial == "none":
        return
    if not 0.0 < cfg.eps <= 1.0:
        raise VaeganError(f"--eps {cfg.eps:g}: adversarial training needs a budget in (0, 1] (pixels are in [0, 1])")
    if cfg.adv_steps < 1:
        raise VaeganError(f"--adv-steps {cfg.adv_steps}: must be at least 1")
    if cfg.adv_alpha is not None and not cfg.adv_alpha > 0:
        raise VaeganError(f"--adv-alpha {cfg.adv_alpha:g}: must be positive")
    if cfg.trades_beta < 0:
        raise VaeganError(f"--trades-beta {cfg.trades_beta:g}: must be >= 0")
    if cfg.eps_ramp_epochs < 0:
        raise VaeganError(f"--eps-ramp-epochs {cfg.eps_ramp_epochs:g}: must be >= 0")
    if cfg.adv_eval_limit < 1:
        raise VaeganError(f"--adv-eval-limit {cfg.adv_eval_limit}: must be at least 1")


def _adversarial_loss(model, dmodel, x: torch.Tensor, y: torch.Tensor, cfg: ClassifierConfig, eps: float,
                      gen: torch.Generator) -> torch.Tensor:
    """The training loss on one batch under ``cfg.adversarial``, at budget ``eps``:

    pgd:    CE(f(x_adv), y), x_adv = PGD-k on CE with a random start (Madry et al. 2018, "Towards deep learning
            models resistant to adversarial attacks");
    trades: CE(f(x), y) + trades_beta * KL(f(x) || f(x_adv)), x_adv = PGD-k on that KL from x + 0.001 N(0, I)
            (Zhang et al. 2019, "Theoretically principled trade-off between robustness and accuracy").

    x_adv is crafted with eval-mode BatchNorm (on ``model``, the module without DDP): against the function the test-time
    attacker faces, without the k extra running-statistics updates per step that train-mode crafting would make,
    and per image rather than through batch statistics (as TRADES's reference code does). The update itself runs in
    train mode. No label smoothing on this path: it flattens the logits and can inflate PGD accuracy without
    robustness."""
    alpha = cfg.adv_alpha if cfg.adv_alpha is not None else 2.5 * eps / cfg.adv_steps
    model.eval()
    if cfg.adversarial == "pgd":
        x_adv = _pgd(model, x, y, torch.full((x.shape[0], 1, 1, 1), eps), cfg.adv_steps, gen, alpha=alpha)
        model.train()
        return F.cross_entropy(dmodel(x_adv), y)
    with torch.no_grad():
        p_clean = F.softmax(model(x), 1)
    x_adv = (x + 0.001 * torch.randn(x.shape, generator=gen).to(x.device)).clamp(0, 1)
    for _ in range(cfg.adv_steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            kl = F.kl_div(F.log_softmax(model(x_adv), 1), p_clean, reduction="sum")
            g, = torch.autograd.grad(kl, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    model.train()
    logits, logits_adv = dmodel(x), dmodel(x_adv.detach())
    kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="batchmean")
    return F.cross_entropy(logits, y) + cfg.trades_beta * kl


def _pgd_accuracy(model, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int, steps: int = 10) -> float:
    """Accuracy under PGD-``steps`` (random start, step 2.5 eps / steps) with eval-mode BatchNorm: the per-epoch
    robustness check of adversarial training (the adaptive suite gives the real numbers)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    return accuracy(model, _pgd(model, x, y, torch.full((len(x), 1, 1, 1), eps), steps, gen), y)


def train_classifier(cfg: ClassifierConfig, resume: bool = False) -> dict:
    _check_adversarial(cfg)
    rank, world, dev = _dist_setup(cfg)
    contract = dataset_contract(**data_kwargs(cfg))
    if cfg.model.num_classes is None:
        cfg.model.num_classes = contract.num_classes
    try:
        model = VGG16(cfg.model, contract).to(dev)
    except ContractError as e:
        raise VaeganError(f"--num-classes {cfg.model.num_classes} and data set {_data_name(cfg)}: {e}") from None
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=True)
    train_ds = _train_set(cfg)
    steps_per_epoch = _steps_per_epoch(train_ds, cfg, world)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(1, cfg.epochs * steps_per_epoch),
                                                pct_start=0.2)
    if cfg.init:
        init_model = ckpt_io.load_model(cfg.init, "classifier")[0]
        if isinstance(init_model, ckpt_io.ExportedClassifier):
            raise VaeganError(f"--init {cfg.init}: a torch.export program cannot be fine-tuned here (give a "
                              f"classifier checkpoint)")
        ckpt_io.check_data(init_model.contract, contract, cfg.init, _data_name(cfg))
        model.load_state_dict(init_model.state_dict())
    vg = ckpt_io.load_model(cfg.purifier, "vaegan")[0].to(dev) if cfg.purifier else None
    if vg is not None:
        ckpt_io.check_data(vg.contract, contract, cfg.purifier, _data_name(cfg))
    start = _resume(cfg, resume, "classifier", model, optimizers := {"opt": opt, "sched": sched}, -1.0)
    dmodel = _wrap(model, world)
    xe, ye = _eval_set(cfg, dev)

    def train_step(x, y, step, gen):
        if cfg.augment:
            x = _augment(x, gen)
        if vg is not None:
            x = _mix_reconstructions(vg, x, cfg.purifier_prob, gen)
        if cfg.adversarial == "none":
            loss = F.cross_entropy(dmodel(x), y, label_smoothing=0.05)
        else:
            ramp = cfg.eps_ramp_epochs * steps_per_epoch
            eps = cfg.eps * min(1.0, (step + 1) / ramp) if ramp > 0 else cfg.eps
            loss = _adversarial_loss(model, dmodel, x, y, cfg, eps, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return {"train_loss": loss.item()}

    def evaluate(metrics):
        metrics["test_acc"] = acc = accuracy(model, xe, ye)
        rec = adv = ""
        if vg is not None:
            with torch.no_grad():
                metrics["test_acc_reconstructed"] = accuracy(model, vg.reconstruct(xe), ye)
            rec = f", on reconstructions {metrics['test_acc_reconstructed']:.2f}%"
        if cfg.adversarial != "none":
            k = min(cfg.adv_eval_limit, len(xe))
            metrics["test_pgd_acc"] = _pgd_accuracy(model, xe[:k], ye[:k], cfg.eps, cfg.seed)
            adv = f", PGD-10 eps {cfg.eps:g} {metrics['test_pgd_acc']:.2f}% (first {k})"
        return f"loss {metrics['train_loss']:.4f}, test acc {acc:.2f}%{rec} (first {len(xe)}){adv}"

    meta = {"kind": "classifier", "model_args": asdict(cfg.model), "contract": contract.to_dict(),
            "config": asdict(cfg)}
    return _run_epochs(cfg, "classifier", (rank, world, dev), train_ds, model, optimizers, meta, start,
                       ("test_acc", max), ("train_loss",), dmodel.train, train_step, evaluate)


# --------------------------------------------------------------------------------------------------------------
# VAE-GAN

def corrupt(x: torch.Tensor, eps_max: float, prob: float, gen: torch.Generator) -> torch.Tensor:
    """L-inf sign noise of amplitude U(0, eps_max) on a 1/2/4-pixel grid, applied to a ``prob`` fraction of x."""
    n = x.shape[0]
    out = x.clone()
    chosen = torch.rand(n, generator=gen) < prob
    block_of = torch.randint(0, 3, (n,), generator=gen)
    for b, block in enumerate((1, 2, 4)):
        sel = chosen & (block_of == b)
        k = int(sel.sum())
        if k == 0:
            continue
        c, h, w = x.shape[1:]
        sign = torch.randint(0, 2, (k, c, h // block, w // block), generator=gen).float().mul_(2).sub_(1)
        sign = F.interpolate(sign, size=(h, w), mode="nearest")
        eps = torch.rand(k, 1, 1, 1, generator=gen) * eps_max
        sel = sel.to(x.device)
        out[sel] = (x[sel] + (eps * sign).to(x.device)).clamp_(0, 1)
    return out


def _lr_scale(step: int, epochs: int, decay_epochs: int, steps_per_epoch: int) -> float:
    """1 until the last ``decay_epochs`` epochs, then linear to 0.1 at the last step (constant before the decay, so
    a run stopped early is the exact prefix of a longer one)."""
    start = (epochs - decay_epochs) * steps_per_epoch
    span = decay_epochs * steps_per_epoch
    if decay_epochs <= 0 or step < start:
        return 1.0
    return 1.0 - 0.9 * min(1.0, (step - start) / span)


def _gan_step(disc, d_raw, opt_d, x, xr_logit, xr, xp, mu, logvar) -> dict:
    """One discriminator step (real ``x`` against reconstructions ``xr`` and prior samples ``xp``), then the E/G loss
    terms of the objective above with D frozen: ``rec``, ``kl``, ``fm``, ``g_adv`` (tensors with graph) and ``d``."""
    b = x.shape[0]
    d_logits = disc(torch.cat([x, xr.detach(), xp.detach()])).squeeze(1)
    loss_d = F.binary_cross_entropy_with_logits(d_logits, torch.cat([torch.ones(b, device=x.device),
                                                                     torch.zeros(2 * b, device=x.device)]))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    d_raw.requires_grad_(False)
    with torch.no_grad():
        f_real, _ = d_raw.features(x)
    f_fake, l_fake = d_raw.features(torch.cat([xr, xp]))
    d_raw.requires_grad_(True)
    return {"rec": F.binary_cross_entropy_with_logits(xr_logit, x, reduction="sum") / b,
            "kl": -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / b,
            "fm": F.mse_loss(f_fake[:b], f_real, reduction="sum") / b / f_real[0].numel() * 100.0,
            "g_adv": F.binary_cross_entropy_with_logits(l_fake.squeeze(1), torch.ones(2 * b, device=x.device)),
            "d": loss_d.detach()}


def _vaegan_setup(vg, cfg, resume: bool, best: float, world: int, dev: torch.device):
    """What train_vaegan and train_purifier share: Adam for E+G and for D (betas 0.5, 0.999), ``_resume``'s start, the
    train set, the eval set and their batch step ``step(x, x_in, step, gen, guide=None)`` -> {term: float}: one D
    step (``_gan_step``), then one E/G step on rec + kl_weight * kl + fm_weight * fm + adv_weight * g_adv, with E
    fed ``x_in``; ``guide(G(mu_E(x_in)))`` adds the purifier's guide_weight * guide term.
    Returns (optimizers by checkpoint name, start, train set, (x_eval, y_eval), step)."""
    opt_eg = torch.optim.Adam(list(vg.encoder.parameters()) + list(vg.decoder.parameters()), lr=cfg.lr,
                              betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(vg.discriminator.parameters(), lr=cfg.lr_d, betas=(0.5, 0.999))
    optimizers = {"eg": opt_eg, "d": opt_d}
    start = _resume(cfg, resume, "vaegan", vg, optimizers, best)
    enc, dec, disc = (_wrap(m, world) for m in (vg.encoder, vg.decoder, vg.discriminator))
    train_ds = _train_set(cfg)
    steps_per_epoch = _steps_per_epoch(train_ds, cfg, world)
    weights = {"rec": 1.0, "kl": cfg.kl_weight, "fm": cfg.fm_weight, "g_adv": cfg.adv_weight,
               "guide": getattr(cfg, "guide_weight", 0.0)}

    def step_fn(x, x_in, step, gen, guide=None):
        b = x.shape[0]
        for opt, base in ((opt_eg, cfg.lr), (opt_d, cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = base * _lr_scale(step, cfg.epochs, cfg.lr_decay_epochs, steps_per_epoch)
        mu, logvar = enc(x_in)
        z = mu + torch.randn(mu.shape, generator=gen).to(dev) * torch.exp(0.5 * logvar)
        zp = torch.randn(mu.shape, generator=gen).to(dev)
        logit_img = dec(torch.cat([z, zp] if guide is None else [z, zp, mu]), logits=True)
        img = torch.sigmoid(logit_img)
        terms = _gan_step(disc, vg.discriminator, opt_d, x, logit_img[:b], img[:b], img[b:2 * b], mu, logvar)
        if guide is not None:
            terms["guide"] = guide(img[2 * b:])
        loss = sum(weights[k] * v for k, v in terms.items() if k != "d")
        opt_eg.zero_grad(set_to_none=True)
        loss.backward()
        opt_eg.step()
        return {k: v.item() for k, v in terms.items()}

    return optimizers, start, train_ds, _eval_set(cfg, dev), step_fn


def train_vaegan(cfg: VAEGANConfig, resume: bool = False) -> dict:
    rank, world, dev = _dist_setup(cfg)
    contract = dataset_contract(**data_kwargs(cfg))
    try:
        vg = VAEGAN(cfg.model, contract).to(dev)
    except ContractError as e:
        raise VaeganError(f"data set {_data_name(cfg)}: {e}") from None
    optimizers, start, train_ds, (xe, ye), step_fn = _vaegan_setup(vg, cfg, resume, math.inf, world, dev)
    clf = None
    if cfg.classifier and rank == 0:
        clf = ckpt_io.load_model(cfg.classifier, "classifier")[0].to(dev)
        ckpt_io.check_pair(vg, clf, f"being trained on {_data_name(cfg)}", cfg.classifier)

    def train_step(x, _, step, gen):
        return step_fn(x, corrupt(x, cfg.denoise_eps, cfg.denoise_prob, gen), step, gen)

    def evaluate(metrics):
        metrics.update(evaluate_vaegan(vg, xe, ye, clf, cfg.seed))
        extra = (f", clf acc rec {metrics['clf_acc_rec']:.2f}% noisy.3 {metrics['clf_acc_rec_noisy']:.2f}%"
                 if "clf_acc_rec" in metrics else "")
        return (f"rec {metrics['rec']:.2f} kl {metrics['kl']:.2f} fm {metrics['fm']:.3f} g_adv {metrics['g_adv']:.3f} "
                f"d {metrics['d']:.3f} | test mse clean {metrics['test_mse_clean']:.4f} "
                f"noisy.3 {metrics['test_mse_noisy']:.4f}{extra}")

    meta = {"kind": "vaegan", "model_args": asdict(cfg.model), "contract": contract.to_dict(),
            "purify": asdict(PurifyConfig()), "config": asdict(cfg)}
    return _run_epochs(cfg, "vaegan", (rank, world, dev), train_ds, vg, optimizers, meta, start,
                       ("test_mse_clean", min), ("rec", "kl", "fm", "g_adv", "d"), vg.train, train_step, evaluate)


@torch.no_grad()
def evaluate_vaegan(vg: VAEGAN, x: torch.Tensor, y: torch.Tensor, clf=None, seed: int = 0) -> dict:
    """Reconstruction MSE (per pixel) on clean and on sign-noise eps=0.3 inputs; classifier accuracy on both."""
    vg.eval()
    gen = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, x.shape, generator=gen).float().mul_(2).sub_(1).to(x.device)
    noisy = (x + 0.3 * sign).clamp(0, 1)
    rec, rec_n = vg.reconstruct(x), vg.reconstruct(noisy)
    out = {"test_mse_clean": F.mse_loss(rec, x).item(), "test_mse_noisy": F.mse_loss(rec_n, x).item()}
    if clf is not None:
        out["clf_acc_rec"] = accuracy(clf, rec, y)
        out["clf_acc_rec_noisy"] = accuracy(clf, rec_n, y)
    return out


# --------------------------------------------------------------------------------------------------------------
# purifier fine-tuning: the VAE-GAN adapted to one (frozen) classifier, adversarially

def _fgsm_rs(clf, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """FGSM with a random start (Wong et al. 2020) against the bare classifier; ``eps`` per image (N x 1 x 1 x 1)."""
    eps = eps.to(x.device)
    delta = (torch.rand(x.shape, generator=gen).to(x.device) * 2 - 1) * eps
    x1 = (x + delta).clamp(0, 1).requires_grad_(True)
    with torch.enable_grad():
        g, = torch.autograd.grad(F.cross_entropy(clf(x1), y), x1)
    delta = (delta + 1.25 * eps * g.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1).detach()


def _pgd(model, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, steps: int, gen: torch.Generator,
         alpha: float | None = None) -> torch.Tensor:
    """L-inf PGD with a random start and step ``alpha`` (default 2.5 eps / steps, Madry et al. 2018) on ``model``'s
    cross-entropy."""
    eps = eps.to(x.device)
    alpha = 2.5 * eps / max(steps, 1) if alpha is None else alpha
    xa = (x + (torch.rand(x.shape, generator=gen).to(x.device) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        with torch.enable_grad():
            g, = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
        xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    return xa.detach()


def _purifier_inputs(vg: VAEGAN, clf, x: torch.Tensor, y: torch.Tensor, cfg, gen: torch.Generator) -> torch.Tensor:
    """The batch E must map back to x: [clean | sign noise | FGSM-RS on clf | PGD on clf(G(mu_E(.)))], in order."""
    n = x.shape[0]
    sizes = [int(round(f * n)) for f in (cfg.noise_frac, cfg.oblivious_frac, cfg.adaptive_frac)]
    n_clean = n - sum(sizes)
    if n_clean < 0:
        raise ValueError("noise_frac + oblivious_frac + adaptive_frac must be <= 1")
    bounds = [n_clean]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    parts = [x[:n_clean]]
    sl = [slice(bounds[i], bounds[i + 1]) for i in range(3)]
    parts.append(corrupt(x[sl[0]], cfg.noise_eps, 1.0, gen))
    eps_o = torch.rand(sizes[1], 1, 1, 1, generator=gen) * cfg.oblivious_eps
    parts.append(_fgsm_rs(clf, x[sl[1]], y[sl[1]], eps_o, gen) if sizes[1] else x[sl[1]])
    eps_a = torch.rand(sizes[2], 1, 1, 1, generator=gen) * cfg.adaptive_eps
    defended = lambda v: clf(vg.reconstruct(v))  # noqa: E731  (E and G stay in eval mode while fine-tuning)
    parts.append(_pgd(defended, x[sl[2]], y[sl[2]], eps_a, cfg.adaptive_steps, gen) if sizes[2] else x[sl[2]])
    return torch.cat(parts)


GUIDE_LOSSES = ("ce", "logits", "ce+logits")


def _guide(clf, xm: torch.Tensor, x: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """The classifier's guide term on the purified batch ``xm`` = G(mu_E(x~)): cross-entropy with the labels
    (``ce``), the mean L1 distance between its logits and the classifier's logits on the clean images ``x``
    (``logits``: the logit-guided denoiser of Liao et al. 2018, "Defense against adversarial attacks using high-level
    representation guided denoiser"; it asks the purified image to look to the classifier as the clean one does,
    wrong answers and confidences included), or both (``ce+logits``)."""
    logits = clf(xm)
    terms = []
    if kind in ("ce", "ce+logits"):
        terms.append(F.cross_entropy(logits, y))
    if kind in ("logits", "ce+logits"):
        with torch.no_grad():
            target = clf(x)
        terms.append(F.l1_loss(logits, target))
    return sum(terms)


def train_purifier(cfg: PurifierConfig, resume: bool = False) -> dict:
    """Fine-tune a VAE-GAN into the purifier of one frozen classifier (``PurifierConfig``).

    L_EG = BCE_pixels(G(z), x) + kl_weight * KL + fm_weight * feature matching + adv_weight * GAN   (as train_vaegan)
           + guide_weight * guide(classifier(G(mu_E(x~))))   (``guide_loss``: CE with y, or logit L1 to classifier(x))
    over a batch x~ of clean, sign-noise, oblivious-adversarial and adaptive-adversarial versions of x (see
    ``_purifier_inputs``); D is trained as in ``train_vaegan`` so that it keeps judging G's outputs. E and G run with
    eval-mode BatchNorm, so the adversarial examples are crafted against the same function that is trained.
    """
    if cfg.guide_loss not in GUIDE_LOSSES:
        raise VaeganError(f"--guide-loss {cfg.guide_loss!r}: choose from {', '.join(GUIDE_LOSSES)}")
    rank, world, dev = _dist_setup(cfg)
    init = cfg.init or str(ckpt_io.default_path("vaegan"))
    clf_path = cfg.classifier or str(ckpt_io.default_path("classifier"))
    vg, init_ckpt = ckpt_io.load_model(init, "vaegan")
    if cfg.encoder_width or cfg.decoder_width:
        try:
            vg = widen(vg, cfg.encoder_width, cfg.decoder_width, cfg.seed)
        except ValueError as e:  # the one check of the widths lives in widen
            raise VaeganError(f"{init}: --encoder-width / --decoder-width: {e}") from None
    clf, _ = ckpt_io.load_model(clf_path, "classifier")
    ckpt_io.check_data(vg.contract, dataset_contract(**data_kwargs(cfg)), init, _data_name(cfg))
    ckpt_io.check_pair(vg, clf, init, clf_path)
    operating_point = asdict(ckpt_io.purify_config(init_ckpt, steps=cfg.purify_steps, eta=cfg.purify_eta,
                                                   lam=cfg.purify_lam))
    vg, clf = vg.to(dev), clf.to(dev)
    clf.eval().requires_grad_(False)
    optimizers, start, train_ds, (xe, ye), step_fn = _vaegan_setup(vg, cfg, resume, -math.inf, world, dev)

    def train_step(x, y, step, gen):
        return step_fn(x, _purifier_inputs(vg, clf, x, y, cfg, gen), step, gen,
                       guide=lambda xm: _guide(clf, xm, x, y, cfg.guide_loss))

    def evaluate(metrics):
        metrics.update(evaluate_vaegan(vg, xe, ye, clf, cfg.seed))
        metrics.update(evaluate_purifier_robustness(vg, clf, xe[:500], ye[:500], cfg.seed))
        return (f"rec {metrics['rec']:.2f} kl {metrics['kl']:.2f} guide {metrics['guide']:.3f} "
                f"g_adv {metrics['g_adv']:.3f} d {metrics['d']:.3f} | test mse {metrics['test_mse_clean']:.4f}, "
                f"clf acc rec {metrics['clf_acc_rec']:.2f}% noisy.3 {metrics['clf_acc_rec_noisy']:.2f}% "
                f"oblivious pgd10 .1 {metrics['oblivious_pgd_acc']:.2f}% adaptive pgd10 .1 "
                f"{metrics['adaptive_pgd_acc']:.2f}%")

    meta = {"kind": "vaegan", "model_args": asdict(vg.args), "contract": vg.contract.to_dict(),
            "purify": operating_point, "config": asdict(cfg), "init_config": init_ckpt.get("config")}
    # eval-mode BatchNorm in E and G while fine-tuning (D has none)
    return _run_epochs(cfg, "purifier", (rank, world, dev), train_ds, vg, optimizers, meta, start,
                       ("clf_acc_rec", max), ("rec", "kl", "fm", "g_adv", "d", "guide"), vg.eval, train_step, evaluate)


def evaluate_purifier_robustness(vg: VAEGAN, clf, x: torch.Tensor, y: torch.Tensor, seed: int = 0,
                                 eps: float = 0.1, steps: int = 10) -> dict:
    """A quick per-epoch check (not Table 1): classifier accuracy on G(mu_E(x_adv)) for PGD-``steps`` at ``eps``
    crafted against the bare classifier (oblivious) and through classifier(G(mu_E(.))) (adaptive, T = 0)."""
    vg.eval()
    gen = torch.Generator().manual_seed(seed)
    e = torch.full((len(x), 1, 1, 1), eps, device=x.device)
    x_obl = _pgd(clf, x, y, e, steps, gen)
    x_ada = _pgd(lambda v: clf(vg.reconstruct(v)), x, y, e, steps, gen)
    with torch.no_grad():
        return {"oblivious_pgd_acc": accuracy(clf, vg.reconstruct(x_obl), y),
                "adaptive_pgd_acc": accuracy(clf, vg.reconstruct(x_ada), y)}
