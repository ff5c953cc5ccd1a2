"""``python bench/levers.py``: what each speed lever gives the fused purifier (``purify.onnx`` on onnxruntime,
through the runtime's ``GraphPurifier``), A/B against what ``vaegan-run`` ships.

Each variant runs in **its own spawned process** (its own onnxruntime thread pools: no idle spinning pool of another
variant steals the cores), the variants take turns for ``--rounds`` rounds, and each cell reports its best round's
p50 and, beside the ratio of best rounds, the shipped variant's p50 over the variant's round by round ("per round":
median and range): on a shared VM the speed drifts over minutes, and interleaving makes the drift hit
every variant alike. Every variant's output is compared with the shipped graph's (max abs diff in the table, marked DISAGREES
outside the fused loop's export tolerance, ``TOL_LOOP`` under the export's rule ``validate.compare``) before it is timed.

Levers, each against the shipped configuration (export: stride-1 ConvTranspose rewritten as Conv; runtime: the
CPU fast path -- one-restart calls run the Loop unrolled at T on OpenVINO's CPU plugin when installed, else on
onnxruntime at graph optimisation ``all`` --, thread spinning on, batch sharding over ``--threads`` one-thread
sessions on the CPU for the Loop graph, OpenVINO reading the fed arrays in place). The fast path on onnxruntime is
the next row; switched off it gives the Loop graph at ``extended``; the other rows are
levers on that Loop graph: shipped levers switched off (no batch sharding; the exporter's stride-1 ConvTranspose kept), and levers not shipped (graph
optimisation ``all`` / ``basic``, spinning off, one thread, every ConvTranspose -> Conv + DepthToSpace, the
LeakyReLU-backward chain Greater/Cast/Mul/Add/Mul -> Sign/Clip/Mul, the Loop unrolled without ``all``).

Then, with OpenVINO, the fast path's own levers (eta, lam and momentum bound as constants; OpenVINO reading the fed
arrays in place) each switched off, timed in one process one call at a time in turn: levers of a few percent drown
in the drift between processes.

    python bench/levers.py --json levers.json
    python bench/levers.py --quick            # smoke run
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# a sibling script, importable once HERE is on the path
from common import (call_isolated, export_if_needed, format_rounds, load_images, model_options,  # noqa: E402
                    percentiles, round_ratios, time_runs)

from vaegan.errors import friendly_errors  # noqa: E402


@dataclass(frozen=True)
class Variant:
    """One configuration of the fused purifier: a purify graph and the runtime's session / sharding options.
    ``shipped=True`` builds it with ``make_purifier`` itself (what ``vaegan-run`` does), the reference."""

    name: str
    graph: str                        # path of a purify.onnx
    opt: str = "extended"             # onnxruntime graph optimisation level
    spin: bool = True                 # intra-op thread spinning
    threads: int | None = None        # None: --threads
    shard: bool = True                # batch sharding over `threads` one-thread sessions (batches of 2+)
    shipped: bool = False
    engine: str = "auto"              # shipped variants: the fast path's engine (make_purifier's fast_path_engine)


def build_purifier(v: Variant, artifacts: str, threads: int):
    """The runtime's GraphPurifier for variant ``v`` (the shipped one through ``make_purifier``)."""
    from vaegan.runtime.artifacts import load_artifacts
    from vaegan.runtime.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from vaegan.runtime.backend.onnxrt.loader import SessionOptionsFromConfig
    from vaegan.runtime.purify import GraphPurifier, PurifyParams, make_purifier

    arts = load_artifacts(artifacts)
    params = PurifyParams.from_manifest(arts)
    n = v.threads or threads
    if v.shipped:
        return make_purifier(arts, "fused", params, threads=n, fast_path_engine=v.engine)

    def runner(k):
        so = SessionOptionsFromConfig(k, allow_spinning=v.spin, graph_optimization=v.opt)
        return OnnxrtRunner(SessionFromOnnx(v.graph, providers=["CPUExecutionProvider"], session_options=so),
                            name=f"onnxrt:{v.name}")

    if v.shard and n > 1:
        return GraphPurifier(arts, params, runner(n), "fused", runner(1), shards=n)
    return GraphPurifier(arts, params, runner(n), "fused")


