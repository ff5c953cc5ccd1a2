"""The runner interface every backend implements (after Polygraphy's ``BaseRunner``).

A runner is activated once (loads its session / engine), then ``infer(feed)`` maps input names to numpy arrays and
returns output names to numpy arrays. ``infer`` checks the feed against the graph's input metadata first and says
exactly what it got and what it expected. ``last_inference_time()`` is the wall time of the last ``infer`` call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import BackendUnavailableError, FeedError


def import_optional(module: str, what: str, hint: str):
    """``module`` imported, or a ``BackendUnavailableError`` "<what> is not installed (<why>); <hint>" (an optional
    engine's package: OpenVINO, TensorRT)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendUnavailableError(f"{what} is not installed ({e}); {hint}") from None


@dataclass(frozen=True)
class TensorMeta:
    """Name, dtype and shape of one graph input; a ``None`` or string dimension is dynamic."""

    name: str
    dtype: np.dtype
    shape: tuple

    def describe(self) -> str:
        dims = ", ".join("?" if d is None or isinstance(d, str) else str(d) for d in self.shape)
        return f"{self.name}: {np.dtype(self.dtype).name}[{dims}]"


def _describe_array(name: str, a) -> str:
    if not isinstance(a, np.ndarray):
        return f"{name}: {type(a).__name__} (not a numpy array)"
    return f"{name}: {a.dtype.name}[{', '.join(map(str, a.shape))}]"


def check_feed(runner_name: str, expected: list[TensorMeta], feed: dict) -> None:
    """Raise ``FeedError`` unless ``feed`` has exactly the expected names, dtypes and (static) dimensions."""
    problems = []
    want = {m.name: m for m in expected}
    missing = [n for n in want if n not in feed]
    extra = [n for n in feed if n not in want]
    if missing:
        problems.append(f"missing input(s) {missing}")
    if extra:
        problems.append(f"unexpected input(s) {extra}")
    for name, meta in want.items():
        if name not in feed:
            continue
        a = feed[name]
        if not isinstance(a, np.ndarray):
            problems.append(f"input '{name}' is a {type(a).__name__}, expected a numpy array")
            continue
        if a.dtype != np.dtype(meta.dtype):
            problems.append(f"input '{name}' has dtype {a.dtype.name}, expected {np.dtype(meta.dtype).name}")
        if a.ndim != len(meta.shape):
            problems.append(f"input '{name}' has rank {a.ndim} (shape {list(a.shape)}), expected rank {len(meta.shape)}")
            continue
        for axis, (got, exp) in enumerate(zip(a.shape, meta.shape)):
            if isinstance(exp, int) and exp >= 0 and got != exp:
                problems.append(f"input '{name}' has shape {list(a.shape)}: dimension {axis} is {got}, expected {exp}")
                break
    if problems:
        got = ", ".join(_describe_array(n, a) for n, a in feed.items()) or "nothing"
        exp = ", ".join(m.describe() for m in expected)
        raise FeedError(f"{runner_name}: bad feed: {'; '.join(problems)}. Got {{{got}}}; expected {{{exp}}}")


class Activatable:
    """``with thing:`` for anything with ``activate()`` / ``deactivate()`` (runners and the purifier backends)."""

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()
        return False


class BaseRunner(Activatable):
    """Subclasses implement ``activate_impl``, ``get_input_metadata_impl``, ``infer_impl``, ``deactivate_impl``."""

    def __init__(self, name: str):
        self.name = name
        self.is_active = False
        self.inference_time: float | None = None
        self._input_meta: list[TensorMeta] | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def activate(self) -> None:
        if self.is_active:
            raise RuntimeError(f"{self.name}: already active")
        self.activate_impl()
        self._input_meta = self.get_input_metadata_impl()
        self.is_active = True

    def deactivate(self) -> None:
        if not self.is_active:
            return
        try:
            self.deactivate_impl()
        finally:
            self.is_active = False
            self._input_meta = None


    # -- inference -------------------------------------------------------------------------------------------
    def get_input_metadata(self) -> list[TensorMeta]:
        self._require_active()
        return list(self._input_meta)

    def infer(self, feed: dict[str, np.ndarray], check_inputs: bool = True) -> dict[str, np.ndarray]:
        self._require_active()
        if check_inputs:
            check_feed(self.name, self._input_meta, feed)
        t0 = time.perf_counter()
        out = self.infer_impl(feed)
        self.inference_time = time.perf_counter() - t0
        return out

    def infer_declared(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``infer`` fed only the entries of ``feed`` that this runner's graph declares, so graphs with an input
        fixed (the fast path's bound T and settings) take the same feed as the graph without; a declared input
        missing from ``feed`` is still a ``FeedError``."""
        self._require_active()
        return self.infer({m.name: feed[m.name] for m in self._input_meta if m.name in feed})

    def last_inference_time(self) -> float | None:
        """Seconds taken by the last ``infer`` call (None before the first)."""
        return self.inference_time

    def _require_active(self) -> None:
        if not self.is_active:
            raise RuntimeError(f"{self.name}: not active; call activate() or use the runner as a context manager")

    # -- to implement ----------------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def get_input_metadata_impl(self) -> list[TensorMeta]:
        raise NotImplementedError

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        raise NotImplementedError
