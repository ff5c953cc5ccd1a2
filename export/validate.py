"""Validation of every exported graph (optimum-onnx style): structural checks, then onnxruntime against PyTorch at
batch 1 and at max-batch from the same file, one line per graph and output with ``[ok]`` / ``[x]``, max abs and
max rel error; all failures are collected and raised together.

Structural checks: ``onnx.checker`` (full check), inference-only (no ``ai.onnx.preview.training`` ops, no
training-mode BatchNorm / Dropout), every op in ``TRT_SUPPORTED_OPS``, weights as initializers (no large
``Constant`` nodes), symbolic dynamic axes on the inputs and outputs the spec names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from vaegan.errors import EXIT_FAILED
from vaegan.train.errors import VaeganError

# Ops of the default ONNX domain that the TensorRT ONNX parser supports (onnx-tensorrt docs/operators.md, TRT 10)
# and that these graphs may use. An op outside this list fails validation: check onnx-tensorrt before adding one.
TRT_SUPPORTED_OPS = frozenset({
    "Abs", "Add", "ArgMax", "ArgMin", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape",
    "Conv", "ConvTranspose", "Div", "Equal", "Exp", "Expand", "Flatten", "Gather", "GatherElements", "Gemm",
    "Greater", "GreaterOrEqual", "Identity", "LeakyRelu", "Less", "LessOrEqual", "Log", "Loop", "MatMul", "Max",
    "MaxPool", "Min", "Mul", "Neg", "Not", "Pad", "Pow", "Range", "Reciprocal", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceSum", "Relu", "Reshape", "Shape", "Sigmoid", "Slice", "Softplus", "Split", "Sqrt",
    "Squeeze", "Sub", "Tanh", "Tile", "Transpose", "Unsqueeze", "Where",
})
TRAINING_DOMAINS = ("ai.onnx.preview.training",)
MAX_CONSTANT_ELEMENTS = 64   # larger constants must be initializers


class ExportValidationError(VaeganError):
    """One or more exported graphs failed validation; the message lists every failure with its numbers."""

    exit_code = EXIT_FAILED  # the export ran; some of its outputs failed (vaegan.errors)


@dataclass
class OutputCheck:
    graph: str
    output: str
    batch: int
    max_abs: float
    max_rel: float
    ok: bool
    shape_ok: bool = True
    fp32_error: float | None = None  # iterative graphs: max|torch fp32 - torch fp64| (the reference's own error)
    kink_rows: tuple[int, ...] = ()  # gradient graphs: samples left out, at a LeakyReLU kink (``kink_rows``)
    kink_max_abs: float = 0.0        # their max|got - ref|, reported

    def line(self) -> str:
        mark = "[ok]" if self.ok else "[x]"
        return (f"  {mark} {self.graph}.{self.output} (batch {self.batch}): max abs {self.max_abs:.3e}, "
                f"max rel {self.max_rel:.3e}" + ("" if self.shape_ok else " SHAPE MISMATCH")
                + ("" if self.fp32_error is None else f" (vs torch fp64; torch fp32's own error {self.fp32_error:.3e})")
                + ("" if not self.kink_rows else
                   f" (sample(s) {list(self.kink_rows)} at a LeakyReLU kink left out: max abs {self.kink_max_abs:.3e})"))


@dataclass
class Report:
    checks: list[OutputCheck] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """Per graph and output: worst max abs / max rel over the batches checked (for the manifest)."""
        out: dict = {}
        for c in self.checks:
            d = out.setdefault(c.graph, {}).setdefault(c.output, {"max_abs": 0.0, "max_rel": 0.0, "ok": True})
            d["max_abs"] = max(d["max_abs"], c.max_abs)
            d["max_rel"] = max(d["max_rel"], c.max_rel)
            d["ok"] = d["ok"] and c.ok
            if c.kink_rows:
                d["kink_samples_left_out"] = d.get("kink_samples_left_out", 0) + len(c.kink_rows)
        return out

    def raise_if_failed(self) -> None:
        if self.failures:
            raise ExportValidationError(f"{len(self.failures)} validation failure(s):\n  " + "\n  ".join(self.failures))


# ---------------------------------------------------------------------------------------------------- structure

def _all_nodes(graph: onnx.GraphProto):
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _all_nodes(g)


def structural_problems(model: onnx.ModelProto, spec=None) -> list[str]:
    """Everything wrong with ``model`` that does not need running it (empty list = fine)."""
    name = spec.name if spec is not None else model.graph.name
    problems = []
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # onnx raises several types (ValidationError, InferenceError)
        problems.append(f"{name}: onnx.checker: {str(e).splitlines()[0]}")
    for imp in model.opset_import:
        if imp.domain in TRAINING_DOMAINS:
            problems.append(f"{name}: imports training domain {imp.domain}")
    if len(model.functions):
        problems.append(f"{name}: has {len(model.functions)} local functions (expected inlined)")
    init_names = {t.name for t in model.graph.initializer}
    for n in _all_nodes(model.graph):
        if n.domain not in ("", "ai.onnx"):
            problems.append(f"{name}: node {n.name} ({n.op_type}) in non-default domain {n.domain!r}")
            continue
        if n.op_type not in TRT_SUPPORTED_OPS:
            problems.append(f"{name}: op {n.op_type} (node {n.name}) is not in the TensorRT allowlist")
        if n.op_type in ("Dropout",) or (n.op_type == "BatchNormalization" and
                                         any(a.name == "training_mode" and a.i for a in n.attribute)):
            problems.append(f"{name}: training-mode op {n.op_type} (node {n.name})")
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR and np.prod(a.t.dims, dtype=np.int64) > MAX_CONSTANT_ELEMENTS:
                    problems.append(f"{name}: Constant node {n.name} holds {int(np.prod(a.t.dims))} elements "
                                    "(weights must be initializers)")
    problems += _weights_problems(model, name, init_names)
    if spec is not None:
        problems += _io_problems(model, spec)
    return problems


def _weights_problems(model: onnx.ModelProto, name: str, init_names: set[str]) -> list[str]:
    """Every Conv / ConvTranspose weight must be an initializer (a computed weight would mean the exporter did not
    see the parameters as constants)."""
    out = []
    for n in _all_nodes(model.graph):
        if n.op_type in ("Conv", "ConvTranspose") and n.input[1] not in init_names:
            out.append(f"{name}: {n.op_type} node {n.name} takes its weight {n.input[1]!r} from a computed value")
    return out


def _io_problems(model: onnx.ModelProto, spec) -> list[str]:
    out = []
    g = model.graph
    ins, outs = [i.name for i in g.input], [o.name for o in g.output]
    if ins != [i.name for i in spec.inputs]:
        out.append(f"{spec.name}: inputs {ins}, expected {[i.name for i in spec.inputs]}")
    if outs != [o.name for o in spec.outputs]:
        out.append(f"{spec.name}: outputs {outs}, expected {[o.name for o in spec.outputs]}")
    declared = {vi.name: vi for vi in list(g.input) + list(g.output)}
    for io in spec.inputs + spec.outputs:
        vi = declared.get(io.name)
        if vi is None:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(io.shape):
            out.append(f"{spec.name}.{io.name}: rank {len(dims)}, expected {len(io.shape)}")
            continue
        for ax, (d, want) in enumerate(zip(dims, io.shape)):
            if isinstance(want, str) and d.dim_param != want:
                got = d.dim_param or d.dim_value
                out.append(f"{spec.name}.{io.name}: axis {ax} is {got!r}, expected the symbolic {want!r} "
                           "(the trace size was baked in)")
            elif not isinstance(want, str) and d.dim_value != want:
                out.append(f"{spec.name}.{io.name}: axis {ax} is {d.dim_param or d.dim_value!r}, expected {want}")
    return out


# --------------------------------------------------------------------------------------------------- numerics

def compare(graph: str, name: str, got: np.ndarray, ref: np.ndarray, tol: dict, batch: int) -> OutputCheck:
    """``ok`` iff shapes match and every |got - ref| <= atol + rtol * max|ref| (the scale of the whole output).

    fp32 summation-order error in a reduction (a VJP, a T-step loop) is proportional to the magnitude of the
    terms summed, not to the element's own value, so an element-wise relative bound fails on elements that are
    near zero by cancellation. ``max_rel`` is max|got - ref| / max(max|ref|, atol)."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if got.shape != ref.shape:
        return OutputCheck(graph, name, batch, float("inf"), float("inf"), False, shape_ok=False)
    diff = np.abs(got - ref)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    max_rel = max_abs / max(scale, tol["atol"])
    finite = bool(np.isfinite(got).all())
    ok = finite and bool(np.all(diff <= tol["atol"] + tol["rtol"] * scale))
    return OutputCheck(graph, name, batch, max_abs, max_rel, ok)


