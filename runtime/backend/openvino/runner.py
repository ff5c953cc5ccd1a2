"""``OpenvinoRunner``: the runner interface over OpenVINO's CPU plugin, for one ONNX model.

OpenVINO runs a model fastest compiled for static shapes (the purifier's unrolled graph at batch 1 is slower with a
dynamic batch dimension, docs/benchmarks.md, levers), so the runner reads the ONNX model once at activation and
compiles it for each new input-shape signature on first use, keeping the ``cache`` most recently used.
``infer`` is thread-safe: concurrent calls take separate infer requests of the same compiled model.

OpenVINO drops graph inputs that no node uses (the purifier unrolled at T = 0 never reads eta or momentum), where
onnxruntime keeps them; the runner's inputs are the ONNX graph's declared ones, like ``OnnxrtRunner``'s, and a fed
input the compiled model lacks is checked like any other, then left out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ...errors import ArtifactError, BackendUnavailableError
from ..base import BaseRunner, TensorMeta, import_optional

INSTALL_HINT = "install it with `pip install 'vaegan[openvino]'` (make venv does)"


def import_openvino():
    return import_optional("openvino", "OpenVINO", INSTALL_HINT)


def openvino_version() -> str | None:
    """The installed OpenVINO's version, None when the package is missing (a report's metadata)."""
    try:
        return import_openvino().get_version()
    except BackendUnavailableError:
        return None


def openvino_status(core=None) -> tuple[bool, str]:
    """(usable, reason): the ``openvino`` package importable and its CPU plugin listed (asked of ``core``, an
    ``ov.Core``, when given: one is not free to make)."""
    try:
        ov = import_openvino()
    except BackendUnavailableError as e:
        return False, str(e)
    if "CPU" not in (core or ov.Core()).available_devices:
        return False, "OpenVINO has no CPU device on this machine"
    return True, f"OpenVINO {ov.get_version()}"


def bf16_status(core=None) -> tuple[bool, str]:
    """(usable, reason): OpenVINO installed and its CPU plugin computing in bf16 on this CPU (``BF16`` among its
    optimization capabilities: AVX512-BF16 or AMX). ``core``: an ``ov.Core`` to ask (default: a new one)."""
    try:
        core = core or import_openvino().Core()
    except BackendUnavailableError as e:
        return False, str(e)
    ok, why = openvino_status(core)
    if not ok:
        return False, why
    caps = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    if "BF16" not in caps:
        return False, f"this CPU has no bf16 arithmetic (OpenVINO's CPU capabilities: {', '.join(caps)}); use fp32"
    return True, "OpenVINO CPU bf16"


def _message(e: Exception) -> str:
    """OpenVINO's error text without its 'Exception from src/...cpp:NN:' source-location lines."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("Exception from src/")]
    return lines[0] if lines else str(e).strip()


def _declared_inputs(data: bytes) -> list[TensorMeta]:
    """The ONNX graph's inputs (initializers excluded) as ``TensorMeta``, in declaration order."""
    import onnx
    from onnx import helper

    g = onnx.load_model_from_string(data).graph
    inits = {t.name for t in g.initializer}
    metas = []
    for i in g.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        metas.append(TensorMeta(i.name, np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)), shape))
    return metas


# the runtime's precision names -> OpenVINO's INFERENCE_PRECISION_HINT
_HINTS = {"fp32": "f32", "bf16": "bf16"}


