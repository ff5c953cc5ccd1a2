"""``vaegan-eval-adaptive``: a thin click command over ``evaluate_adaptive`` and ``merge_reports``. Its options are
generated from ``AdaptiveConfig`` (and the purifier's from ``PurifyConfig``), as the other CLIs' are; nothing heavy
is imported for ``--help`` / ``--version``."""

from __future__ import annotations

from pathlib import Path

import click

from vaegan import __version__
from vaegan.errors import friendly_errors
from vaegan.extras import requires_extra
from vaegan.train.cli import build_config, dataclass_options
from vaegan.train.errors import VaeganError

from .config import AdaptiveConfig

REPORT_KEYS = ("n", "eps", "clean", "attacks", "checkpoints", "config")


def _default(kind: str) -> str:
    from vaegan.train.checkpoint import default_path

    return str(default_path(kind))


def _read_reports(dirs) -> list[dict]:
    import json

    reports = []
    for d in dirs:
        path = Path(d) / "adaptive.json"
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            raise VaeganError(f"{path}: not a readable adaptive report ({e})") from None
        missing = [k for k in REPORT_KEYS if not isinstance(reports[-1], dict) or k not in reports[-1]]
        if missing:
            raise VaeganError(f"{path}: not an adaptive report (no {', '.join(missing)})")
    return reports


@click.command(help="Adaptive attacks on the whole defended pipeline classifier(purifier(x)): BPDA, BPDA+EOT, "
                    "full-gradient PGD through the unrolled purifier, APGD-CE/APGD-T, FAB-T, Square on the deployed "
                    "runtime, transfer from a surrogate, latent-space PGD; writes adaptive.md, adaptive.json, "
                    "adaptive.png (beside OUT/report.json's oblivious numbers). Purifier options as vaegan-eval (default: the "
                    "checkpoint's operating point).")
@click.version_option(__version__)
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="VAE-GAN (default: shipped)")
@click.option("--classifier", type=click.Path(dir_okay=False), default=None, help="default: shipped weights")
@dataclass_options(AdaptiveConfig)
@click.option("--merge", "merge_dirs", multiple=True, type=click.Path(file_okay=False),
              help="instead of attacking: merge the adaptive.json of these earlier runs (same checkpoints and purifier; "
                   "e.g. one run per eps, in parallel) into OUT; runs over more images than the smallest are cut to "
                   "its first images by their per-image outcomes")
@friendly_errors
@requires_extra("train")
def adaptive_cli(checkpoint, classifier, merge_dirs, **values):
    out = values["out"] or AdaptiveConfig.out
    if merge_dirs:
        from .merge import merge_reports
        from .report import write_adaptive

        reports = _read_reports(merge_dirs)
        merged = merge_reports(reports, [str(Path(d) / "adaptive.json") for d in merge_dirs])
        write_adaptive(merged, Path(out))
        cut = sorted({r["n"] for r in reports} - {merged["n"]})
        click.echo(f"merged {len(reports)} reports" + (f" over the first {merged['n']} images (runs over "
                                                       f"{', '.join(map(str, cut))} cut to them)" if cut else "")
                   + f"; wrote {out}/adaptive.md, adaptive.json, adaptive.png")
        return

    import dataclasses

    from vaegan.train.cli import operating_point
    from vaegan.train.config import PurifyConfig

    cfg = build_config(AdaptiveConfig, values)  # validates attack names, eps, ...
    if checkpoint and not cfg.purifier:
        raise VaeganError("--checkpoint and --no-purifier: the classifier alone has no VAE-GAN; pass one of them")
    from .evaluate import evaluate_adaptive

    vaegan = (checkpoint or _default("vaegan")) if cfg.purifier else None
    if vaegan is not None:  # the purifier's operating point: the checkpoint's, the purifier options given on top
        pvalues = {f.name: values.get(f.name) for f in dataclasses.fields(PurifyConfig)}
        cfg = dataclasses.replace(cfg, purify=operating_point(vaegan, pvalues))
    evaluate_adaptive(vaegan, classifier or _default("classifier"), cfg, echo=click.echo)
    click.echo(f"wrote {out}/adaptive.md, adaptive.json, adaptive.png")