def compare_iterative(graph: str, name: str, got: np.ndarray, ref32: np.ndarray, ref64: np.ndarray, tol: dict,
                      batch: int) -> OutputCheck:
    """For an iterative graph (the T-step loop), whose trajectory can amplify fp32 rounding: ``ok`` iff
    ``compare`` against the torch fp32 reference passes, or |got - ref64| <= atol + rtol * max|ref64| + 2 * e32
    everywhere, e32 = max|ref32 - ref64| being PyTorch's own fp32 error on the same inputs. So the export may be
    at most twice as far from exact arithmetic as PyTorch itself is, and never further than the fixed tolerance
    when the loop is well conditioned (e32 ~ 0)."""
    c = compare(graph, name, got, ref32, tol, batch)
    if c.ok or not c.shape_ok:
        return c
    r64 = np.asarray(ref64, dtype=np.float64)
    e32 = float(np.abs(np.asarray(ref32, dtype=np.float64) - r64).max())
    diff = np.abs(np.asarray(got, dtype=np.float64) - r64)
    scale = float(np.abs(r64).max())
    ok = bool(np.isfinite(got).all()) and bool(np.all(diff <= tol["atol"] + tol["rtol"] * scale + 2 * e32))
    max_abs = float(diff.max())
    return OutputCheck(graph, name, batch, max_abs, max_abs / max(scale, tol["atol"]), ok, fp32_error=e32)


