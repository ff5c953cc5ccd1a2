"""``python bench/precision.py``: what the fast path's bf16 arithmetic (``vaegan-run --precision bf16``) costs in
accuracy and gives in speed, against fp32 on the same runtime, weights and inputs.

bf16 does not meet the export's fp32 tolerances (the loop's T steps amplify its 8-bit mantissa; docs/benchmarks.md,
"bf16 on the OpenVINO fast path"), so it is judged where it matters, on the defended classifier's labels: accuracy of
classifier(purifier(x)) over the first ``--n`` test images and over each adversarial set of ``vaegan-attack`` /
``vaegan-eval`` (``adv/test_*.npz``, crafted against the same classifier), and how many labels differ from fp32's.
Then latency: both precisions take turns for ``--rounds`` rounds at each batch size (p50 per round; the speed-up is
fp32's p50 over bf16's, round by round, as in ``bench/latency.py``).

Both run the fused backend's CPU fast path on OpenVINO (``make_purifier(..., fast_path_engine="openvino")``) with
``--threads`` threads, one restart, the manifest's T / eta / lam. Where the CPU has no bf16 arithmetic (AVX512-BF16 or
AMX) or OpenVINO is missing, the run says why and stops (exit 0, ``{"skipped": why}`` in the JSON).

    python bench/precision.py --json precision.json
    python bench/precision.py --quick            # smoke run
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# a sibling script, importable once HERE is on the path
from common import (export_if_needed, format_rounds, model_options, percentiles, round_ratios,  # noqa: E402
                    time_runs)

from vaegan.runtime.names import PRECISIONS  # noqa: E402 - fp32, bf16
from vaegan.errors import friendly_errors  # noqa: E402


def labelled_sets(n: int, adv: list[str], classifier_sha: str, echo) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``clean`` (the first ``n`` test images) and each adversarial set (its first ``n``), named by its attack tag.
    A set that is not a vaegan adversarial dataset, or was crafted against another classifier, is left out with a
    line naming the file and why; the others go on."""
    from vaegan.train.attacks import load_adversarial
    from vaegan.train.data import test_subset
    from vaegan.train.errors import VaeganError

    x, y, _ = test_subset(n)
    sets = {"clean": (np.ascontiguousarray(x.numpy(), dtype=np.float32), y.numpy())}
    for path in adv:
        try:
            d = load_adversarial(path)
        except VaeganError as e:
            echo(f"skipping {e}")
            continue
        meta = d["meta"]
        if meta.get("classifier_sha256") != classifier_sha:
            echo(f"skipping {path}: crafted against another classifier (sha256 {str(meta.get('classifier_sha256'))[:12]}"
                 f"... vs the artifacts' {classifier_sha[:12]}...)")
            continue
        sets[meta.get("tag", Path(path).stem)] = (np.ascontiguousarray(d["x_adv"][:n]), d["y"][:n])
    return sets


def accuracy_table(purifiers: dict, classifier, sets: dict, batch: int) -> list[dict]:
    rows = []
    for name, (x, y) in sets.items():
        pur, labels = {}, {}
        for p, purifier in purifiers.items():
            pur[p] = np.concatenate([purifier.purify(x[i:i + batch]).purified for i in range(0, len(x), batch)])
            labels[p] = classifier(pur[p], batch)[0]
        diff = np.abs(pur["fp32"] - pur["bf16"]).reshape(len(x), -1).max(1)
        rows.append({"set": name, "n": int(len(x)),
                     **{f"acc_{p}": float((labels[p] == y).mean() * 100) for p in purifiers},
                     "labels_differ": int((labels["fp32"] != labels["bf16"]).sum()),
                     "max_abs_per_image": {"median": float(np.median(diff)), "p99": float(np.percentile(diff, 99)),
                                           "max": float(diff.max())}})
    return rows


def latency_table(purifiers: dict, images: np.ndarray, batches: list[int], rounds: int, min_runs: int,
                  max_time: float, warmup: int, echo) -> list[dict]:
    cells = {(p, b): [] for p in purifiers for b in batches}
    for k in range(rounds):
        for b in batches:
            x = images[:b]
            for p, purifier in purifiers.items():
                echo(f"round {k + 1}/{rounds}: batch {b}, {p}")
                for _ in range(warmup):
                    purifier.purify(x)
                cells[(p, b)].append(percentiles(time_runs(lambda: purifier.purify(x), min_runs, max_time)))
    rows = []
    for b in batches:
        row = {"batch": b}
        for p in purifiers:
            runs = cells[(p, b)]
            row[p] = {**min(runs, key=lambda c: c["p50_ms"]), "p50_rounds_ms": [c["p50_ms"] for c in runs]}
        row["bf16_vs_fp32_rounds"] = round_ratios(row["fp32"], row["bf16"])
        rows.append(row)
    return rows


