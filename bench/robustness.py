"""``python bench/robustness.py``: defenses side by side against the same adaptive suite (docs/robustness.md).

Each defense (``DEFENSES``: a classifier, with or without a purifier in front of it) faces the same attacks
(``SUITE``: APGD-CE + APGD-T with 9 targets, FAB-T with 9 targets, Square, full-gradient PGD; each a
``vaegan-eval-adaptive`` run through the whole pipeline, the purifier's unrolled loop included) on the same first
``--n`` test images at each eps (``EPS``). Each (defense, attack, eps) is one run in
``OUT/DEFENSE/ATTACK_EPS/``; a finished run (its adaptive.json) is not run again, and a stopped one resumes at its
first unfinished batch. ``merge`` joins the runs of each (defense, eps) per image (``vaegan-eval-adaptive --merge``)
into ``OUT/DEFENSE/union_EPS/``: the worst case over the suite. ``clean`` measures each defense's clean accuracy on
the whole 10,000-image test set. ``table`` writes the markdown table and the plot (accuracy vs eps per defense).

    python bench/robustness.py commands                                  # the command list, nothing run
    python bench/robustness.py run --defense at --eps 0.1 --threads 1   # the missing runs of one cell, then merge
    python bench/robustness.py clean --threads 1                         # full test set, every defense
    python bench/robustness.py merge                                     # every cell's finished runs, per image
    python bench/robustness.py table --plot docs/robustness.png          # markdown on stdout

Paths of the adversarially trained classifier and its purifier are the ``vaegan-train`` outputs named in
docs/robustness.md; ``--at-classifier`` / ``--at-purifier`` point elsewhere.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import click

from vaegan.train.cli import friendly_errors
from vaegan.train.errors import VaeganError

EPS = (0.05, 0.1, 0.2, 0.3)
# defense -> (label, classifier, purifier or None); "AT" and "AT_PURIFIER" are replaced by --at-classifier and
# --at-purifier
DEFENSES = {
    "plain": ("plain classifier (models/classifier.pt)", "models/classifier.pt", None),
    "at": ("PGD-AT classifier, eps 0.1", "AT", None),
    "shipped": ("shipped purifier + plain classifier", "models/classifier.pt", "models/vaegan.pt"),
    "at_purifier": ("purifier fine-tuned for the AT classifier + AT classifier", "AT", "AT_PURIFIER"),
}
AT_CLASSIFIER = "runs/at_pgd_eps0.1/model.pt"
AT_PURIFIER = "runs/purifier_at_eps0.1/model.pt"
# attack -> vaegan-eval-adaptive options: the budgets of the adaptive table in docs/results.md (Makefile's CPU runs)
SUITE = {
    "apgd9": "--attacks apgd --apgd-grad full --apgd-targets 9 --attack-steps 50",
    "full": "--attacks full --attack-steps 50 --curve 10,20,50",
    "fab": "--attacks fab --apgd-grad full --fab-targets 9 --attack-steps 10",
    "square": "--attacks square --square-queries 1000",
}


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def defense_paths(defense: str, at_classifier: str, at_purifier: str) -> tuple[str, str | None]:
    if defense not in DEFENSES:
        raise VaeganError(f"--defense {defense!r}: choose from {', '.join(DEFENSES)}")
    _, clf, pur = DEFENSES[defense]
    sub = {"AT": at_classifier, "AT_PURIFIER": at_purifier}
    return sub.get(clf, clf), sub.get(pur, pur) if pur else None


def run_command(defense: str, attack: str, eps: float, out: Path, n: int, threads: int, at_classifier: str,
                at_purifier: str) -> list[str]:
    """The vaegan-eval-adaptive command of one (defense, attack, eps)."""
    clf, pur = defense_paths(defense, at_classifier, at_purifier)
    model = ["--classifier", clf] + (["--checkpoint", pur] if pur else ["--no-purifier"])
    if attack == "square" and pur:
        model += ["--artifacts", str(out / defense / "artifacts")]
    return ([_bin("vaegan-eval-adaptive"), "--n", str(n), "--threads", str(threads), "--eps", f"{eps:g}"] + model
            + shlex.split(SUITE[attack]) + ["--out", str(out / defense / f"{attack}_{eps:g}")])


def export_command(defense: str, out: Path, threads: int, at_classifier: str, at_purifier: str) -> list[str]:
    """The runtime artifacts Square queries (purifier defenses only)."""
    clf, pur = defense_paths(defense, at_classifier, at_purifier)
    return [_bin("vaegan-export"), "--checkpoint", pur, "--classifier", clf, "--threads", str(threads),
            "--out", str(out / defense / "artifacts")]


def merge_command(defense: str, eps: float, out: Path) -> list[str] | None:
    """``--merge`` of the finished runs of (defense, eps), or None when none has finished."""
    done = [out / defense / f"{a}_{eps:g}" for a in SUITE if (out / defense / f"{a}_{eps:g}" / "adaptive.json").is_file()]
    if not done:
        return None
    return ([_bin("vaegan-eval-adaptive")] + [a for d in done for a in ("--merge", str(d))]
            + ["--out", str(out / defense / f"union_{eps:g}")])


def _parse_list(option: str, text: str | None, allowed, cast=str) -> list:
    if text is None:
        return list(allowed)
    try:
        items = [cast(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise VaeganError(f"{option} {text!r}: expected a comma-separated list") from None
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise VaeganError(f"{option} {text!r}: choose from {', '.join(map(str, allowed))}")
    return items


def _shell(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


@click.group(help=__doc__.split("\n\n")[0])
def main():
    pass


_common = [
    click.option("--out", type=click.Path(file_okay=False), default="reports/robustness", show_default=True),
    click.option("--at-classifier", default=AT_CLASSIFIER, show_default=True),
    click.option("--at-purifier", default=AT_PURIFIER, show_default=True),
]


_cell = [
    click.option("--attacks", default=None, help=f"comma-separated, of {', '.join(SUITE)} (default: all)"),
    click.option("--n", type=click.IntRange(1), default=1000, show_default=True),
    click.option("--threads", type=click.IntRange(1), default=1, show_default=True),
]


def _apply(options, fn):
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def common(fn):
    """--out and the two AT checkpoints: every subcommand's."""
    return _apply(_common, fn)