def _float64_reference(spec, nets, feed: dict):
    """``spec.reference`` with every network and floating input in float64 (deep copies; ``nets`` untouched)."""
    import copy
    import dataclasses

    import torch

    nets64 = dataclasses.replace(nets, **{f.name: copy.deepcopy(getattr(nets, f.name)).double()
                                          for f in dataclasses.fields(nets) if getattr(nets, f.name) is not None})
    with torch.no_grad():
        return spec.reference(nets64, *_inputs_as(spec, feed, torch.float64))


def _inputs_as(spec, feed: dict, dtype) -> list:
    """``spec``'s inputs from ``feed`` in its order, the floating ones cast to ``dtype``."""
    return [feed[i.name].to(dtype) if feed[i.name].is_floating_point() else feed[i.name] for i in spec.inputs]


# A sample with a LeakyReLU input within this many times its own fp32 rounding error of 0 is at a kink
KINK_ROUNDING_FACTOR = 4.0


def kink_rows(spec, nets, feed: dict) -> list[int]:
    """The samples of ``feed`` at which some LeakyReLU input of the reference lies at the kink as far as fp32 can
    tell: |a64| <= KINK_ROUNDING_FACTOR x |a32 - a64| at the same element, where a64 is the fp64 reference's input
    and a32 the fp32 BatchNorm-folded network's (the arithmetic that was exported; another engine's rounding is of
    the same size, hence the factor). There the branch of the derivative (1 or the negative slope) is decided by
    rounding, so a gradient graph and torch may differ by up to (1 - slope) x the upstream gradient and both be
    right: the reason ``torch.autograd.gradcheck`` avoids non-differentiable points. Empty when the two runs do not
    call the same LeakyReLUs in the same order."""
    import copy

    import torch

    def inputs_of(vg, dtype):
        net = copy.deepcopy(vg).to(dtype)
        seen: list = []
        hooks = [m.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
                 for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)]
        try:
            with torch.no_grad():
                spec.reference(dataclasses.replace(nets, vg=net), *_inputs_as(spec, feed, dtype))
        finally:
            for h in hooks:
                h.remove()
        return seen

    a64, a32 = inputs_of(nets.vg, torch.float64), inputs_of(nets.vgf, torch.float32)
    if len(a64) != len(a32) or any(x.shape != y.shape for x, y in zip(a64, a32)):
        return []
    rows: set[int] = set()
    for x64, x32 in zip(a64, a32):
        near = (x64.abs() <= KINK_ROUNDING_FACTOR * (x32.double() - x64).abs()).flatten(1).any(1)
        rows.update(torch.nonzero(near).flatten().tolist())
    return sorted(rows)


