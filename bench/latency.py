"""``python bench/latency.py``: every purifier backend side by side -- same weights, same real Fashion-MNIST test
images, same purification settings, same thread count.

Backends: ``eager`` (the torch reference ``vaegan.train.purifier.purify``, autograd), ``compile`` (torch.compile of
it, with ``--compile``; compile time reported apart), ``modular`` and ``fused`` (``vaegan.runtime`` on
onnxruntime), ``trt`` (the TensorRT purify engine; skipped with the reason when there is no GPU / TensorRT / engine).

Per cell (batch size x steps T): the first run's output is checked against the eager reference at the export
tolerance of the fused loop (``vaegan.export.specs.TOL_LOOP``); a backend that disagrees is reported, not timed. Then
warm-up, then timed runs until 20 runs or 5 s (whichever first; at least 3). The backends take turns for
``--rounds`` rounds (default 3) and each cell reports its best round (lowest p50): on a shared VM the speed of the
same process drifts over minutes, and interleaving makes that drift hit every backend alike. The
speed against eager is reported both ways: best round over best round, and per round (``speedups``). Each backend
runs in its own process (spawned), so peak RSS is the backend's own and no idle thread pool of another backend
competes for the cores; the torch-free runtime backends do not import torch there.

Cost model: FLOPs per purification counted from the ONNX graphs (``bench/flops.py``), achieved GFLOP/s, peak GFLOP/s
of this machine from a GEMM / conv micro-benchmark in the same run, and the Defense-GAN operating point (L = 200
steps, R = 10 restarts) for scale.

    python bench/latency.py --json results.json --plot latency.png
    python bench/latency.py --quick                     # smoke run, under a minute
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from vaegan.errors import friendly_errors
from vaegan.runtime.names import FAST_PATH_ENGINES

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# a sibling module, importable once HERE is on the path
from common import (_peak_rss_mb, call_isolated, export_if_needed, format_rounds, load_images,  # noqa: E402
                    model_options, percentiles, round_ratios, time_runs)

BACKENDS = ("eager", "compile", "modular", "fused", "trt")
REFERENCE = "eager"


# ----------------------------------------------------------------------------------------------- the backends

class Backend:
    """``setup()`` once, ``run(x, noise, steps) -> purified`` (numpy), ``teardown()``. ``skip`` is a reason or None."""

    name = "?"
    skip: str | None = None

    def setup(self) -> None: ...

    def describe(self) -> dict:
        """What the backend actually configured (the runtime's own ``describe()``), recorded in the results."""
        return {}

    def run(self, x: np.ndarray, noise: np.ndarray, steps: int) -> np.ndarray: ...

    def teardown(self) -> None: ...


class TorchBackend(Backend):
    def __init__(self, opts: dict, compiled: bool):
        self.opts = opts
        self.compiled = compiled
        self.name = "compile" if compiled else "eager"
        self.compile_s: float | None = None

    def setup(self) -> None:
        import torch

        from vaegan.train.checkpoint import load_model

        torch.set_num_threads(self.opts["threads"])
        self.torch = torch
        self.vg, _ = load_model(self.opts["checkpoint"], "vaegan")
        from vaegan.train.purifier import purify

        self.fn = purify
        self._cache_dir = None
        if self.compiled:
            # a cold compile every time: inductor's on-disk caches (FX graphs, generated C++) would make every run
            # after the first report a fraction of what a user's first call costs
            self._cache_dir = tempfile.mkdtemp(prefix="vaegan-inductor-")
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = self._cache_dir
            # the loop's torch.autograd.grad is a graph break by default (three graphs per call); traced, the whole
            # purification is one graph
            torch._dynamo.config.trace_autograd_ops = True
            self.fn = torch.compile(purify, dynamic=False)
        self._seen: set = set()

    def describe(self) -> dict:
        if not self.compiled:
            return {}
        return {"backend": "compile", "dynamic": False,
                "trace_autograd_ops": bool(self.torch._dynamo.config.trace_autograd_ops),
                "inductor_cache": "fresh per process (cold compile)"}

    def teardown(self) -> None:
        if self._cache_dir:
            shutil.rmtree(self._cache_dir, ignore_errors=True)

    def run(self, x, noise, steps):
        from dataclasses import replace

        cfg = replace(self.opts["cfg"], steps=steps, restarts=noise.shape[0])
        key = (x.shape[0], steps)
        t0 = time.perf_counter()
        with self.torch.no_grad():
            out = self.fn(self.vg, self.torch.from_numpy(x), cfg, noise=self.torch.from_numpy(noise)).x.numpy()
        if self.compiled and key not in self._seen:  # first call per shape = compile (+ one run)
            self._seen.add(key)
            self.compile_s = (self.compile_s or 0.0) + time.perf_counter() - t0
        return out


class RuntimeBackend(Backend):
    def __init__(self, opts: dict, kind: str):
        self.opts = opts
        self.name = kind

    def setup(self) -> None:
        from vaegan.runtime.artifacts import load_artifacts
        from vaegan.runtime.purify import PurifyParams, make_purifier

        arts = load_artifacts(self.opts["artifacts"])
        c = self.opts["cfg"]
        self.params = PurifyParams.from_settings(dataclasses.asdict(c))
        self.pur = make_purifier(arts, self.name, self.params, threads=self.opts["threads"],
                                 **({"shard": self.opts["shard"], "fast_path": self.opts.get("fast_path"),
                                     "fast_path_engine": self.opts.get("fast_path_engine", "auto")}
                                    if self.name == "fused" else {}))
        self.pur.activate()

    def describe(self) -> dict:
        return self.pur.describe()

    def run(self, x, noise, steps):
        from dataclasses import replace

        return self.pur.purify(x, noise=noise, params=replace(self.params, steps=steps)).purified

    def teardown(self) -> None:
        self.pur.deactivate()


def trt_skip_reason(artifacts) -> str | None:
    try:
        from vaegan.runtime.artifacts import load_artifacts
        from vaegan.runtime.purify import trt_usable

        ok, why = trt_usable(load_artifacts(artifacts))
    except Exception as e:  # noqa: BLE001 - any failure to probe TensorRT is a reason to skip it
        return f"{type(e).__name__}: {e}"
    return None if ok else why


def make_backend(name: str, opts: dict) -> Backend:
    if name in ("eager", "compile"):
        return TorchBackend(opts, compiled=name == "compile")
    if name in ("modular", "fused", "trt"):
        return RuntimeBackend(opts, name)
    raise ValueError(name)


# ----------------------------------------------------------------------------------------------- measurement

def agreement(got: np.ndarray, ref: np.ndarray, tol: dict) -> dict:
    """The export's one tolerance rule (``vaegan.export.validate.compare``: |got - ref| <= atol + rtol * max|ref|)."""
    from vaegan.export.validate import compare

    if got.shape != ref.shape:
        return {"ok": False, "max_abs": float("inf"), "why": f"shape {list(got.shape)} vs {list(ref.shape)}"}
    c = compare("purify", "purified", got, ref, tol, len(got))
    return {"ok": c.ok, "max_abs": c.max_abs}


def run_backend(name: str, opts: dict, cells: list[tuple[int, int]], images: np.ndarray, refs: dict,
                noise_for) -> dict:
    """Setup, then per cell: check against ``refs`` (if given), warm up, time. Returns a JSON-able dict."""
    os.environ.setdefault("OMP_NUM_THREADS", str(opts["threads"]))
    b = make_backend(name, opts)
    t0 = time.perf_counter()
    b.setup()
    res: dict = {"backend": name, "setup_s": time.perf_counter() - t0, "cells": [], "outputs": {},
                 "describe": b.describe()}
    perturb = opts.get("perturb") == name
    try:
        for n, steps in cells:
            x, noise = images[:n], noise_for(n)
            out = b.run(x, noise, steps)
            if perturb:  # testing hook: a backend whose output is wrong
                out = out + np.float32(1e-2)
            cell = {"batch": n, "steps": steps}
            if refs is not None:
                ag = agreement(out, refs[(n, steps)], opts["tol"])
                cell["agreement"] = ag
                if not ag["ok"]:
                    cell["status"] = "disagrees"
                    res["cells"].append(cell)
                    continue
            else:
                res["outputs"][f"{n}x{steps}"] = out
            for _ in range(opts["warmup"]):
                b.run(x, noise, steps)
            ts = time_runs(lambda: b.run(x, noise, steps), opts["min_runs"], opts["max_time"])
            cell.update(status="timed", **percentiles(ts))
            cell["per_frame_ms"] = cell["p50_ms"] / n
            cell["frames_per_s"] = 1e3 * n / cell["p50_ms"]
            res["cells"].append(cell)
    finally:
        b.teardown()
    if isinstance(b, TorchBackend) and b.compiled:
        res["compile_s"] = b.compile_s
    res["peak_rss_mb"] = _peak_rss_mb()
    return res


def _run_backend_spawned(name, opts, cells, images, refs, noise_all):
    return run_backend(name, opts, cells, images, refs, lambda n: noise_all[:, :n])


def best_of_rounds(rounds: list[dict]) -> dict:
    """One backend's results from several interleaved rounds: per cell, the round with the lowest p50 (the run least
    disturbed by other load on the machine; every round's p50 is kept as ``p50_rounds_ms``). The first round's
    non-timed cells (disagreements) stand; an error in any round is the result."""
    for r in rounds:
        if "error" in r:
            return r
    best = dict(rounds[0])
    cells = []
    for i, c in enumerate(rounds[0]["cells"]):
        same = [r["cells"][i] for r in rounds if i < len(r["cells"]) and r["cells"][i].get("status") == "timed"]
        if c.get("status") != "timed" or not same:
            cells.append(c)
            continue
        pick = dict(min(same, key=lambda t: t["p50_ms"]))
        pick["p50_rounds_ms"] = [t["p50_ms"] for t in same]
        cells.append(pick)
    best["cells"] = cells
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rounds)
    if rounds[0].get("compile_s") is not None:  # torch.compile: cold in every round (fresh inductor cache)
        best["compile_s"] = min(r["compile_s"] for r in rounds)
        best["compile_s_rounds"] = [r["compile_s"] for r in rounds]
    best["rounds"] = len(rounds)
    return best


