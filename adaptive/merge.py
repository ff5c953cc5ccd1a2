"""``merge_reports``: one report from several runs over the same images, checkpoints and purifier (split by attack,
eps or device), whose worst-case row is the per-image union of the runs' masks. No torch import."""

from __future__ import annotations

import json

import numpy as np

from vaegan.train.errors import VaeganError

from .registry import ATTACKS, WORST_CASE, attack_budget
from .report import _fmt_budget, pack_mask, unpack_mask


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
    scored = WORST_CASE
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
                                  "fooled": pack_mask(fooled), "cut_from": report["n"]}
    whole_set = ("clean_accuracy",)  # the surrogate's and the runtime's, over the run's images
    return {**report, "n": n, "attacks": attacks, "clean": {}, "any": {},
            **{k: {a: b for a, b in report[k].items() if a not in whole_set}
               for k in ("surrogate", "runtime") if report.get(k)}}


# what a result cut to fewer images keeps: its settings; numbers over the run's whole image set are dropped
_CUT_KEEPS = ("budget", "device", "seconds", "gradient", "defense", "eot_samples", "linf", "resumed_batches")
