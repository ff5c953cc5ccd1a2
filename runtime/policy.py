"""Which backend, engine, precision, sharding and fast path a purifier runs with: the *policy*, apart from the
*mechanism* (the runners and purifier backends in ``purify.py`` and ``backend/``).

``BackendOptions`` holds the knobs a caller may set (each documented with its default); ``resolve_plan`` turns
them, the artifacts and the loop's settings into a ``Plan`` with every ``auto`` / ``None`` decided and every
combination that cannot run refused (``RuntimeUsageError`` / ``BackendUnavailableError``) before any session is
built. ``purify.build_purifier`` then builds exactly what the plan says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .artifacts import Artifacts
from .errors import BackendUnavailableError, RuntimeUsageError
from .names import BACKENDS, FAST_PATH_ENGINES, PRECISIONS

# auto's OpenVINO fast path up to this T: compiling the unrolled graph grows with T (docs/benchmarks.md, levers), so
# longer loops take onnxruntime's
AUTO_OPENVINO_MAX_STEPS = 10


@dataclass(frozen=True)
class BackendOptions:
    """The backend knobs, one object from the CLI (or the caller) down to the runners.

    - ``providers`` (``"cpu"``): onnxruntime execution providers, comma-separated short names (``cpu``, ``cuda``,
      ``tensorrt``) or a sequence of names; a missing one is an error, never a fallback.
    - ``threads`` (None: the CPU count): onnxruntime / OpenVINO intra-op threads.
    - ``shard`` (None: on when the providers are the CPU alone and ``threads`` > 1): the fused backend splits a
      batch of n >= 2 images into min(threads, n) row blocks run at once on one-thread sessions.
    - ``fast_path`` (None: on when the providers are the CPU alone): fused calls with one restart run
      ``purify.onnx`` with its Loop unrolled at the call's T.
    - ``fast_path_engine`` (``"auto"``: OpenVINO when installed and T <= ``AUTO_OPENVINO_MAX_STEPS``, else
      onnxruntime at graph optimisation ``all``): the fast path's engine (``FAST_PATH_ENGINES``).
    - ``precision`` (``"fp32"``): the fast path's arithmetic; ``bf16`` runs it on OpenVINO in bf16 (opt-in: it
      does not meet the export's fp32 tolerances, bench/precision.py measures its accuracy).
    - ``allow_spinning`` (None: off for ``modular``, whose four sessions run in turn, on otherwise): whether idle
      intra-op threads busy-wait.
    - ``cuda_graph`` (True): TensorRT runners capture a CUDA graph per shape.
    """

    providers: str | tuple[str, ...] = "cpu"
    threads: int | None = None
    shard: bool | None = None
    fast_path: bool | None = None
    fast_path_engine: str = "auto"
    precision: str = "fp32"
    allow_spinning: bool | None = None
    cuda_graph: bool = True


@dataclass(frozen=True)
class Plan:
    """What to build, every choice made: ``backend`` (fused / modular / trt), ``shards`` (1: no sharding),
    ``fast_path_engine`` (None: no fast path; else ``onnxruntime`` / ``openvino``) with ``openvino_max_steps``
    (calls with a larger T run on onnxruntime; None: no cap), ``spin`` (allow_spinning) and the rest as given."""

    backend: str
    providers: str | tuple[str, ...]
    threads: int | None
    spin: bool
    shards: int
    fast_path_engine: str | None
    openvino_max_steps: int | None
    precision: str
    cuda_graph: bool


def trt_usable(artifacts: Artifacts) -> tuple[bool, str]:
    if not artifacts.has_engine("purify"):
        return False, "the artifacts have no TensorRT purify engine (export with --trt)"
    from .backend.trt import trt_status

    return trt_status()


def check_threads(threads: int | None) -> None:
    """``threads``: None (the CPU count) or an integer >= 1."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise RuntimeUsageError(f"threads must be an integer >= 1 (got {threads!r}); leave it out for the CPU count")


def resolve_backend(backend: str, artifacts: Artifacts) -> str:
    if backend not in BACKENDS:
        raise RuntimeUsageError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "auto":
        return "trt" if trt_usable(artifacts)[0] else "fused"
    return backend