def run_isolated(name, opts, cells, images, refs, noise_all) -> dict:
    msg = call_isolated(_run_backend_spawned, name, opts, cells, images, refs, noise_all)
    if msg[0] == "ok":
        return msg[1]
    return {"backend": name, "error": msg[1], "traceback": msg[2], "cells": []}


# ----------------------------------------------------------------------------------------------- machine peak

def measure_peak_gflops(threads: int, seconds: float = 1.0) -> dict:
    """Best sustained fp32 GFLOP/s of a large GEMM (torch.mm, 1024^2 .. 2048^2) and a conv (torch conv2d) at
    ``threads`` threads: the ceiling the purifier's FLOP rate is compared against."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for m in (1024, 2048):
        a, b = torch.randn(m, m), torch.randn(m, m)
        torch.mm(a, b)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            torch.mm(a, b)
            n += 1
        out[f"gemm_{m}"] = 2 * m ** 3 * n / (time.perf_counter() - t0) / 1e9
    x, w = torch.randn(64, 64, 28, 28), torch.randn(64, 64, 3, 3)
    torch.conv2d(x, w, padding=1)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.conv2d(x, w, padding=1)
        n += 1
    out["conv_64x64x28x28_k3"] = 2 * 64 * 64 * 64 * 28 * 28 * 9 * n / (time.perf_counter() - t0) / 1e9
    out["peak"] = max(out.values())
    return out


# ----------------------------------------------------------------------------------------------- orchestration

def speedups(results: dict) -> None:
    """Each timed cell against the eager reference's same cell: ``vs_eager``, best round over best round (the
    table's "vs eager"), and ``vs_eager_rounds``, round r over round r. The backends take turns, so the two p50s of
    one round were measured back to back: a change of the machine's speed between rounds (on a shared VM,
    within minutes) hits both, where the best rounds of two backends may come from different minutes."""
    eager = {(c["batch"], c["steps"]): c for c in results["backends"].get(REFERENCE, {}).get("cells", [])
             if c.get("status") == "timed"}
    for r in results["backends"].values():
        for c in r.get("cells", []):
            e = eager.get((c["batch"], c["steps"]))
            if c.get("status") != "timed" or e is None:
                continue
            c["vs_eager"] = e["p50_ms"] / c["p50_ms"]
            per = round_ratios(e, c)
            if per is not None:
                c["vs_eager_rounds"] = per


def markdown(results: dict) -> str:
    rows = ["| backend | batch | T | p50 ms | p90 ms | p99 ms | ms/frame | frames/s | GFLOP/s | % peak | vs eager | "
            "vs eager per round: median (min-max) | peak RSS MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["backends"].items():
        if "skipped" in r or "error" in r:
            rows.append(f"| {name} | - | - | {'skipped: ' + r['skipped'] if 'skipped' in r else 'error: ' + r['error']}"
                        " | | | | | | | | | |")
            continue
        for c in r["cells"]:
            if c["status"] != "timed":
                rows.append(f"| {name} | {c['batch']} | {c['steps']} | DISAGREES (max abs "
                            f"{c['agreement']['max_abs']:.2e}): not timed | | | | | | | | | |")
                continue
            speed = f"{c['vs_eager']:.2f}x" if "vs_eager" in c else "-"
            rounds = format_rounds(c.get("vs_eager_rounds"))
            rows.append(f"| {name} | {c['batch']} | {c['steps']} | {c['p50_ms']:.2f} | {c['p90_ms']:.2f} | "
                        f"{c['p99_ms']:.2f} | {c['per_frame_ms']:.3f} | {c['frames_per_s']:.0f} | "
                        f"{c['gflops']:.2f} | {c['pct_peak']:.1f} | {speed} | {rounds} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(rows)


def plot(results: dict, path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results["backends"].items():
        pts = sorted((c["batch"], c["p50_ms"]) for c in r.get("cells", [])
                     if c.get("status") == "timed" and c["steps"] == steps)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("p50 latency per batch (ms)")
    ax.set_title(f"purification latency, T = {steps}, {results['machine']['threads']} threads")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


@click.command(help=__doc__.split("\n\n")[0])
@model_options
@click.option("--batches", default="1,8,64", show_default=True)
@click.option("--steps", "steps_opt", default="5,10,50", show_default=True,
              help="T values; the checkpoint's operating point T is always added")
@click.option("--backends", default="eager,modular,fused,trt", show_default=True)
@click.option("--compile", "use_compile", is_flag=True, help="also time torch.compile of the reference")
@click.option("--threads", type=int, default=None, help="threads for every backend (default: CPU count)")
@click.option("--min-runs", type=int, default=20, show_default=True)
@click.option("--max-time", type=float, default=5.0, show_default=True, help="seconds of timed runs per cell")
@click.option("--warmup", type=int, default=2, show_default=True)
@click.option("--rounds", type=int, default=3, show_default=True,
              help="interleaved rounds over the backends (eager, fused, ..., eager, fused, ...); per cell the round "
                   "with the lowest p50 is reported, so a burst of outside load hits every backend alike")
@click.option("--dgan-steps", type=click.IntRange(min=1), default=20, show_default=True,
              help="Defense-GAN: steps actually timed (extrapolated linearly to 200)")
@click.option("--shard/--no-shard", default=None,
              help="fused: batch sharding over --threads one-thread sessions (default: the runtime's, on for > 1 "
                   "thread)")
@click.option("--fast-path/--no-fast-path", default=None,
              help="fused: the runtime's CPU fast path, the Loop unrolled at T (default: the runtime's, on for the "
                   "CPU)")
@click.option("--fast-path-engine", type=click.Choice(FAST_PATH_ENGINES), default="auto",
              show_default=True, help="fused: the fast path's engine (auto: openvino when installed and T <= 10)")
@click.option("--quick", is_flag=True, help="smoke run: batches 1,8, T = 2 and the default, 3 runs per cell")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None)
@click.option("--perturb", type=click.Choice(BACKENDS), default=None,
              help="(testing) add 1e-2 to this backend's output, to exercise the agreement check")
@friendly_errors
def main(checkpoint, classifier, artifacts, batches, steps_opt, backends, use_compile, threads, min_runs, max_time,
         warmup, rounds, dgan_steps, shard, fast_path, fast_path_engine, quick, json_path, plot_path, perturb):
    import torch  # the parent process only: references, FLOP counts, peak micro-benchmark

    import flops
    from vaegan.export.specs import TOL_LOOP
    from vaegan.train.checkpoint import load_raw, purify_config
    from vaegan.train.purifier import defense_gan_config

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    cfg = purify_config(load_raw(checkpoint))  # the checkpoint's operating point
    batches, steps_list = _ints(batches), _ints(steps_opt)
    if quick:
        batches, steps_list, min_runs, max_time, warmup, dgan_steps, rounds = [1, 8], [2], 3, 0.5, 1, 2, 1
    if rounds < 1:
        raise click.UsageError(f"--rounds must be >= 1 (got {rounds})")
    for out in (json_path, plot_path):  # before minutes of timing, not after
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
    steps_list = sorted(set(steps_list) | {cfg.steps})
    names = [b for b in backends.split(",") if b]
    if use_compile and "compile" not in names:
        names.insert(1, "compile")
    bad = [b for b in names if b not in BACKENDS]
    if bad:
        raise click.UsageError(f"unknown backend(s) {bad} (choose from {', '.join(BACKENDS)})")
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    names.sort(key=BACKENDS.index)
    echo = lambda s: click.echo(s, err=True)  # noqa: E731 - progress on stderr, the table on stdout

    arts = export_if_needed(checkpoint, classifier, artifacts, echo)
    from vaegan.runtime.artifacts import load_artifacts
    from vaegan.runtime.backend.openvino import openvino_version
    from vaegan.runtime.purify import PurifyParams, restart_noise

    man = load_artifacts(arts)
    L = man.latent_dim
    images, image_source = load_images(max(batches), man.contract)
    # the runtime's restart noise, fed to every backend alike (R = 1 at the shipped default: zeros)
    noise_all = restart_noise(PurifyParams.from_settings(dataclasses.asdict(cfg)), max(batches), L)
    cells = [(n, t) for n in batches for t in steps_list]
    opts = {"checkpoint": str(checkpoint), "artifacts": str(arts), "threads": threads, "cfg": cfg, "tol": TOL_LOOP,
            "min_runs": min_runs, "max_time": max_time, "warmup": warmup, "perturb": perturb, "shard": shard,
            "fast_path": fast_path, "fast_path_engine": fast_path_engine}

    results: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": threads,
                    "python": platform.python_version(), "torch": torch.__version__,
                    "onnxruntime": __import__("onnxruntime").__version__, "openvino": openvino_version(),
                    "load_avg": os.getloadavg()},
        "settings": {"checkpoint": str(checkpoint), "artifacts": str(arts), "images": image_source,
                     "batches": batches, "steps": steps_list, "purify": cfg.__dict__, "tolerance": TOL_LOOP,
                     "min_runs": min_runs, "max_time_s": max_time, "warmup": warmup, "rounds": rounds,
                     "quick": quick},
        "backends": {},
    }

    # reference outputs, computed once (the eager backend is then timed in its own process like the others)
    echo("reference outputs (torch eager) ...")
    ref_run = run_backend(REFERENCE, {**opts, "min_runs": 0, "max_time": 0, "warmup": 0, "perturb": None}, cells,
                          images, None, lambda n: noise_all[:, :n])
    refs = {(n, t): ref_run["outputs"][f"{n}x{t}"] for n, t in cells}

    timed, skipped = [], {}
    for name in names:
        why = trt_skip_reason(arts) if name == "trt" else None
        if why:
            skipped[name] = {"backend": name, "skipped": why, "cells": []}
            echo(f"trt: skipped ({why})")
        else:
            timed.append(name)
    per_round: dict[str, list] = {name: [] for name in timed}
    for k in range(rounds):
        for name in timed:
            if per_round[name] and "error" in per_round[name][-1]:
                continue
            echo(f"{name} (round {k + 1}/{rounds}) ...")
            r = run_isolated(name, opts, cells, images, refs, noise_all)
            r.pop("outputs", None)
            per_round[name].append(r)
            if "error" in r:
                echo(f"{name}: error: {r['error']}\n{r.get('traceback', '')}")
    for name in names:
        results["backends"][name] = skipped[name] if name in skipped else best_of_rounds(per_round[name])

    # cost model
    echo("FLOPs and machine peak ...")
    cost = flops.purify_flops(arts, L, batch=1)
    peak = measure_peak_gflops(threads, seconds=0.3 if quick else 1.5)
    results["cost"] = {"purify_flops_per_image": cost, "peak_gflops": peak}
    for r in results["backends"].values():
        for c in r.get("cells", []):
            f = flops.flops_at(cost, c["steps"]) * c["batch"]
            c["flops"] = f
            if c.get("status") == "timed":
                c["gflops"] = f / (c["p50_ms"] * 1e-3) / 1e9
                c["pct_peak"] = 100.0 * c["gflops"] / peak["peak"]
    speedups(results)

    # Defense-GAN operating point: FLOPs from the graphs, time from the eager reference at fewer steps
    dcfg = defense_gan_config()
    dg = flops.defense_gan_flops(arts, L, dcfg.steps, dcfg.restarts)
    from vaegan.train.checkpoint import load_model
    from vaegan.train.purifier import purify

    vg, _ = load_model(checkpoint, "vaegan")
    x1 = torch.from_numpy(images[:1])
    from dataclasses import replace

    times = {}
    for s in sorted({max(1, dgan_steps // 2), dgan_steps}):
        c = replace(dcfg, steps=s)
        purify(vg, x1, c)
        ts = []
        for _ in range(2 if quick else 5):
            t = time.perf_counter()
            purify(vg, x1, c)
            ts.append(time.perf_counter() - t)
        times[s] = float(np.median(ts))
    s0, s1 = min(times), max(times)  # equal when --dgan-steps 1 times a single step count
    slope = (times[s1] - times[s0]) / (s1 - s0) if s1 != s0 else 0.0
    proportional = slope <= 0  # one step count, or timing noise on a loaded machine: scale the longest run instead
    if proportional:
        slope = times[s1] / s1
    dgan_ms = 1e3 * (times[s1] + slope * (dcfg.steps - s1))
    ours_flops = flops.flops_at(cost, cfg.steps, cfg.restarts)
    fused = {(c["batch"], c["steps"]): c for c in results["backends"].get("fused", {}).get("cells", [])
             if c.get("status") == "timed"}
    ours1 = fused.get((1, cfg.steps))
    results["defense_gan"] = {
        "steps": dcfg.steps, "restarts": dcfg.restarts, "flops_per_frame": dg["total"],
        "ms_per_frame_eager_batch1": dgan_ms,
        "ms_measured": {str(k): 1e3 * v for k, v in times.items()},
        "extrapolated": f"timed {sorted(times)} steps at batch 1 (R = {dcfg.restarts} rows), "
                        f"{'proportional' if proportional else 'linear'} in steps to "
                        f"{dcfg.steps}",
        "ours": {"steps": cfg.steps, "restarts": cfg.restarts, "flops_per_frame": ours_flops,
                 "fused_ms_batch1": ours1["p50_ms"] if ours1 else None},
        "flops_ratio": dg["total"] / ours_flops,
        "time_ratio_vs_fused_batch1": dgan_ms / ours1["p50_ms"] if ours1 else None,
    }

    # what the fused backend did, from its own describe() (the runtime decides the default, not this script)
    fused_desc = results["backends"].get("fused", {}).get("describe", {})
    shards = fused_desc.get("shards", 1)
    results["settings"]["fused_shards"] = shards
    results["settings"]["fused_fast_path"] = fused_desc.get("fast_path")
    fast_engine = fused_desc.get("fast_path_engine")
    sharded = shards > 1
    notes = ([f"batches of 2+ split over {shards} one-thread sessions"
              + (" on the Loop graph" if fast_engine == "openvino" else "")] if sharded else []) + \
        ([f"one-restart calls on the Loop unrolled at T, {fast_engine}"] if fast_engine else [])
    click.echo(f"# purification latency ({image_source}; {threads} threads for every backend"
               + (f" (fused: {'; '.join(notes)})" if notes else "")
               + f"; best of {rounds} interleaved round(s); load avg {results['machine']['load_avg'][0]:.2f})\n")
    click.echo(markdown(results))
    click.echo(f"\nFLOPs per image: {cost['fixed'] / 1e6:.1f} M fixed + {cost['per_step'] / 1e6:.1f} M per step "
               f"(T = {cfg.steps}: {ours_flops / 1e6:.1f} MFLOP). Peak: {peak['peak']:.1f} GFLOP/s "
               f"({', '.join(f'{k} {v:.1f}' for k, v in peak.items() if k != 'peak')}).")
    comp = results["backends"].get("compile", {})
    if comp.get("compile_s") is not None:
        click.echo(f"torch.compile: {comp['compile_s']:.1f} s of compilation (first call per shape, cold inductor "
                   f"cache; best of {len(comp.get('compile_s_rounds', [0]))} round(s)), not in the table.")
    d = results["defense_gan"]
    click.echo(f"Defense-GAN (L = {d['steps']}, R = {d['restarts']}): {d['flops_per_frame'] / 1e9:.2f} GFLOP/frame, "
               f"{d['ms_per_frame_eager_batch1']:.0f} ms/frame (torch eager, batch 1; {d['extrapolated']}); "
               f"ours (T = {cfg.steps}): {ours_flops / 1e6:.0f} MFLOP/frame -> {d['flops_ratio']:.0f}x less compute"
               + (f", {d['time_ratio_vs_fused_batch1']:.0f}x less time (fused, batch 1)" if ours1 else "") + ".")
    skipped = {n: r["skipped"] for n, r in results["backends"].items() if "skipped" in r}
    for n, why in skipped.items():
        click.echo(f"{n}: skipped: {why}")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, default=str) + "\n")
    if plot_path:
        plot(results, Path(plot_path), cfg.steps)
    if any(c.get("status") == "disagrees" for r in results["backends"].values() for c in r.get("cells", [])):
        click.echo("some backends disagree with the torch reference (see DISAGREES rows)", err=True)


if __name__ == "__main__":
    main()