def markdown(results: dict) -> str:
    out = ["| set | images | fp32 accuracy % | bf16 accuracy % | labels that differ | max abs per image: median / p99 / max |",
           "|---|---:|---:|---:|---:|---|"]
    for r in results["accuracy"]:
        m = r["max_abs_per_image"]
        out.append(f"| {r['set']} | {r['n']} | {r['acc_fp32']:.2f} | {r['acc_bf16']:.2f} | {r['labels_differ']} | "
                   f"{m['median']:.1e} / {m['p99']:.1e} / {m['max']:.2f} |")
    out += ["", "| batch | fp32 p50 ms | bf16 p50 ms | fp32 frames/s | bf16 frames/s | bf16 vs fp32 per round: median (min-max) |",
            "|---:|---:|---:|---:|---:|---:|"]
    for r in results["latency"]:
        f, b = r["fp32"], r["bf16"]
        out.append(f"| {r['batch']} | {f['p50_ms']:.2f} | {b['p50_ms']:.2f} | {r['batch'] * 1e3 / f['p50_ms']:.0f} | "
                   f"{r['batch'] * 1e3 / b['p50_ms']:.0f} | {format_rounds(r['bf16_vs_fp32_rounds'])} |")
    return "\n".join(out)


@click.command()
@model_options
@click.option("--adv", "adv", multiple=True, type=click.Path(dir_okay=False),
              help="adversarial test set (.npz of vaegan-attack; repeatable; default: adv/test_*.npz)")
@click.option("--n", type=click.IntRange(1), default=2000, show_default=True, help="images per set")
@click.option("--batches", default="1,8,64", show_default=True, help="batch sizes timed")
@click.option("--threads", type=int, default=None, help="inference threads (default: the CPU count)")
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True, help="interleaved timing rounds")
@click.option("--min-runs", type=click.IntRange(1), default=20, show_default=True)
@click.option("--max-time", type=float, default=2.0, show_default=True, help="seconds per cell and round")
@click.option("--quick", is_flag=True, help="smoke run: 64 images, batches 1,2, one round, few runs")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@friendly_errors
def main(artifacts, checkpoint, classifier, adv, n, batches, threads, rounds, min_runs, max_time, quick, json_path):
    from vaegan.runtime.artifacts import load_artifacts
    from vaegan.runtime.backend.openvino import bf16_status, openvino_version
    from vaegan.runtime.purify import make_classifier, make_purifier

    echo = lambda s: click.echo(s, err=True)  # noqa: E731 - progress on stderr, the tables on stdout
    threads = threads or os.cpu_count() or 1
    batch_list = [int(b) for b in batches.split(",") if b]
    warmup = 2
    if quick:
        n, batch_list, rounds, min_runs, max_time, warmup = min(n, 64), [1, 2], 1, 3, 0.2, 1
    if not batch_list or min(batch_list) < 1:
        raise click.UsageError("--batches: every batch must be >= 1")
    if max(batch_list) > n:
        raise click.UsageError(f"--batches: the largest batch ({max(batch_list)}) is timed on the first --n images: "
                               f"use --n >= {max(batch_list)}")
    ok, why = bf16_status()
    if not ok:
        click.echo(f"# bf16 fast path: skipped ({why})")
        if json_path:
            Path(json_path).write_text(json.dumps({"skipped": why}, indent=2) + "\n")
        return
    arts = export_if_needed(checkpoint, classifier, artifacts, echo)
    man = load_artifacts(arts)
    adv = list(adv) or sorted(str(p) for p in Path("adv").glob("test_*.npz"))
    sets = labelled_sets(n, adv, man.manifest["classifier_checkpoint"]["sha256"], echo)
    purifiers = {p: make_purifier(man, "fused", threads=threads, fast_path_engine="openvino", precision=p)
                 for p in PRECISIONS}
    clf = make_classifier(man, "fused", threads=threads)
    clf.runner.activate()
    for p in purifiers.values():
        p.activate()
    try:
        echo(f"accuracy over {', '.join(sets)} ...")
        acc = accuracy_table(purifiers, clf, sets, max(batch_list))
        lat = latency_table(purifiers, sets["clean"][0], batch_list, rounds, min_runs, max_time, warmup, echo)
        describe = {p: purifier.describe() for p, purifier in purifiers.items()}
    finally:
        for p in purifiers.values():
            p.deactivate()
        clf.runner.deactivate()
    results = {"settings": {"artifacts": str(arts), "n": n, "adversarial_sets": adv, "batches": batch_list,
                            "threads": threads, "rounds": rounds, "min_runs": min_runs, "max_time_s": max_time,
                            "openvino": openvino_version(), "load_avg": os.getloadavg()},
               "describe": describe, "accuracy": acc, "latency": lat}
    params = describe["fp32"]
    click.echo(f"# fused fast path on OpenVINO, fp32 vs bf16 (T = {params['steps']}, eta {params['eta']}, lam "
               f"{params['lam']}, one restart; {threads} threads; first {n} images of each set; timing: best p50 of "
               f"{rounds} interleaved round(s); load avg {os.getloadavg()[0]:.2f})\n")
    click.echo(markdown(results))
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