def leaky_backward_as_sign_clip(model):
    """Greater(x, 0) -> Cast -> Mul(., 1 - a) -> Add(., a) -> Mul(g, .)  ==>  Sign(x) -> Clip(., a, 1) -> Mul(g, .)."""
    import onnx
    from onnx import helper, numpy_helper

    g0 = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g0.initializer}
    n_done = [0]

    def scalar(name):
        return float(inits[name]) if name in inits and inits[name].size == 1 else None

    def rewrite(g):
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    rewrite(a.g)
        cons: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                cons.setdefault(i, []).append(n)
        drop, add = set(), {}
        for n in g.node:
            if n.op_type != "Greater" or scalar(n.input[1]) != 0.0:
                continue
            chain = [n]
            for op in ("Cast", "Mul", "Add", "Mul"):
                nxt = cons.get(chain[-1].output[0], [])
                if len(nxt) != 1 or nxt[0].op_type != op:
                    break
                chain.append(nxt[0])
            if len(chain) != 5:
                continue
            _, _, m1, a1, m2 = chain
            a = scalar(a1.input[1]) if a1.input[0] == m1.output[0] else scalar(a1.input[0])
            if a is None:
                continue
            n_done[0] += 1
            base = f"leaky_bwd_sc{n_done[0]}"
            lo, hi = f"{base}/lo", f"{base}/hi"
            model.graph.initializer.extend([numpy_helper.from_array(np.array(a, np.float32), lo),
                                            numpy_helper.from_array(np.array(1.0, np.float32), hi)])
            other = m2.input[0] if m2.input[1] == a1.output[0] else m2.input[1]
            add[id(n)] = [helper.make_node("Sign", [n.input[0]], [f"{base}/sign"], name=f"{base}/sign"),
                          helper.make_node("Clip", [f"{base}/sign", lo, hi], [f"{base}/clip"], name=f"{base}/clip"),
                          helper.make_node("Mul", [other, f"{base}/clip"], [m2.output[0]], name=f"{base}/mul")]
            drop.update(id(c) for c in chain)
        new = []
        for n in g.node:
            if id(n) in add:
                new += add[id(n)]
            elif id(n) not in drop:
                new.append(n)
        del g.node[:]
        g.node.extend(new)

    rewrite(g0)
    return model, n_done[0]


def time_variant(v: Variant, opts: dict, x: np.ndarray, ref: dict | None) -> dict:
    """In the variant's own process: build, check against ``ref`` (batch -> output), warm up, time each batch."""
    from dataclasses import replace as dc_replace

    from vaegan.export.validate import compare  # torch-free, unlike export.specs: opts["tol"] is its TOL_LOOP

    pur = build_purifier(v, opts["artifacts"], opts["threads"])
    pur.activate()
    res: dict = {"variant": v.name, "describe": pur.describe(), "cells": {}, "outputs": {}}
    try:
        p = dc_replace(pur.params, steps=opts["steps"])
        for n in opts["batches"]:
            xb = x[:n]
            out = pur.purify(xb, params=p).purified
            cell: dict = {}
            if ref is None:
                res["outputs"][n] = out
            else:
                check = compare("purify", "purified", out, ref[n], opts["tol"], n)  # the export's one rule
                cell.update(max_abs_diff=check.max_abs, agrees=check.ok)
            for _ in range(opts["warmup"]):
                pur.purify(xb, params=p)
            ts = time_runs(lambda: pur.purify(xb, params=p), opts["min_runs"], opts["max_time"])
            cell.update(percentiles(ts))
            res["cells"][n] = cell
    finally:
        pur.deactivate()
    return res


def run_isolated(v: Variant, opts: dict, x: np.ndarray, ref: dict | None) -> dict:
    msg = call_isolated(time_variant, v, opts, x, ref)
    if msg[0] == "ok":
        return msg[1]
    return {"variant": v.name, "error": msg[1], "traceback": msg[2], "cells": {}}