class OpenvinoRunner(BaseRunner):
    """Runs ``model`` (a path to an ONNX file, or a loader returning its serialized bytes, e.g. ``UnrolledFromOnnx``)
    on OpenVINO's CPU plugin with ``threads`` inference threads (None: OpenVINO's default), in ``precision``:
    ``fp32`` throughout by default (``INFERENCE_PRECISION_HINT f32``: on CPUs with AMX or AVX512-BF16 OpenVINO
    would otherwise compute in bf16), or ``bf16`` where the CPU has it (refused at activation where it does not:
    OpenVINO would silently run fp32). ``share_inputs`` (default on): OpenVINO reads the fed arrays in place when
    they are C-contiguous, writable and of the input's dtype (it copies any other; the call is synchronous, so they
    outlive it); its copying dispatch is a visible share of the T = 3 purifier at batch 1 through the runtime
    (docs/benchmarks.md, levers)."""

    def __init__(self, model, threads: int | None = None, name: str | None = None, cache: int = 4,
                 precision: str = "fp32", share_inputs: bool = True):
        path = Path(model) if isinstance(model, (str, Path)) else getattr(model, "path", None)
        super().__init__(name or f"openvino:{path.name if path is not None else 'model'}")
        if precision not in _HINTS:
            raise ValueError(f"precision {precision!r}: choose from {', '.join(_HINTS)}")
        self._model_src = model
        self.precision = precision
        self.share_inputs = bool(share_inputs)
        self.config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": _HINTS[precision], "NUM_STREAMS": 1,
                       **({"INFERENCE_NUM_THREADS": int(threads)} if threads else {})}
        self.cache = int(cache)
        self._lock = threading.Lock()
        self._compiled: OrderedDict = OrderedDict()  # shape signature -> (compiled model, idle infer requests)

    def activate_impl(self) -> None:
        ov = import_openvino()
        src = self._model_src
        core = ov.Core()
        if self.precision == "bf16":
            ok, why = bf16_status(core)
            if not ok:
                raise BackendUnavailableError(f"{self.name}: {why}")
        data = Path(src).read_bytes() if isinstance(src, (str, Path)) else src()
        self._core = core
        try:
            self.model = self._core.read_model(data, b"")
        except RuntimeError as e:  # OpenVINO's frontends raise RuntimeError subclasses with a multi-line message
            raise ArtifactError(f"{self.name}: OpenVINO cannot read the model: {_message(e)}") from None
        self.output_names = [o.get_any_name() for o in self.model.outputs]
        self._used = {i.get_any_name() for i in self.model.inputs}
        self._declared = _declared_inputs(data)

    def get_input_metadata_impl(self) -> list[TensorMeta]:
        return list(self._declared)

    def compiled_shapes(self) -> list[tuple]:
        """The input-shape signatures compiled so far (least recently used first)."""
        with self._lock:
            return list(self._compiled)

    def inference_precisions(self) -> list[str]:
        """The arithmetic each compiled model runs in, as OpenVINO reports it (``f32``, ``bf16``), least recently
        used first: what the plugin chose, not what was asked."""
        with self._lock:
            return [compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
                    for compiled, _ in self._compiled.values()]

    def _request(self, key: tuple):
        """An idle infer request of the model compiled for ``key`` (compiled now on first use)."""
        with self._lock:
            if key in self._compiled:
                self._compiled.move_to_end(key)
                compiled, idle = self._compiled[key]
                return idle.pop() if idle else compiled.create_infer_request()
        model = self.model.clone()
        model.reshape({name: list(shape) for name, shape in key})
        compiled = self._core.compile_model(model, "CPU", self.config)
        with self._lock:
            compiled, _ = self._compiled.setdefault(key, (compiled, []))  # another thread may have compiled it too
            while len(self._compiled) > self.cache:
                self._compiled.popitem(last=False)
            return compiled.create_infer_request()

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: a for name, a in feed.items() if name in self._used}
        key = tuple(sorted((name, a.shape) for name, a in feed.items()))
        req = self._request(key)
        try:
            req.infer(feed, share_inputs=self.share_inputs)
            return {name: req.get_tensor(name).data.copy() for name in self.output_names}
        finally:
            with self._lock:
                if key in self._compiled:
                    self._compiled[key][1].append(req)

    def deactivate_impl(self) -> None:
        with self._lock:
            self._compiled.clear()
        self.model = None
        self._core = None
        self._declared = []
