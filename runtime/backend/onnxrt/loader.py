"""Lazy loaders for onnxruntime sessions (Polygraphy style: a loader is a callable that builds the thing).

Execution providers are always chosen explicitly: ``cpu``, ``cuda``, ``tensorrt`` (or onnxruntime's full names).
A provider that this onnxruntime build lacks is an error that lists the available ones; a session that silently
fell back to another provider (onnxruntime does that when e.g. the CUDA libraries fail to load) is an error too.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import ArtifactError, BackendUnavailableError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def resolve_providers(providers) -> list[str]:
    """Short names (``cpu``, ``cuda``, ``tensorrt``) or full names -> onnxruntime provider names; a provider that is
    not available is a ``BackendUnavailableError`` listing what is."""
    if isinstance(providers, str):
        providers = [p for p in providers.split(",") if p.strip()]
    if not providers:
        raise BackendUnavailableError("no execution provider given (choose from: cpu, cuda, tensorrt)")
    avail = available_providers()
    resolved = []
    for p in providers:
        p = p.strip()
        full = PROVIDERS.get(p.lower(), p)
        if full not in PROVIDERS.values() and full not in avail:
            raise BackendUnavailableError(
                f"unknown execution provider {p!r} (choose from: {', '.join(PROVIDERS)}; "
                f"this onnxruntime has: {', '.join(avail)})")
        if full not in avail:
            short = {v: k for k, v in PROVIDERS.items()}
            have = ", ".join(f"{short.get(a, a)}" for a in avail)
            hint = " (install onnxruntime-gpu: pip install 'vaegan[gpu]')" if full != "CPUExecutionProvider" else ""
            raise BackendUnavailableError(
                f"execution provider {p!r} ({full}) is not available in this onnxruntime "
                f"{_ort_version()}; available: {have}{hint}")
        resolved.append(full)
    return resolved


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def unloadable(path: Path, who: str, e: BaseException) -> ArtifactError:
    """The one-line error for a graph whose sha256 matched but that ``who`` cannot parse or load."""
    from ...artifacts import how_to_create

    msg = (str(e).strip().splitlines() or [""])[0][:200]
    return ArtifactError(f"{path}: {who} cannot load this graph ({type(e).__name__}: {msg}); "
                         f"{how_to_create(Path(path).parent)}")


class SessionOptionsFromConfig:
    """Builds ``onnxruntime.SessionOptions`` with explicit threading.

    ``intra_op_threads``: threads per operator (default: the CPU count); ``allow_spinning``: whether idle intra-op
    threads busy-wait for work. Spinning lowers the latency of one session run but burns the cores while the host
    does other work; with several sessions run alternately (the ``modular`` loop) it is best off.

    ``graph_optimization`` defaults to ``extended``, not ``all``: on the Loop graph the ``all`` level's NCHWc layout
    kernels can move a validation image of the fused loop past the fp32 tolerance (another restart wins the argmin),
    where torch fp32 and ``extended`` stay within it, and are not faster in the A/B of bench/levers.py
    (docs/benchmarks.md, levers). The fused backend's CPU fast path (one restart, no argmin; the Loop unrolled) does
    use ``all``.
    """

    def __init__(self, intra_op_threads: int | None = None, inter_op_threads: int = 1, allow_spinning: bool = True,
                 graph_optimization: str = "extended"):
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self.allow_spinning = allow_spinning
        self.graph_optimization = graph_optimization

    def __call__(self):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.intra_op_threads or os.cpu_count() or 1)
        so.inter_op_num_threads = int(self.inter_op_threads)
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "1" if self.allow_spinning else "0")
        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        so.graph_optimization_level = levels[self.graph_optimization]
        so.log_severity_level = 3
        return so


class SessionFromOnnx:
    """Lazily builds an ``onnxruntime.InferenceSession`` from an ONNX file path, or from the serialized model that
    ``model`` (a loader such as ``unroll.UnrolledFromOnnx``, called with no argument) derives from that file.

    >>> runner = OnnxrtRunner(SessionFromOnnx("artifacts/decoder.onnx", providers=["cpu"]))
    """

    def __init__(self, path, providers=("cpu",), session_options=None, model=None):
        self.path = Path(path)
        self.providers = providers
        self.session_options = session_options or SessionOptionsFromConfig()
        self.model = model

    def __call__(self):
        import onnxruntime as ort

        providers = resolve_providers(self.providers)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX file not found")
        so = self.session_options() if callable(self.session_options) else self.session_options
        src = self.model() if self.model is not None else str(self.path)
        try:
            sess = ort.InferenceSession(src, sess_options=so, providers=providers)
        except Exception as e:  # onnxruntime's InvalidProtobuf, InvalidGraph, Fail...: the file, not the caller
            raise unloadable(self.path, "onnxruntime", e) from None
        got = sess.get_providers()
        lost = [p for p in providers if p not in got]
        if lost:
            raise BackendUnavailableError(
                f"{self.path.name}: onnxruntime could not enable {', '.join(lost)} (session runs on "
                f"{', '.join(got)}); refusing to fall back silently. Check the CUDA / TensorRT libraries.")
        return sess