def ort_session(path: str | Path):
    """An onnxruntime CPU session with the runtime's own session options, so validation checks what it will run."""
    import onnxruntime as ort

    from vaegan.runtime.backend.onnxrt.loader import SessionOptionsFromConfig

    return ort.InferenceSession(str(path), SessionOptionsFromConfig()(), providers=["CPUExecutionProvider"])


def check_user_classifier(path: Path, feeds_per_batch: dict[int, dict], num_classes: int, echo=print) -> list[str]:
    """The user's ONNX classifier has no torch reference: check that onnxruntime runs it at each batch and that it
    returns finite N x ``num_classes`` logits. Returns the failures (empty = fine)."""
    failures = []
    try:
        sess = ort_session(path)
    except Exception as e:  # onnxruntime raises its own exception types for a graph it cannot load
        return [f"classifier: onnxruntime cannot load the user's ONNX classifier ({str(e).splitlines()[0]})"]
    for b, feed in feeds_per_batch.items():
        try:
            out = sess.run(["logits"], {"x": feed["x"].numpy()})[0]
        except Exception as e:  # onnxruntime: InvalidArgument / Fail / RuntimeException
            failures.append(f"classifier (batch {b}): onnxruntime cannot run it ({str(e).splitlines()[0]})")
            continue
        ok = out.shape == (b, num_classes) and bool(np.isfinite(out).all())
        echo(f"  [{'ok' if ok else 'x'}] classifier.logits (batch {b}): user ONNX classifier, shape {list(out.shape)}"
             f" (no torch reference)")
        if not ok:
            failures.append(f"classifier (batch {b}): logits of shape {list(out.shape)} (expected [{b}, {num_classes}], "
                            f"finite)")
    return failures


def check_numerics(spec, path: Path, nets, feeds_per_batch: dict[int, dict], report: Report, echo=print,
                   runner=None, label: str = "", engine: str = "onnxruntime") -> None:
    """Run ``path`` and ``spec.reference`` in torch on the same inputs, for each batch size. ``runner``: the
    runtime's runner to check (not active; default: onnxruntime with the runtime's session options,
    ``ort_session(path)``), fed the inputs it declares; ``engine``: the runner's engine, as failures name it;
    ``label``: a suffix of the output names in the report (a variant of the same graph)."""
    import torch

    from vaegan.runtime.backend.onnxrt import OnnxrtRunner

    runner = runner if runner is not None else OnnxrtRunner(lambda: ort_session(path), name="onnxruntime")
    try:
        runner.activate()
    except Exception as e:  # onnx / onnxruntime / openvino raise their own error types
        report.failures.append(f"{spec.name}{label}: {engine} cannot load {path.name}: {str(e).splitlines()[0]}")
        echo(f"  [x] {spec.name}{label}: {engine} cannot load the file")
        return
    try:
        for batch, feed in feeds_per_batch.items():
            with torch.no_grad():
                ref = spec.reference(nets, *[feed[i.name] for i in spec.inputs])
            try:
                out = runner.infer_declared({k: v.numpy() for k, v in feed.items()})
            except Exception as e:  # the engine's runtime errors (e.g. a baked-in batch size)
                msg = str(e).splitlines()[0]
                report.failures.append(f"{spec.name}{label} (batch {batch}): {engine} failed: {msg}")
                echo(f"  [x] {spec.name}{label} (batch {batch}): {engine} failed: {msg}")
                continue
            _check_outputs(spec, nets, feed, [out[o.name] for o in spec.outputs], ref, batch, report, echo, label)
    finally:
        runner.deactivate()