def resolve_fast_path_engine(engine: str) -> str:
    """``auto`` -> ``openvino`` when OpenVINO is usable, else ``onnxruntime``; an explicit ``openvino`` that is not
    usable is a ``BackendUnavailableError`` with the install hint. (``resolve_plan``'s ``auto`` also caps
    OpenVINO's T at ``AUTO_OPENVINO_MAX_STEPS``.)"""
    if engine not in FAST_PATH_ENGINES:
        raise RuntimeUsageError(f"unknown fast path engine {engine!r} (choose from {', '.join(FAST_PATH_ENGINES)})")
    if engine == "onnxruntime":
        return engine
    from .backend.openvino import openvino_status

    ok, why = openvino_status()
    if engine == "openvino" and not ok:
        raise BackendUnavailableError(f"fast path engine 'openvino' is not usable: {why}")
    return "openvino" if ok else "onnxruntime"


def check_precision(precision: str, engine: str | None = None) -> None:
    """``precision`` is one of ``PRECISIONS`` and ``engine`` (resolved; None: not checked) computes in it: bf16 on
    OpenVINO only."""
    if precision not in PRECISIONS:
        raise RuntimeUsageError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if precision != "fp32" and engine is not None and engine != "openvino":
        raise RuntimeUsageError(f"precision {precision} runs on OpenVINO's fast path only, not on {engine} "
                                "(--fast-path-engine openvino; `pip install 'vaegan[openvino]'`)")


def resolve_plan(artifacts: Artifacts, backend: str, restarts: int, options: BackendOptions) -> Plan:
    """Decide every ``auto`` of ``backend`` and ``options`` for a purifier whose configured loop has ``restarts``
    restarts, or refuse what cannot run: ``bf16`` off the fused CPU fast path or with more than one restart
    (rather than silently in fp32), sharding or the fast path with non-CPU providers, ``trt`` where TensorRT, a GPU
    or the engine is missing."""
    o = options
    precision, engine, fast_path, shard = o.precision, o.fast_path_engine, o.fast_path, o.shard
    check_threads(o.threads)
    check_precision(precision)
    backend = resolve_backend(backend, artifacts)
    if precision != "fp32":
        if backend != "fused" or fast_path is False:
            raise RuntimeUsageError(f"precision {precision} runs on the fused backend's CPU fast path only "
                                    f"(here: backend {backend}{', fast path off' if fast_path is False else ''})")
        if restarts > 1:
            raise RuntimeUsageError(f"precision {precision} runs on the fast path, which takes one restart "
                                    f"(restarts {restarts})")
        if engine == "auto":
            engine = "openvino"  # bf16 needs it: resolving it refuses with the install hint if missing
    common = dict(providers=o.providers, threads=o.threads, precision=precision, cuda_graph=o.cuda_graph)
    if backend == "fused":
        from .backend.onnxrt.loader import resolve_providers

        spin = True if o.allow_spinning is None else o.allow_spinning
        n_threads = int(o.threads or os.cpu_count() or 1)
        cpu_only = resolve_providers(o.providers) == ["CPUExecutionProvider"]
        if shard is None:
            shard = cpu_only and n_threads > 1
        elif shard and not cpu_only:
            raise RuntimeUsageError("batch sharding runs one-thread CPU sessions: use it with --providers cpu")
        if fast_path is None:
            fast_path = cpu_only
        elif fast_path and not cpu_only:
            raise RuntimeUsageError("the fast path runs on CPU kernels (OpenVINO's or onnxruntime's): use it with "
                                    "--providers cpu")
        fast_engine, cap = None, None
        if fast_path:
            cap = AUTO_OPENVINO_MAX_STEPS if engine == "auto" else None
            fast_engine = resolve_fast_path_engine(engine)
            check_precision(precision, fast_engine)
        elif precision != "fp32":
            raise RuntimeUsageError(f"precision {precision} runs on the CPU fast path: use it with --providers cpu")
        shards = n_threads if shard and n_threads >= 2 else 1
        return Plan("fused", spin=spin, shards=shards, fast_path_engine=fast_engine, openvino_max_steps=cap,
                    **common)
    spin = (False if backend == "modular" else True) if o.allow_spinning is None else o.allow_spinning
    if backend == "trt":
        ok, why = trt_usable(artifacts)
        if not ok:
            raise BackendUnavailableError(f"backend 'trt' is not usable: {why}")
    return Plan(backend, spin=spin, shards=1, fast_path_engine=None, openvino_max_steps=None, **common)