def make_variants(artifacts: Path, checkpoint, classifier, steps: int, tmp: Path, echo) -> list[Variant]:
    """The shipped configuration first, then each lever against it (graphs written to ``tmp``)."""
    import onnx

    from vaegan.export.core import purify_graph
    from vaegan.export.rewrite import convtranspose_as_conv, unroll_loop

    base = artifacts / "purify.onnx"

    def save(model, name):
        path = tmp / f"{name}.onnx"
        onnx.save(model, path)
        return str(path)

    echo("building the variants' graphs (the stride-1 variant re-exports the checkpoint) ...")
    no_s1 = save(purify_graph(checkpoint, classifier, stride1_as_conv=False), "no_stride1_rewrite")
    all_ct = save(convtranspose_as_conv(onnx.load(str(base))), "convtranspose_as_conv")
    m, k = leaky_backward_as_sign_clip(onnx.load(str(base)))
    lk = save(m, "leaky_sign_clip")
    um = unroll_loop(onnx.load(str(base)), steps)
    if "steps" not in {i.name for i in um.graph.input}:  # the runtime feeds T: an unused input (T is fixed)
        um.graph.input.append(onnx.helper.make_tensor_value_info("steps", onnx.TensorProto.INT64, []))
    unrolled = save(um, "unrolled")
    b = str(base)
    from vaegan.runtime.purify import resolve_fast_path_engine

    engine = resolve_fast_path_engine("auto")
    rows = [Variant(f"shipped (runtime default: fast path = Loop unrolled at T = {steps} on {engine}; spinning on, "
                    "batch sharding of the Loop graph, stride-1 rewrite)", b, shipped=True)]
    if engine == "openvino":
        rows.append(Variant("- OpenVINO: fast path on onnxruntime at opt all (with batch sharding)", b, shipped=True,
                            engine="onnxruntime"))
    return rows + [
        Variant("- fast path off (the Loop graph at opt extended; the rows below change this one)", b),
        Variant("Loop graph: - batch sharding off", b, shard=False),
        Variant("Loop graph: - stride-1 ConvTranspose -> Conv rewrite off (exporter's graph)", no_s1),
        Variant("Loop graph: + graph opt all (NCHWc layout)", b, opt="all"),
        Variant("Loop graph: + graph opt basic", b, opt="basic"),
        Variant("Loop graph: + spinning off", b, spin=False),
        Variant("Loop graph: + 1 thread (no sharding)", b, threads=1, shard=False),
        Variant("Loop graph: + every ConvTranspose -> Conv + DepthToSpace", all_ct),
        Variant(f"Loop graph: + LeakyReLU bwd -> Sign/Clip/Mul ({k} sites)", lk),
        Variant(f"Loop graph: + unrolled (T = {steps}) at opt extended", unrolled),
    ]


def paired_with_shipped(variants: list[dict], batches: list[int]) -> None:
    """Each variant's cells get ``vs_shipped_rounds``: the shipped variant's p50 over the variant's, round r over
    round r (``common.round_ratios``). The variants take turns within a round, so a drift of the machine's speed
    between rounds hits both sides of one ratio, where the best rounds ("vs shipped") may come from different
    minutes; within a round the variants still run minutes apart, so the pairing narrows the spread, not removes it."""
    base = variants[0]
    if "error" in base:
        return
    for v in variants:
        if "error" in v:
            continue
        for n in batches:
            per = round_ratios(base["cells"][n], v["cells"][n])
            if per is not None:
                v["cells"][n]["vs_shipped_rounds"] = per


# the fast path's own levers, switched off one at a time (OpenVINO): timed call by call in turn (below)
FAST_PATH_TOGGLES = {"shipped fast path": {},
                     "- eta, lam, momentum fed as inputs (not bound)": {"bind_settings": False},
                     "- inputs copied (share_inputs off)": {"share_inputs": False},
                     "- both": {"bind_settings": False, "share_inputs": False}}


