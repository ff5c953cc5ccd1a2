"""The fused loop unrolled: ``purify.onnx`` with its for-style Loop replaced by T inlined copies of the body.

The runtime's CPU fast path (``runtime/purify.py``, ``make_purifier(..., fast_path=True)``): for its configured T
and one restart, the fused backend runs the unrolled graph under onnxruntime's ``all`` optimisation level, whose
NCHWc layout kernels only pay off once the layout reorders can be hoisted across iterations (inside the Loop body
they are paid again every step). docs/benchmarks.md (levers) has the A/B; ``vaegan-export`` validates this path at
the shipped T against PyTorch. The fast path also binds the loop's scalar settings (eta, lam, momentum) as constants
(``bind_inputs``). Needs the ``onnx`` package (a dependency of the distribution), not torch.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper


def unroll_loop(model: onnx.ModelProto, steps: int) -> onnx.ModelProto:
    """``purify.onnx`` with its for-style Loop replaced by ``steps`` inlined copies of the body (T fixed; the
    ``steps`` input is removed; the other inputs and the outputs are unchanged)."""
    import copy

    if steps < 0:
        raise ValueError(f"steps must be >= 0 (got {steps})")
    m = copy.deepcopy(model)
    g = m.graph
    loops = [n for n in g.node if n.op_type == "Loop"]
    if len(loops) != 1 or loops[0].input[0] != "steps":
        raise ValueError("expected purify.onnx: one Loop whose trip count is the 'steps' input")
    nodes: list = []
    for n in g.node:
        if n.op_type != "Loop":
            nodes.append(n)
            continue
        body = next(a.g for a in n.attribute if a.name == "body")
        b_in = [i.name for i in body.input]     # iteration, cond, carried...
        b_out = [o.name for o in body.output]   # cond, carried...
        local = set(b_in) | {o for bn in body.node for o in bn.output}
        carried = list(n.input[2:])
        for t in range(steps):
            ren = dict(zip(b_in[2:], carried))
            for bn in body.node:
                if b_in[1] in bn.input or b_in[0] in bn.input:
                    if bn.output[0] in b_out[:1]:
                        continue  # the condition pass-through
                    raise ValueError(f"loop body node {bn.name} uses the iteration count or condition")
                n2 = copy.deepcopy(bn)
                ins = ["" if not i else ren[i] if i in ren else f"unroll{t}/{i}" if i in local else i for i in bn.input]
                del n2.input[:]
                del n2.output[:]
                n2.input.extend(ins)
                n2.output.extend(f"unroll{t}/{o}" for o in bn.output)
                n2.name = f"unroll{t}/{bn.name}"
                nodes.append(n2)
            carried = [f"unroll{t}/{o}" for o in b_out[1:]]
        for src, dst in zip(carried, n.output):
            nodes.append(helper.make_node("Identity", [src], [dst], name=f"unrolled/{dst}"))
    del g.node[:]
    g.node.extend(nodes)
    keep_inputs = [i for i in g.input if i.name != "steps"]
    del g.input[:]
    g.input.extend(keep_inputs)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return m


def bind_inputs(model: onnx.ModelProto, values: dict[str, float], *, inplace: bool = False) -> onnx.ModelProto:
    """``model`` with the scalar float graph inputs named in ``values`` replaced by float32 constants (initializers of
    the same name): the fast path's eta, lam and momentum, fixed like T. OpenVINO folds the constants into the
    step's arithmetic (docs/benchmarks.md, levers); the function is the
    graph's at those inputs. A copy unless ``inplace`` (for a model the caller made and owns, as the loader's)."""
    import copy

    import numpy as np
    from onnx import numpy_helper

    m = model if inplace else copy.deepcopy(model)
    g = m.graph
    inputs = {i.name: i for i in g.input}
    for name in values:
        i = inputs.get(name)
        if i is None:
            raise ValueError(f"bind_inputs: the graph has no input {name!r}")
        t = i.type.tensor_type
        if t.elem_type != onnx.TensorProto.FLOAT or len(t.shape.dim) != 0:
            raise ValueError(f"bind_inputs: input {name!r} is not a float32 scalar")
    keep = [i for i in g.input if i.name not in values]
    del g.input[:]
    g.input.extend(keep)
    g.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), name) for name, v in values.items())
    return m


class UnrolledFromOnnx:
    """Loader (Polygraphy style): ``path`` -> ``unroll_loop(onnx.load(path), steps)`` (then ``bind_inputs`` with
    ``bind``, when given) as serialized bytes, for ``SessionFromOnnx(..., model=UnrolledFromOnnx(path, steps))``."""

    def __init__(self, path, steps: int, bind: dict[str, float] | None = None):
        self.path = Path(path)
        self.steps = int(steps)
        self.bind = dict(bind or {})
        self._bytes: bytes | None = None

    def __call__(self) -> bytes:
        if self._bytes is None:  # several sessions (the shards') share one loader
            try:
                m = unroll_loop(onnx.load(str(self.path)), self.steps)
            except Exception as e:  # protobuf DecodeError, a graph without the Loop...: the file is not purify.onnx
                from .loader import unloadable

                raise unloadable(self.path, "the fast path's unroller", e) from None
            if self.bind:
                m = bind_inputs(m, self.bind, inplace=True)  # unroll_loop's copy: no second one
            self._bytes = m.SerializeToString()
        return self._bytes
