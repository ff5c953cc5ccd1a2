"""``python bench/levers.py --artifacts DIR``: what each speed lever gives the fused purifier (``purify.onnx`` on
onnxruntime), A/B against the runtime's default session, interleaved in one process so both see the same load.

Levers: graph optimisation level, thread spinning, the ConvTranspose -> Conv + DepthToSpace rewrite
(``vaegan.export.rewrite``), the LeakyReLU-backward chain Greater/Cast/Mul/Add/Mul -> Sign/Clip/Mul, the Loop unrolled at a fixed T. Every variant's
output is checked against the baseline's (max abs diff printed) before it is timed.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import click
import numpy as np


def session(path, threads: int, opt: str = "extended", spin: bool = True):
    """An onnxruntime CPU session with the runtime's own options builder (so the baseline is what vaegan-run uses)."""
    import onnxruntime as ort

    from vaegan.runtime.backend.onnxrt.loader import SessionOptionsFromConfig

    so = SessionOptionsFromConfig(threads, allow_spinning=spin, graph_optimization=opt)()
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


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


def feed(x, n, steps, L, defaults: dict):
    return {"x": x[:n], "noise": np.zeros((1, n, L), np.float32), "steps": np.array(steps, np.int64),
            "eta": np.array(defaults["eta"], np.float32), "lam": np.array(defaults["lam"], np.float32),
            "momentum": np.array(defaults["momentum"], np.float32)}


@click.command()
@click.option("--artifacts", type=click.Path(file_okay=False), required=True)
@click.option("--steps", type=int, default=None, help="T (default: the manifest's shipped default)")
@click.option("--batches", default="1,64", show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--rounds", type=int, default=5, show_default=True, help="interleaved rounds (best of each)")
def main(artifacts, steps, batches, threads, rounds):
    import onnx

    from vaegan.export.rewrite import convtranspose_as_conv, unroll_loop

    threads = threads or os.cpu_count() or 1
    arts = Path(artifacts)
    base = arts / "purify.onnx"
    defaults = json.loads((arts / "manifest.json").read_text())["purify_defaults"]
    steps = defaults["steps"] if steps is None else steps
    L = next(d.dim_value for d in onnx.load(str(base)).graph.input[1].type.tensor_type.shape.dim if d.dim_value)
    tmp = Path(tempfile.mkdtemp(prefix="levers-"))
    ct = tmp / "convtranspose_as_conv.onnx"
    onnx.save(convtranspose_as_conv(onnx.load(str(base))), ct)
    lk = tmp / "leaky_sign_clip.onnx"
    m, k = leaky_backward_as_sign_clip(onnx.load(str(base)))
    onnx.save(m, lk)
    both = tmp / "both.onnx"
    onnx.save(leaky_backward_as_sign_clip(convtranspose_as_conv(onnx.load(str(base))))[0], both)
    unrolled = tmp / "unrolled.onnx"
    onnx.save(unroll_loop(onnx.load(str(base)), steps), unrolled)
    variants = {
        "baseline (runtime default: opt extended, spinning on)": session(base, threads),
        "graph opt all (NCHWc layout)": session(base, threads, opt="all"),
        "graph opt basic": session(base, threads, opt="basic"),
        "spinning off": session(base, threads, spin=False),
        "ConvTranspose -> Conv + DepthToSpace": session(ct, threads),
        f"LeakyReLU bwd -> Sign/Clip/Mul ({k} sites)": session(lk, threads),
        "both rewrites": session(both, threads),
        "1 thread": session(base, 1),
        f"Loop unrolled (T = {steps} fixed at export)": session(unrolled, threads),
    }
    from vaegan.train.data import test_subset
    from vaegan.train.errors import VaeganError

    try:
        x = test_subset(64)[0].numpy().astype(np.float32)
    except VaeganError as e:  # no Fashion-MNIST here: random images time the same
        click.echo(f"note: timing on random images ({e})", err=True)
        x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
    click.echo(f"| lever | batch | T | p50-of-best ms | vs baseline | max abs diff |\n|---|---:|---:|---:|---:|---:|")
    for n in [int(b) for b in batches.split(",")]:
        f = feed(x, n, steps, L, defaults)
        feeds = {name: {k: v for k, v in f.items() if k in {i.name for i in s.get_inputs()}}
                 for name, s in variants.items()}
        ref = next(iter(variants.values())).run(None, f)[0]
        diffs = {name: float(np.abs(s.run(None, feeds[name])[0] - ref).max()) for name, s in variants.items()}
        best = {name: float("inf") for name in variants}
        for _ in range(rounds):
            for name, s in variants.items():
                t0 = time.perf_counter()
                s.run(None, feeds[name])
                best[name] = min(best[name], time.perf_counter() - t0)
        b0 = next(iter(best.values()))
        for name in variants:
            click.echo(f"| {name} | {n} | {steps} | {1e3 * best[name]:.2f} | {b0 / best[name]:.2f}x | "
                       f"{diffs[name]:.1e} |")


if __name__ == "__main__":
    main()