def time_fast_path_interleaved(opts: dict, x: np.ndarray) -> dict:
    """In one process: the shipped purifier and copies with its fast-path levers switched off
    (``FAST_PATH_TOGGLES``), one call each in turn, until ``opts["interleave_s"]`` seconds per batch; the median
    per variant. Levers of a few percent drown in the VM's drift between processes (the table above); calls
    interleaved one by one share every minute of it. OpenVINO only: its requests do not spin between calls, so
    idle variants leave the cores alone (onnxruntime's spinning pools would not)."""
    from vaegan.runtime.artifacts import load_artifacts
    from vaegan.runtime.backend.openvino import OpenvinoRunner
    from vaegan.runtime.purify import PurifyParams, make_purifier

    arts = load_artifacts(opts["artifacts"])
    params = PurifyParams.from_manifest(arts, steps=opts["steps"])
    purs = {}
    try:
        for name, flags in FAST_PATH_TOGGLES.items():
            pur = make_purifier(arts, "fused", params, threads=opts["threads"], fast_path_engine="openvino")
            pur.fast_path.bind_settings = flags.get("bind_settings", True)
            pur.activate()
            purs[name] = pur
            for r in pur.runners.values():
                if isinstance(r, OpenvinoRunner):
                    r.share_inputs = flags.get("share_inputs", True)
        cells: dict = {name: {} for name in purs}
        for n in opts["batches"]:
            xb = x[:n]
            ref = None
            for name, pur in purs.items():
                out = pur.purify(xb).purified.astype(np.float64)
                ref = out if ref is None else ref
                cells[name][n] = {"max_abs_diff": float(np.abs(out - ref).max())}
                for _ in range(opts["warmup"] + 2):
                    pur.purify(xb)
            ts: dict = {name: [] for name in purs}
            end = time.perf_counter() + opts["interleave_s"]
            while time.perf_counter() < end or len(ts["shipped fast path"]) < 3:
                for name, pur in purs.items():
                    t = time.perf_counter()
                    pur.purify(xb)
                    ts[name].append(time.perf_counter() - t)
            for name in purs:
                cells[name][n].update(p50_ms=float(np.median(ts[name]) * 1e3), calls=len(ts[name]))
    finally:
        for pur in purs.values():
            pur.deactivate()
    return {"variants": [{"variant": name, "config": FAST_PATH_TOGGLES[name], "cells": cells[name]}
                         for name in FAST_PATH_TOGGLES]}


def markdown_interleaved(res: dict, batches: list[int]) -> str:
    rows = ["| fast-path variant | " + " | ".join(f"batch {n} ms | time vs shipped" for n in batches)
            + " | max abs diff |", "|---|" + "---:|---:|" * len(batches) + "---:|"]
    base = res["variants"][0]["cells"]
    for v in res["variants"]:
        c = v["cells"]
        cells = [f"{c[n]['p50_ms']:.3f} | {c[n]['p50_ms'] / base[n]['p50_ms']:.2f}x" for n in batches]
        diff = max(c[n]["max_abs_diff"] for n in batches)
        rows.append(f"| {v['variant']} | " + " | ".join(cells) + f" | {diff:.1e} |")
    return "\n".join(rows)


def markdown(results: dict) -> str:
    batches = results["settings"]["batches"]
    rows = ["| variant | " + " | ".join(f"batch {n} ms | vs shipped | per round" for n in batches) + " | max abs diff |",
            "|---|" + "---:|---:|---:|" * len(batches) + "---:|"]
    base = results["variants"][0]["cells"]
    for r in results["variants"]:
        if "error" in r:
            rows.append(f"| {r['variant']} | error: {r['error']} |" + " |" * (3 * len(batches)))
            continue
        cells = []
        for n in batches:
            c = r["cells"][n]
            cells.append(f"{c['p50_ms']:.2f} | {base[n]['p50_ms'] / c['p50_ms']:.2f}x | "
                         f"{format_rounds(c.get('vs_shipped_rounds'))}")
        diff = max((c.get("max_abs_diff", 0.0) for c in r["cells"].values()), default=0.0)
        # timed anyway: the number says how far it is
        flag = "" if all(c.get("agrees", True) for c in r["cells"].values()) else " DISAGREES"
        rows.append(f"| {r['variant']} | " + " | ".join(cells) + f" | {diff:.1e}{flag} |")
    return "\n".join(rows)


@click.command()
@model_options
@click.option("--steps", type=int, default=None, help="T (default: the manifest's shipped default)")
@click.option("--batches", default="1,8,64", show_default=True)
@click.option("--threads", type=int, default=None, help="default: the CPU count")
@click.option("--rounds", type=int, default=3, show_default=True, help="interleaved rounds (best of each)")
@click.option("--min-runs", type=int, default=20, show_default=True)
@click.option("--max-time", type=float, default=3.0, show_default=True, help="seconds per cell and round")
@click.option("--interleave-time", type=float, default=6.0, show_default=True,
              help="seconds per batch of the fast path's interleaved A/B (OpenVINO)")
