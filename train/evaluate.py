"""Evaluation: the paper's Table 1 (classifier clean / under attack / after purification), ablations, Defense-GAN,
targeted-attack success, a purification grid and an accuracy-vs-eps plot; plus the sweep that picks the
purifier's defaults.

Oblivious attacker (the paper's setting): adversarial examples are crafted against the bare classifier, then
purified. Every number uses the first ``n`` test images (default 2,000, ``data.TEST_SUBSET``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from vaegan.util import file_sha256

from . import checkpoint as ckpt_io
from .attacks import AttackSpec, load_adversarial, run_attack, save_adversarial
from .config import PurifyConfig
from .data import data_kwargs, dataset_contract, test_subset
from .purifier import defense_gan_config, purify


@dataclass
class EvalConfig:
    n: int = 2000
    eps: tuple = (0.05, 0.1, 0.2, 0.3)
    attacks: tuple = ("fgsm", "pgd")
    targeted: bool = True
    targeted_eps: tuple = (0.1, 0.3)
    pgd_steps: int = 40
    alpha: float = 0.01
    seed: int = 0
    batch_size: int = 250
    # Defense-GAN is far costlier per image (docs/benchmarks.md): run on the first defense_gan_n images of these sets
    defense_gan_n: int = 100
    defense_gan_sets: tuple = ("clean", "fgsm_eps0.3", "pgd40_eps0.1")
    defense_gan_steps: int = 200
    defense_gan_restarts: int = 10
    purify: PurifyConfig = field(default_factory=PurifyConfig)
    adv_dir: str = "adv"
    out: str = "reports"
    data_root: str | None = None
    dataset: str = "fashion-mnist"
    image_size: int | None = None
    channels: int | None = None
    download: bool = False


def load_models(vaegan_path, classifier_path, data: dict | None = None):
    """The purifier and the classifier, checked to agree with each other and (``data``: ``data_kwargs``) with the
    data set they are evaluated on."""
    vg, vck = ckpt_io.load_model(vaegan_path, "vaegan")
    clf, cck = ckpt_io.load_model(classifier_path, "classifier")
    ckpt_io.check_pair(vg, clf, vaegan_path, classifier_path)
    if data is not None:
        ckpt_io.check_data(vg.contract, dataset_contract(**data), vaegan_path, data.get("dataset"))
    return vg, clf


@torch.no_grad()
def predict(clf, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([clf(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy (%) of ``model`` on images ``x`` (N, C, H, W) with labels ``y`` (N,), in batches of ``batch``."""
    return 100.0 * (predict(model, x, batch) == y).float().mean().item()


def purify_batched(vg, x: torch.Tensor, cfg: PurifyConfig, batch: int = 250) -> tuple[torch.Tensor, float]:
    """Purify in batches; returns (purified, milliseconds per image)."""
    out = []
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        out.append(purify(vg, x[i:i + batch], cfg).x.detach())
    return torch.cat(out), 1000.0 * (time.perf_counter() - t0) / max(len(x), 1)