def cell_options(fn):
    """The suite's attacks, image count and threads, then the common options: the subcommands that select cells."""
    return _apply(_cell + _common, fn)


@main.command(help="Print the commands of the selected cells (nothing is run).")
@click.option("--defense", default=None, help=f"comma-separated, of {', '.join(DEFENSES)} (default: all)")
@click.option("--eps", "eps_text", default=None, help="comma-separated (default: 0.05,0.1,0.2,0.3)")
@cell_options
@friendly_errors
def commands(defense, eps_text, attacks, n, threads, out, at_classifier, at_purifier):
    out = Path(out)
    for d in _parse_list("--defense", defense, DEFENSES):
        if DEFENSES[d][2] and "square" in _parse_list("--attacks", attacks, SUITE):
            click.echo(_shell(export_command(d, out, threads, at_classifier, at_purifier)))
        for e in _parse_list("--eps", eps_text, EPS, float):
            for a in _parse_list("--attacks", attacks, SUITE):
                click.echo(_shell(run_command(d, a, e, out, n, threads, at_classifier, at_purifier)))
            click.echo(_shell([_bin("vaegan-eval-adaptive")] + [x for a in SUITE for x in
                                                                ("--merge", str(out / d / f"{a}_{e:g}"))]
                              + ["--out", str(out / d / f"union_{e:g}")]))


@main.command(help="Run the missing runs of the selected cells (one at a time), then merge each cell.")
@click.option("--defense", required=True, help=f"comma-separated, of {', '.join(DEFENSES)}")
@click.option("--eps", "eps_text", required=True, help="comma-separated")
@cell_options
@friendly_errors
def run(defense, eps_text, attacks, n, threads, out, at_classifier, at_purifier):
    out = Path(out)
    for d in _parse_list("--defense", defense, DEFENSES):
        for path in defense_paths(d, at_classifier, at_purifier):
            if path and not Path(path).is_file():
                raise VaeganError(f"defense {d}: {path} does not exist (train it first: docs/robustness.md)")
        for e in _parse_list("--eps", eps_text, EPS, float):
            for a in _parse_list("--attacks", attacks, SUITE):
                target = out / d / f"{a}_{e:g}" / "adaptive.json"
                if target.is_file():
                    click.echo(f"{target}: done")
                    continue
                if a == "square" and DEFENSES[d][2] and not (out / d / "artifacts" / "manifest.json").is_file():
                    _run(export_command(d, out, threads, at_classifier, at_purifier))
                _run(run_command(d, a, e, out, n, threads, at_classifier, at_purifier))
            cmd = merge_command(d, e, out)
            if cmd:
                _run(cmd)


@main.command(help="Merge the finished runs of every cell (the table's input), whether or not the cell is complete.")
@common
@friendly_errors
def merge(out, at_classifier, at_purifier):
    out = Path(out)
    for d in DEFENSES:
        for e in EPS:
            cmd = merge_command(d, e, out)
            if cmd:
                _run(cmd)


