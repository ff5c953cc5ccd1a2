"""``evaluate_adaptive``: every selected attack at every eps on the first n test images, then the report.

The defended models are built once (``Context``); each attack's runner (``registry.runner``) returns its adversarial
images, the per-image fooled mask and its own numbers; this loop checks the budget, records accuracy, time, device
and the packed mask, and keeps the per-image worst case over the attacks on the deterministic defense.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import torch

from vaegan.train import checkpoint as ckpt_io
from vaegan.train.evaluate import accuracy
from vaegan.train.purifier import Defended, Purifier
from vaegan.util import file_sha256

from .attacks.bpda import StraightThrough
from .attacks.eot import RandomizedPurifier
from .cache import BatchCache
from .config import SCORE_BATCH, AdaptiveConfig
from .context import Context
from .registry import ATTACKS, RANDOMIZED, WORST_CASE, runner
from .report import oblivious_numbers, pack_mask, write_adaptive


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
    ``data`` = (x, y) overrides the test subset (tests); the latent-target pool is then x itself. With
    ``cfg.purifier`` False the defended model is the classifier alone (``vaegan_path`` is not read: None)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dev = torch.device(cfg.device)
    with _full_fp32(dev):
        return _evaluate_adaptive(vaegan_path, classifier_path, cfg, dev, data, echo)


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)}, torch {torch.__version__})"
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'s' * (n != 1)}, torch {torch.__version__})"


def _evaluate_adaptive(vaegan_path, classifier_path, cfg: AdaptiveConfig, dev: torch.device, data, echo) -> dict:
    from vaegan.train.data import data_kwargs, dataset_contract, test_subset

    vg = ckpt_io.load_model(vaegan_path, "vaegan")[0].to(dev) if cfg.purifier else None
    clf = ckpt_io.load_model(classifier_path, "classifier")[0].to(dev)
    if vg is not None:
        ckpt_io.check_pair(vg, clf, vaegan_path, classifier_path)
    if data is None:
        ckpt_io.check_data(clf.contract if vg is None else vg.contract, dataset_contract(**data_kwargs(cfg)),
                           classifier_path if vg is None else vaegan_path, cfg.dataset)
        x, y, _ = test_subset(cfg.n, **data_kwargs(cfg))
    else:
        x, y = data[0][: cfg.n], data[1][: cfg.n]
    x, y = x.to(dev), y.to(dev)
    pcfg = cfg.purify
    rcfg = replace(pcfg, restarts=max(cfg.eot_restarts, pcfg.restarts))
    # .eval() on every wrapper: nn.Module starts in training mode, and torchattacks restores the mode it found
    # after each attack (``_recover_model_mode``), which would leave the shared classifier in training mode
    # (dropout, batch-statistics BatchNorm) for everything scored afterwards.
    if cfg.purifier:
        ctx = Context(cfg=cfg, x=x, y=y, vg=vg, clf=clf,
                      defended=Defended(Purifier(vg, pcfg), clf).eval(),
                      bpda=Defended(StraightThrough(Purifier(vg, pcfg)), clf).eval(),
                      full=Defended(Purifier(vg, pcfg, differentiable=True), clf).eval(),
                      rcfg=rcfg, rand_eval=Defended(RandomizedPurifier(vg, rcfg, seed=cfg.seed + 1_000_003),
                                                    clf).eval(),
                      cache=None)
    else:  # the classifier alone: every gradient is its own (the attacks that need a purifier are refused)
        clf.eval()
        ctx = Context(cfg=cfg, x=x, y=y, vg=None, clf=clf, defended=clf, bpda=clf, full=clf, rcfg=rcfg,
                      rand_eval=None, cache=None)
    shas = {"vaegan": file_sha256(vaegan_path) if cfg.purifier else None,
            "classifier": file_sha256(classifier_path)}
    res: dict = {"clean": {"classifier": accuracy(clf, x, y, SCORE_BATCH),
                           "defended": accuracy(ctx.defended, x, y, SCORE_BATCH)},
                 "attacks": ctx.results, "any": {}}
    if any(a in cfg.attacks for a in RANDOMIZED):
        res["clean"]["defended_randomized"] = accuracy(ctx.rand_eval, x, y, SCORE_BATCH)
    echo(f"clean: classifier {res['clean']['classifier']:.2f}%, defended {res['clean']['defended']:.2f}% "
         f"(first {len(x)} test images)")
    fooled_any = {e: torch.zeros(len(x), dtype=torch.bool) for e in cfg.eps}
    device_name = _device_name(dev)
    if "transfer" in cfg.attacks:
        from .attacks.transfer import setup_transfer

        setup_transfer(ctx, echo)
    if "square" in cfg.attacks:
        from .attacks.square import setup_square

        setup_square(ctx, vaegan_path, classifier_path, echo)
    if "latent" in cfg.attacks:
        from .attacks.latent import setup_latent

        setup_latent(ctx, data)

    ctx.cache = BatchCache(Path(cfg.out) / "partial",
                           {"checkpoints": [shas["vaegan"], shas["classifier"]],
                            "purify": asdict(pcfg), "seed": cfg.seed, "device": dev.type},
                           echo)
    for name in [a for a in ATTACKS if a in cfg.attacks]:
        run = runner(name)
        ctx.results[name] = {}
        for eps in cfg.eps:
            t0 = time.perf_counter()
            ctx.cache.reused = 0
            xa, fooled, rec = run(ctx, eps)
            assert not clf.training and not (vg is not None and vg.training), f"{name}: a net was left in training mode"
            linf = (xa - x).abs().amax().item()
            if linf > eps + 1e-5:  # a bug, not a user error
                raise AssertionError(f"{name} eps {eps}: perturbation {linf} exceeds the budget")
            rec.update(accuracy=100.0 * (1 - fooled.float().mean().item()), seconds=time.perf_counter() - t0,
                       linf=linf, budget=ctx.budget(name), device=device_name, fooled=pack_mask(fooled))
            if ctx.cache.reused:  # ``seconds`` then covers only the batches this run computed
                rec["resumed_batches"] = ctx.cache.reused
            if name in WORST_CASE:
                fooled_any[eps] |= fooled.cpu()
            ctx.results[name][str(eps)] = rec
            echo(f"{name:9s} eps {eps:<5g} accuracy {rec['accuracy']:6.2f}%  ({rec['seconds']:.0f}s)"
                 + (f"  curve {_fmt_curve(rec['curve'])}" if "curve" in rec else ""))
    if any(a in cfg.attacks for a in WORST_CASE):
        res["any"] = {str(e): 100.0 * (1 - f.float().mean().item()) for e, f in fooled_any.items()}
    report = {"n": len(x), "eps": list(cfg.eps), "config": json.loads(json.dumps(asdict(cfg), default=list)),
              **res, **ctx.extras,
              "checkpoints": shas,
              "threads": torch.get_num_threads(), "device": device_name,
              "oblivious": oblivious_numbers(Path(cfg.out) / "report.json")}
    if "runtime" in ctx.state:
        ctx.state["runtime"].close()
    write_adaptive(report, Path(cfg.out))
    ctx.cache.clear()
    return report


def _fmt_curve(curve: dict) -> str:
    return " ".join(f"{t}:{a:.1f}" for t, a in curve.items())