@click.option("--quick", is_flag=True, help="smoke run: batches 1,2, one round, few runs")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@friendly_errors
def main(artifacts, checkpoint, classifier, steps, batches, threads, rounds, min_runs, max_time, interleave_time, quick,
         json_path):
    echo = lambda s: click.echo(s, err=True)  # noqa: E731 - progress on stderr, the table on stdout
    threads = threads or os.cpu_count() or 1
    batch_list = [int(b) for b in batches.split(",") if b]
    warmup = 2
    if quick:
        batch_list, rounds, min_runs, max_time, warmup, interleave_time = [1, 2], 1, 3, 0.2, 1, 0.2
    if rounds < 1 or not batch_list or min(batch_list) < 1:
        raise click.UsageError("--rounds and every batch must be >= 1")
    arts = export_if_needed(checkpoint, classifier, artifacts, echo)
    defaults = json.loads((arts / "manifest.json").read_text())["purify_defaults"]
    steps = defaults["steps"] if steps is None else steps
    from vaegan.runtime.artifacts import load_artifacts

    x, source = load_images(max(batch_list), load_artifacts(arts).contract)  # random images where no test images
    from vaegan.export.specs import TOL_LOOP

    opts = {"artifacts": str(arts), "threads": threads, "steps": steps, "batches": batch_list, "warmup": warmup,
            "min_runs": min_runs, "max_time": max_time, "interleave_s": interleave_time, "tol": TOL_LOOP}
    with tempfile.TemporaryDirectory(prefix="levers-") as tmp:
        variants = make_variants(arts, checkpoint, classifier, steps, Path(tmp), echo)
        echo("reference outputs (the shipped configuration) ...")
        ref = run_isolated(variants[0], {**opts, "min_runs": 0, "max_time": 0, "warmup": 0}, x, None)
        if "error" in ref:
            raise click.ClickException(f"the shipped configuration failed: {ref['error']}\n{ref['traceback']}")
        ref_out = {n: o.astype(np.float64) for n, o in ref["outputs"].items()}
        per: dict[str, list] = {v.name: [] for v in variants}
        for k in range(rounds):
            for v in variants:
                if per[v.name] and "error" in per[v.name][-1]:
                    continue
                echo(f"round {k + 1}/{rounds}: {v.name}")
                per[v.name].append(run_isolated(v, opts, x, ref_out))
    out = []
    for v in variants:
        runs = per[v.name]
        err = next((r for r in runs if "error" in r), None)
        if err:
            out.append(err)
            continue
        best = {"variant": v.name, "config": asdict(v), "describe": runs[0]["describe"], "cells": {}}
        for n in batch_list:
            pick = min((r["cells"][n] for r in runs), key=lambda c: c["p50_ms"])
            best["cells"][n] = {**pick, "p50_rounds_ms": [r["cells"][n]["p50_ms"] for r in runs]}
        out.append(best)
    paired_with_shipped(out, batch_list)
    from vaegan.runtime.purify import resolve_fast_path_engine

    if resolve_fast_path_engine("auto") == "openvino":
        echo("the fast path's levers, call by call in turn ...")
        msg = call_isolated(time_fast_path_interleaved, opts, x)
        inter = msg[1] if msg[0] == "ok" else {"error": msg[1], "traceback": msg[2]}
    else:
        inter = {"skipped": "the fast path runs on onnxruntime here (no OpenVINO): its levers are OpenVINO's"}
    results = {"settings": {"artifacts": str(arts), "images": source, "steps": steps, "batches": batch_list,
                            "threads": threads, "rounds": rounds, "min_runs": min_runs, "max_time_s": max_time,
                            "interleave_s": interleave_time, "load_avg": os.getloadavg()},
               "variants": out, "fast_path_interleaved": inter}
    click.echo(f"# fused purifier levers ({source}, T = {steps}, {threads} threads; each variant in its own process, "
               f"best p50 of {rounds} interleaved round(s); load avg {os.getloadavg()[0]:.2f})\n")
    click.echo(markdown(results))
    click.echo(f"\n# the fast path's levers (OpenVINO), one process, one call of each variant in turn for "
               f"{interleave_time:g} s per batch; median per call\n")
    if "variants" in inter:
        click.echo(markdown_interleaved(inter, batch_list))
    else:
        click.echo(inter.get("skipped") or f"error: {inter['error']}")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, default=str) + "\n")
    if any("error" in r for r in out) or "error" in inter:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
