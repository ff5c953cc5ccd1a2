"""Square (Andriushchenko et al. 2020, "Square attack: a query-efficient black-box adversarial attack via random
search"), L-inf, margin loss, on the deployed runtime (``vaegan.runtime``): scores only, no gradient."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from vaegan.train.config import PurifyConfig
from vaegan.train.errors import VaeganError
from vaegan.train.evaluate import accuracy, predict
from vaegan.util import file_sha256

from ..config import SCORE_BATCH, AdaptiveConfig


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
        from vaegan.runtime.names import unsupported_purifier
        from vaegan.runtime.purify import PurifyParams, make_classifier, make_purifier

        self.artifacts = load_artifacts(artifacts_dir)
        params = None
        if purify_cfg is not None:
            why = unsupported_purifier(purify_cfg.mode, purify_cfg.init)
            if why:
                raise VaeganError(f"{why}: square cannot attack this purifier")
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


class ScoresOnly(nn.Module):
    """The classifier alone (``--no-purifier``) as Square's black box: logits without autograd, a fresh leaf tensor,
    and the same query count as ``RuntimeModel``."""

    def __init__(self, clf: nn.Module):
        super().__init__()
        self.clf = clf.eval()
        self.queries = 0
        self.calls = 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.queries += x.shape[0]
        return self.clf(x.detach()).detach()

    def close(self):
        pass


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
        if sha != file_sha256(path):
            raise VaeganError(f"{root}: exported from another {key.replace('_', ' ')} than {path} "
                              f"(sha256 {str(sha)[:12]}...); square must query the model under test: re-export")
    return root


def setup_square(ctx, vaegan_path, classifier_path, echo=print) -> None:
    """The runtime over the artifacts under test, and its clean accuracy (the report's ``runtime``); without a
    purifier, the torch classifier's scores (``ScoresOnly``)."""
    if not ctx.cfg.purifier:
        runtime, backend = ScoresOnly(ctx.clf).eval(), "torch classifier (no purifier)"
    else:
        runtime = RuntimeModel(ensure_artifacts(ctx.cfg, vaegan_path, classifier_path, echo), ctx.cfg.purify,
                               threads=ctx.cfg.threads).eval()
        backend = runtime.purifier.name
    ctx.state["runtime"] = runtime
    ctx.extras["runtime"] = {"backend": backend,
                             "clean_accuracy": accuracy(runtime, ctx.x, ctx.y, SCORE_BATCH)}


def run_square(ctx, eps: float):
    import torchattacks

    cfg, runtime = ctx.cfg, ctx.state["runtime"]

    def square_batch(_, xb, yb):
        q0 = runtime.queries
        xa = torchattacks.Square(runtime, norm="Linf", eps=eps, n_queries=cfg.square_queries,
                                 n_restarts=1, seed=cfg.seed, loss="margin")(xb, yb)
        return xa, {"queries": runtime.queries - q0}

    xa, per_batch = ctx.cache.map(f"square_eps{eps:g}", ctx.budget("square"), square_batch, ctx.x, ctx.y,
                                  cfg.batch_size)
    with torch.no_grad():
        fooled = predict(runtime, xa, cfg.batch_size) != ctx.y
        torch_acc = accuracy(ctx.defended, xa, ctx.y, SCORE_BATCH)
    return xa, fooled, {"queries": sum(b["queries"] for b in per_batch), "torch_reference_accuracy": torch_acc}