def adversarial_set(clf, classifier_path, x, y, idx, spec: AttackSpec, adv_dir: str | None, batch: int = 250,
                    progress: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Craft (or reuse from ``adv_dir``) the adversarial test set for ``spec`` against ``clf``."""
    sha = file_sha256(classifier_path)
    path = Path(adv_dir) / f"test_{spec.tag}_seed{spec.seed}.npz" if adv_dir else None
    if path is not None and path.exists():
        d = load_adversarial(path)
        if d["meta"].get("classifier_sha256") == sha and len(d["y"]) >= len(x) and (d["index"][: len(x)] == idx.numpy()).all():
            t = torch.from_numpy(d["target"][: len(x)])
            return torch.from_numpy(d["x_adv"][: len(x)]), (t if spec.name == "tpgd" else None)
    x_adv, targets = run_attack(clf, x, y, spec, batch_size=batch, progress=progress)
    if path is not None:
        acc = accuracy(clf, x_adv, y)
        save_adversarial(path, x_adv, y, idx, spec, targets, {"split": "test", "classifier_sha256": sha,
                                                              "attacked_accuracy": acc})
    return x_adv, targets


def rows_for(cfg: EvalConfig) -> dict[str, PurifyConfig | None]:
    p = cfg.purify
    return {
        "none": None,
        "VAE reconstruction only (T=0)": replace(p, steps=0),
        f"no D term (lam=0, T={p.steps})": replace(p, lam=0.0),
        f"vaegan (T={p.steps}, eta={p.eta:g}, lam={p.lam:g}, R={p.restarts})": p,
        f"Defense-GAN (L={cfg.defense_gan_steps}, R={cfg.defense_gan_restarts}; first {cfg.defense_gan_n})":
            defense_gan_config(cfg.defense_gan_steps, cfg.defense_gan_restarts, seed=cfg.seed),
    }


def evaluate(vaegan_path, classifier_path, cfg: EvalConfig, progress: bool = True) -> dict:
    from tqdm import tqdm

    vg, clf = load_models(vaegan_path, classifier_path, data_kwargs(cfg))
    x, y, idx = test_subset(cfg.n, **data_kwargs(cfg))
    classes = vg.contract.classes
    sets: dict[str, torch.Tensor] = {"clean": x}
    targeted: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in cfg.attacks:
        for eps in cfg.eps:
            spec = AttackSpec(name, eps=eps, alpha=cfg.alpha, steps=cfg.pgd_steps, seed=cfg.seed)
            sets[spec.tag] = adversarial_set(clf, classifier_path, x, y, idx, spec, cfg.adv_dir, cfg.batch_size,
                                             progress)[0]
    if cfg.targeted:
        for eps in cfg.targeted_eps:
            spec = AttackSpec("tpgd", eps=eps, alpha=cfg.alpha, steps=cfg.pgd_steps, seed=cfg.seed)
            xa, t = adversarial_set(clf, classifier_path, x, y, idx, spec, cfg.adv_dir, cfg.batch_size, progress)
            targeted[spec.tag] = (xa, t)

    rows = rows_for(cfg)
    table: dict[str, dict[str, float]] = {}
    per_class: dict[str, dict[str, float]] = {}  # clean accuracy per class, per row: where purification costs
    timing: dict[str, float] = {}
    purified_examples: dict[str, torch.Tensor] = {}
    jobs = [(r, s) for r in rows for s in sets
            if not (r.startswith("Defense-GAN") and s not in cfg.defense_gan_sets)]
    for row, set_name in tqdm(jobs, desc="purify+classify", disable=not progress):
        pcfg = rows[row]
        xs, ys = sets[set_name], y
        if row.startswith("Defense-GAN"):
            xs, ys = xs[: cfg.defense_gan_n], y[: cfg.defense_gan_n]
        if pcfg is None:
            xp, ms = xs, 0.0
        else:
            xp, ms = purify_batched(vg, xs, pcfg, cfg.batch_size)
            timing.setdefault(row, ms)
        pred = predict(clf, xp)
        table.setdefault(row, {})[set_name] = (pred == ys).float().mean().item() * 100
        if set_name == "clean":
            per_class[row] = {c: (pred[ys == k] == k).float().mean().item() * 100
                              for k, c in enumerate(classes) if (ys == k).any()}
        if pcfg is cfg.purify:
            purified_examples[set_name] = xp[:10]
    targeted_res = {}
    for tag, (xa, t) in targeted.items():
        xp, _ = purify_batched(vg, xa, cfg.purify, cfg.batch_size)
        targeted_res[tag] = {"success_before": (predict(clf, xa) == t).float().mean().item() * 100,
                             "success_after": (predict(clf, xp) == t).float().mean().item() * 100,
                             "accuracy_after": accuracy(clf, xp, y)}
    report = {
        "n": cfg.n, "config": _jsonable(asdict(cfg)), "table": table, "ms_per_image": timing,
        "per_class_clean": per_class, "targeted": targeted_res,
        "checkpoints": {"vaegan": file_sha256(vaegan_path), "classifier": file_sha256(classifier_path)},
        "threads": torch.get_num_threads(),
    }
    write_report(report, cfg, x, sets, purified_examples)
    return report


def _jsonable(d):
    return json.loads(json.dumps(d, default=list))


def markdown_table(report: dict) -> str:
    cols = list(next(iter(report["table"].values())).keys())
    head = "| purifier | " + " | ".join(cols) + " | ms/img |"
    sep = "|---" * (len(cols) + 2) + "|"
    lines = [head, sep]
    for row, vals in report["table"].items():
        ms = report["ms_per_image"].get(row)
        lines.append(f"| {row} | " + " | ".join(f"{vals[c]:.2f}" if c in vals else "–" for c in cols) + f" | {'–' if ms is None else f'{ms:.2f}'} |")
    return "\n".join(lines)


def write_report(report: dict, cfg: EvalConfig, x, sets, purified_examples) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import save_image

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# vaegan evaluation (first {cfg.n} test images, oblivious attacker)", "",
          "Accuracy (%) of the classifier on clean / adversarial inputs, without and with purification.", "",
          markdown_table(report), ""]
    if report["targeted"]:
        md += ["## Targeted PGD (random target != label): success rate (%)", "",
               "| attack | success before | success after purification | accuracy after |", "|---|---|---|---|"]
        md += [f"| {k} | {v['success_before']:.2f} | {v['success_after']:.2f} | {v['accuracy_after']:.2f} |"
               for k, v in report["targeted"].items()]
        md.append("")
    if report.get("per_class_clean"):
        classes = list(next(iter(report["per_class_clean"].values())))
        md += ["## Clean accuracy per class (%)", "", "| purifier | " + " | ".join(classes) + " |",
               "|---" * (len(classes) + 1) + "|"]
        md += [f"| {row} | " + " | ".join(f"{v[c]:.1f}" if c in v else "–" for c in classes) + " |"
               for row, v in report["per_class_clean"].items()]
        md.append("")
    md += [f"Threads: {report['threads']}. Checkpoints: vaegan `{report['checkpoints']['vaegan'][:12]}`, "
           f"classifier `{report['checkpoints']['classifier'][:12]}`.", "",
           "![grid](grid.png)", "", "![accuracy vs eps](accuracy_vs_eps.png)", ""]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.json").write_text(json.dumps(report, indent=2))

    # grid: for each of up to 3 sets, rows clean / adversarial / purified (10 images each)
    shown = [s for s in sets if s != "clean"][:: max(1, (len(sets) - 1) // 3)][:3] or ["clean"]
    rows = []
    for s in shown:
        if s in purified_examples:
            rows += [x[:10], sets[s][:10], purified_examples[s]]
    if rows:
        save_image(torch.cat(rows), out / "grid.png", nrow=10, padding=2, pad_value=1.0)

    fig, ax = plt.subplots(figsize=(6, 4))
    for row, vals in report["table"].items():
        for atk in cfg.attacks:
            pts = [(float(k.split("eps")[1]), v) for k, v in vals.items() if k.startswith(atk) and "eps" in k]
            if len(pts) > 1 and "clean" in vals:
                pts.sort()
                ax.plot([0] + [p[0] for p in pts], [vals["clean"]] + [p[1] for p in pts], marker="o",
                        label=f"{row.split(' (')[0]} / {atk}")
    ax.set_xlabel("eps (L-inf)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_eps.png", dpi=120)
    plt.close(fig)


def sweep(vaegan_path, classifier_path, grid: dict, n: int = 500, adv_dir: str | None = "adv",
          out: str = "reports", seed: int = 0, data_root=None, progress: bool = True, base: PurifyConfig | None = None,
          data: dict | None = None) -> list[dict]:
    """Accuracy on clean, PGD-40 eps .1 and FGSM eps .3 (first ``n`` images) for each purifier setting in the
    product of ``grid`` (keys: PurifyConfig fields) over ``base`` (default: the checkpoint's operating point).
    Written to OUT/sweep.md and OUT/sweep.json."""
    import itertools

    data = {**(data or {}), "data_root": data_root}
    vg, clf = load_models(vaegan_path, classifier_path, data)
    base = base or ckpt_io.purify_config(ckpt_io.load_raw(vaegan_path))
    x, y, idx = test_subset(max(n, 2000), **data)
    specs = [AttackSpec("pgd", eps=0.1, alpha=0.01, steps=40, seed=seed), AttackSpec("fgsm", eps=0.3, seed=seed)]
    sets = {"clean": x[:n]}
    for s in specs:
        sets[s.tag] = adversarial_set(clf, classifier_path, x, y, idx, s, adv_dir, progress=progress)[0][:n]
    y = y[:n]
    results = []
    keys = list(grid)
    seen = set()
    for values in itertools.product(*(grid[k] for k in keys)):
        pcfg = replace(base, **dict(zip(keys, values)))
        if pcfg.steps == 0:  # eta, lam and momentum do not matter without steps: run T=0 once
            pcfg = replace(pcfg, eta=0.0, lam=0.0, momentum=0.0)
        if repr(pcfg) in seen:
            continue
        seen.add(repr(pcfg))
        res = {"config": asdict(pcfg)}
        for name, xs in sets.items():
            xp, ms = purify_batched(vg, xs, pcfg)
            res[name] = accuracy(clf, xp, y)
            res["ms_per_image"] = ms
        res["mean"] = sum(res[k] for k in sets) / len(sets)
        results.append(res)
        if progress:
            print(" ".join(f"{k}={v}" for k, v in zip(keys, values)) + " | " +
                  " ".join(f"{k} {res[k]:.1f}" for k in sets) + f" | {res['ms_per_image']:.1f} ms/img", flush=True)
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    (outp / "sweep.json").write_text(json.dumps(results, indent=2))
    lines = ["| " + " | ".join(keys) + " | " + " | ".join(sets) + " | mean | ms/img |",
             "|---" * (len(keys) + len(sets) + 2) + "|"]
    for r in results:
        lines.append("| " + " | ".join(str(r["config"][k]) for k in keys) + " | " +
                     " | ".join(f"{r[s]:.1f}" for s in sets) + f" | {r['mean']:.1f} | {r['ms_per_image']:.1f} |")
    (outp / "sweep.md").write_text(f"# Purifier sweep (first {n} test images)\n\n" + "\n".join(lines) + "\n")
    return results


__all__ = ["EvalConfig", "evaluate", "sweep", "markdown_table"]