def _run(cmd: list[str]) -> None:
    click.echo(f"$ {_shell(cmd)}", err=True)
    r = subprocess.run(cmd)
    if r.returncode != 0:
        raise VaeganError(f"{Path(cmd[0]).name} exited with {r.returncode}: {_shell(cmd)}")


@main.command(help="Clean accuracy of every defense on the whole test set (10,000 images) -> OUT/clean.json.")
@click.option("--defense", default=None, help=f"comma-separated, of {', '.join(DEFENSES)} (default: all)")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True)
@click.option("--data-root", default=None)
@common
@friendly_errors
def clean(defense, threads, data_root, out, at_classifier, at_purifier):
    import torch

    from vaegan.train import checkpoint as ckpt_io
    from vaegan.train.config import PurifyConfig
    from vaegan.train.data import load_split
    from vaegan.train.evaluate import predict
    from vaegan.train.purifier import Defended, Purifier

    torch.set_num_threads(threads)
    x, y = load_split(False, data_root).tensors
    path = Path(out) / "clean.json"
    for d in _parse_list("--defense", defense, DEFENSES):
        clf_path, pur_path = defense_paths(d, at_classifier, at_purifier)
        if not Path(clf_path).is_file() or (pur_path and not Path(pur_path).is_file()):
            click.echo(f"{d}: skipped ({clf_path if not Path(clf_path).is_file() else pur_path} does not exist)")
            continue
        clf, _ = ckpt_io.load_model(clf_path, "classifier")
        model = clf.eval()
        if pur_path:
            vg, _ = ckpt_io.load_model(pur_path, "vaegan")
            model = Defended(Purifier(vg, PurifyConfig()), clf).eval()
        acc = 100.0 * (predict(model, x, 500) == y).float().mean().item()
        results = json.loads(path.read_text()) if path.is_file() else {}  # re-read: another run may have written
        results[d] = {"accuracy": acc, "n": len(x), "classifier": clf_path, "purifier": pur_path,
                      "classifier_sha256": ckpt_io.file_sha256(clf_path),
                      "purifier_sha256": ckpt_io.file_sha256(pur_path) if pur_path else None,
                      "purify": vars(PurifyConfig()) if pur_path else None}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2))
        click.echo(f"{d}: {acc:.2f}% clean on all {len(x)} test images")


def cell(out: Path, defense: str, eps: float) -> dict | None:
    """The merged (per-image worst case) result of one cell: accuracy, images, attacks in it; None if nothing ran."""
    path = out / defense / f"union_{eps:g}" / "adaptive.json"
    if not path.is_file():
        return None
    r = json.loads(path.read_text())
    return {"accuracy": r["any"][str(eps)], "n": r["n"], "attacks": sorted(r["attacks"]),
            "clean_first_n": r["clean"].get("defended", r["clean"].get("classifier"))}


@main.command(help="The table (markdown on stdout) and, with --plot, accuracy vs eps per defense.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None)
@common
@friendly_errors
def table(plot, out, at_classifier, at_purifier):
    out = Path(out)
    cleanj = json.loads((out / "clean.json").read_text()) if (out / "clean.json").is_file() else {}
    rows = ["| defense | clean (10,000) | " + " | ".join(f"eps {e:g}" for e in EPS) + " |",
            "|---|---:|" + "---:|" * len(EPS)]
    curves = {}
    for d, (label, *_) in DEFENSES.items():
        cells = {e: cell(out, d, e) for e in EPS}
        c = cleanj.get(d, {}).get("accuracy")
        texts = []
        for e in EPS:
            v = cells[e]
            if v is None:
                texts.append("not run")
                continue
            missing = [a for a in ("apgd", "fab", "full", "square") if a not in v["attacks"]]
            texts.append(f"{v['accuracy']:.1f}" + (f" (n={v['n']})" if v["n"] != 1000 else "")
                         + (f" (no {', '.join(missing)})" if missing else ""))
        rows.append(f"| {label} | {'%.2f' % c if c is not None else 'not run'} | " + " | ".join(texts) + " |")
        pts = [(e, cells[e]["accuracy"]) for e in EPS if cells[e]]
        if pts:
            first = next(cells[e] for e in EPS if cells[e])
            curves[label] = [(0.0, first["clean_first_n"])] + pts
    click.echo("\n".join(rows))
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, pts in curves.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xlabel("eps (L-inf); eps 0: clean on the same images")
        ax.set_ylabel("accuracy (%), per-image worst case over the suite")
        ax.set_ylim(0, 100)
        ax.set_title("adaptive suite, first test images (n per cell: docs/robustness.md)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(plot, dpi=120)
        plt.close(fig)
        click.echo(f"wrote {plot}", err=True)


if __name__ == "__main__":
    main()