def _check_outputs(spec, nets, feed, got, ref, batch, report: Report, echo, label: str = "") -> None:
    ref64 = None
    for k, (io, g, r) in enumerate(zip(spec.outputs, got, ref)):
        name = io.name + label
        c = compare(spec.name, name, g, r.numpy(), spec.tolerance, batch)
        if not c.ok and c.shape_ok and spec.kind == "fused":
            ref64 = ref64 if ref64 is not None else _float64_reference(spec, nets, feed)
            c = compare_iterative(spec.name, name, g, r.numpy(), ref64[k].numpy(), spec.tolerance, batch)
        if not c.ok and c.shape_ok and spec.kind == "gradient":
            c = _compare_off_kinks(c, spec, nets, feed, g, r.numpy())
        report.checks.append(c)
        echo(c.line())
        if not c.ok:
            report.failures.append(
                f"{spec.name}.{name} (batch {batch}): max abs {c.max_abs:.3e}, max rel {c.max_rel:.3e} "
                f"exceeds atol {spec.tolerance['atol']:g} / rtol {spec.tolerance['rtol']:g}"
                + ("" if c.fp32_error is None else f" + 2 x torch's fp32 error {c.fp32_error:.3e}")
                + ("" if c.shape_ok else f" (shape {np.shape(g)} vs {tuple(r.shape)})"))


def _compare_off_kinks(c: OutputCheck, spec, nets, feed, got, ref) -> OutputCheck:
    """A failed gradient check again without the samples at a LeakyReLU kink (``kink_rows``), when they are at most
    one in 20 (at least one) and not every sample: passes iff every other sample is within tolerance; the check
    names the samples left out and their error. More kinks than that, or an error elsewhere, stays a failure."""
    rows = kink_rows(spec, nets, feed)
    if not rows or len(rows) > max(1, c.batch // 20) or len(rows) >= np.shape(got)[0]:
        return c
    keep = np.ones(np.shape(got)[0], dtype=bool)
    keep[rows] = False
    rest = compare(c.graph, c.output, np.asarray(got)[keep], np.asarray(ref)[keep], spec.tolerance, c.batch)
    if not rest.ok:
        return c
    off = float(np.abs(np.asarray(got, dtype=np.float64)[~keep] - np.asarray(ref, dtype=np.float64)[~keep]).max())
    return dataclasses.replace(rest, kink_rows=tuple(rows), kink_max_abs=off)


def check_fast_path(spec, path: Path, nets, feeds_per_batch: dict[int, dict], report: Report, echo=print) -> None:
    """The fused backend's CPU fast path (``vaegan.runtime.purify.UnrolledFastPath``) as the runtime builds it:
    ``path`` unrolled at the feeds' T with their eta, lam and momentum bound, fed one restart, on each engine present
    (onnxruntime at graph optimisation ``all``; OpenVINO's CPU plugin when installed, else a line saying why not);
    against the same torch reference as the Loop graph. Its checks are the ``purify`` graph's outputs with a
    ``[fast path ...]`` suffix."""
    from vaegan.runtime.backend.openvino import openvino_status
    from vaegan.runtime.purify import FAST_PATH_BOUND, fast_path_label, fast_path_runner

    steps = {int(f["steps"]) for f in feeds_per_batch.values()}
    if len(steps) != 1 or any(f["noise"].shape[0] != 1 for f in feeds_per_batch.values()):
        raise ValueError("check_fast_path: one T and one restart for every batch")
    (t,) = steps
    bind = {k: float(next(iter(feeds_per_batch.values()))[k]) for k in FAST_PATH_BOUND}
    if any(float(f[k]) != v for f in feeds_per_batch.values() for k, v in bind.items()):
        raise ValueError(f"check_fast_path: one value of each of {', '.join(FAST_PATH_BOUND)} for every batch")
    ok, why = openvino_status()
    for engine in ("onnxruntime", "openvino"):
        label = f" [fast path: {fast_path_label(t, engine)}]"
        if engine == "openvino" and not ok:
            echo(f"  [-] {spec.name}{label}: not checked ({why})")
            continue
        check_numerics(spec, path, nets, feeds_per_batch, report, echo,
                       runner=fast_path_runner(path, t, engine, bind=bind), label=label, engine=engine)
