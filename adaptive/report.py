"""The adaptive report: OUT/adaptive.md (tables and notes), OUT/adaptive.json (everything, with per-image masks so
that ``merge.merge_reports`` can join runs), OUT/adaptive.png (``plot.plot_adaptive``). No torch import."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vaegan.train.errors import VaeganError

from .registry import LABELS, RANDOMIZED, attack_budget


def pack_mask(mask) -> str:
    """A per-image bool mask (a torch tensor or a numpy array) as hex (8 images per byte), so reports carry per-image
    outcomes compactly."""
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    return np.packbits(np.asarray(mask).astype(np.uint8)).tobytes().hex()


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


def write_adaptive(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    eps = [str(e) for e in report["eps"]]
    c = report["clean"]
    model = "classifier(purifier(x))" if report["config"].get("purifier", True) else "the classifier alone (no purifier)"
    md = [f"# Adaptive attacks on {model} (first {report['n']} test images, L-inf)", "",
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
        queried = "the runtime" if report["config"].get("purifier", True) else "the classifier alone (torch, scores only)"
        about = about if report["config"].get("purifier", True) else about[1:]
        notes.append(f"- square queried {queried}" + (f" ({', '.join(about)})" if about else "")
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
        f"- Threads: {report['threads']}. Checkpoints: vaegan "
        + (f"`{report['checkpoints']['vaegan'][:12]}`" if report["checkpoints"]["vaegan"] else "none (no purifier)")
        + f", classifier `{report['checkpoints']['classifier'][:12]}`.", "", "![accuracy vs eps](adaptive.png)", ""]
    (out / "adaptive.md").write_text("\n".join(md))
    (out / "adaptive.json").write_text(json.dumps(report, indent=2))
    from .plot import plot_adaptive

    plot_adaptive(report, out / "adaptive.png")


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
