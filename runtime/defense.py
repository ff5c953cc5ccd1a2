"""``Defense``: the runtime as one object for a Python pipeline (a camera loop, a detector's crops, a server).

    from vaegan.runtime import Defense

    with Defense.load("artifacts") as defense:          # manifest and graphs checked, sessions built, once
        result = defense(frames)                         # uint8 H x W (x C) frames of any size, or N x C x H x W
        result.labels, result.class_names, result.confidence, result.loss, result.purified

Frames are converted by the one preprocessing function of ``vaegan-run`` (``io.to_model_input``, through
``io.array_to_model_input`` for arrays) into the artifacts' contract (the manifest's ``preprocess``). Batches of
any size are fine: the purifier and the classifier split them into calls of at most the artifacts' ``max_batch``.
Input that is not in a form listed in ``Defense.prepare`` is an ``InputError``; nothing is coerced.

Thread safety: ``prepare`` (the preprocessing) runs in the calling thread; the purify and classify calls are
serialised on one lock per ``Defense``, because not every backend's runners may be shared between threads (a
TensorRT runner's device buffers and CUDA graphs, the fast path's cache of graphs built on first use). A call
already uses the cores: the fused backend shards a batch over ``threads`` sessions.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields, replace

import numpy as np

from .artifacts import Artifacts, load_artifacts
from .errors import InputError, RuntimeUsageError
from .io import array_to_model_input, to_model_input
from .policy import BackendOptions
from .purify import Classifier, Purifier, PurifyParams, activate_all, make_classifier, make_purifier

PURIFY_SETTINGS = tuple(f.name for f in fields(PurifyParams))


@dataclass(frozen=True)
class PurifyResult:
    """``purified``: N x C x H x W float32 in [0, 1]; ``loss``: N float32, the purifier's final objective per frame
    (the chosen restart's)."""

    purified: np.ndarray
    loss: np.ndarray

    def __len__(self) -> int:
        return int(self.loss.shape[0])


@dataclass(frozen=True)
class DefenseResult(PurifyResult):
    """A ``PurifyResult`` classified: ``labels`` (N int64 class ids), ``class_names`` (N names, from the manifest's
    ``classes``), ``confidence`` (N float32 softmax probabilities of the labels)."""

    labels: np.ndarray
    class_names: list[str]
    confidence: np.ndarray

    def records(self) -> list[dict]:
        """One dict per frame: ``class_id``, ``class_name``, ``confidence``, ``loss`` (plain Python numbers)."""
        return [{"class_id": int(k), "class_name": n, "confidence": float(c), "loss": float(v)}
                for k, n, c, v in zip(self.labels, self.class_names, self.confidence, self.loss)]


class Defense:
    """Purify and classify frames with exported artifacts. Make one with ``Defense.load``; call it on frames;
    ``close()`` it (or use it as a context manager) to free its sessions."""

    def __init__(self, artifacts: Artifacts, purifier: Purifier, classifier: Classifier | None,
                 options: BackendOptions):
        self.artifacts = artifacts
        self.options = options
        self._purifier = purifier
        self._classifier = classifier
        self._lock = threading.Lock()
        self._open = False
        pre = artifacts.preprocess
        self.contract = (int(pre["channels"]), int(pre["height"]), int(pre["width"]))
        lo, hi = pre.get("range", (0.0, 1.0))
        self._range = (float(lo), float(hi))

    @classmethod
    def load(cls, artifacts, backend: str = "auto", threads: int | None = None, options: BackendOptions | None = None,
             classify: bool = True, **purify_overrides) -> "Defense":
        """Load ``artifacts`` (a directory written by ``vaegan-export``, or ``Artifacts``): manifest checks, the
        graphs' sha256, the sessions built and activated, once.

        ``backend``: ``auto`` (TensorRT when usable, else fused), ``fused``, ``modular`` or ``trt``. ``threads``
        replaces ``options.threads``; ``options``: the other backend knobs (``BackendOptions``, documented
        defaults). ``classify=False`` builds no classifier (``purify`` only). ``purify_overrides``: the loop's
        settings (``steps``, ``eta``, ``lam``, ``momentum``, ``restarts``, ``noise``, ``seed``) in place of the
        manifest's ``purify_defaults``; None keeps the default."""
        unknown = sorted(set(purify_overrides) - set(PURIFY_SETTINGS))
        if unknown:
            raise RuntimeUsageError(f"Defense.load: unknown purify setting(s) {', '.join(unknown)} "
                                    f"(choose from {', '.join(PURIFY_SETTINGS)})")
        arts = artifacts if isinstance(artifacts, Artifacts) else load_artifacts(artifacts)
        options = options or BackendOptions()
        if threads is not None:
            options = replace(options, threads=threads)
        params = PurifyParams.from_manifest(arts, **purify_overrides)
        purifier = make_purifier(arts, backend, params, options=options)
        classifier = None
        if classify:
            classifier = make_classifier(arts, purifier.name, providers=options.providers, threads=options.threads,
                                         cuda_graph=options.cuda_graph)
        d = cls(arts, purifier, classifier, options)
        activate_all([purifier] + ([classifier.runner] if classifier is not None else []))
        d._open = True
        return d

    # -- properties ------------------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        """Every class name, indexed by label (the manifest's ``classes``)."""
        return self.artifacts.classes

    @property
    def backend(self) -> str:
        """The backend that runs: ``fused``, ``modular`` or ``trt`` (``auto`` resolved)."""
        return self._purifier.name

    @property
    def params(self) -> PurifyParams:
        return self._purifier.params

    @property
    def max_batch(self) -> int:
        """Most frames per graph call (bigger batches are split; callers need not know it)."""
        return self.artifacts.max_batch

    def describe(self) -> dict:
        """The purifier's settings and how it runs (backend, loop settings, shards, fast path, precision)."""
        return self._purifier.describe()

    # -- frames -> contract ----------------------------------------------------------------------------------
    def prepare(self, frames, bgr: bool = False) -> np.ndarray:
        """Frames -> N x C x H x W float32 in the artifacts' contract. ``frames``: one uint8 ``H x W`` or
        ``H x W x C`` (C 1, 3 or 4) array; a uint8 ``N x H x W x C`` array; a list or tuple of uint8 arrays (or
        Pillow images) of any sizes; or a float32 ``N x C x H x W`` array already in the contract (checked:
        channels, size, finite values in range). ``bgr``: 3- and 4-channel uint8 frames are BGR(A), as OpenCV
        decodes them. Anything else is an ``InputError`` saying what was expected."""
        c, h, w = self.contract
        if isinstance(frames, np.ndarray):
            if frames.dtype == np.float32:
                return self._checked_tensor(frames)
            if frames.dtype != np.uint8:
                raise InputError(f"frames of dtype {frames.dtype.name}: expected uint8 frames (H x W, H x W x C, "
                                 f"N x H x W x C) or float32 N x {c} x {h} x {w} in the contract; nothing is "
                                 f"converted implicitly")
            if frames.ndim == 4:
                items = list(frames)
            elif frames.ndim in (2, 3):
                items = [frames]
            else:
                raise InputError(f"a uint8 array of shape {list(frames.shape)}: expected one H x W or H x W x C "
                                 f"frame, or N x H x W x C frames")
        elif isinstance(frames, (list, tuple)):
            items = list(frames)
        elif _is_pil_image(frames):
            items = [frames]
        else:
            raise InputError(f"frames of type {type(frames).__name__}: expected a numpy array or a list of uint8 "
                             f"arrays")
        if not items:
            raise InputError("empty batch: expected at least one frame")
        out = np.empty((len(items), c, h, w), dtype=np.float32)
        pre = self.artifacts.preprocess
        for i, f in enumerate(items):
            try:
                out[i] = to_model_input(f, pre) if _is_pil_image(f) else array_to_model_input(f, pre, bgr=bgr)
            except InputError as e:
                raise InputError(f"frame {i}: {e}") from None
        return out

    def _checked_tensor(self, x: np.ndarray) -> np.ndarray:
        c, h, w = self.contract
        want = f"float32 N x {c} x {h} x {w}"
        if x.ndim != 4:
            raise InputError(f"a float32 array of shape {list(x.shape)}: expected {want} (one frame: x[None])")
        if x.shape[0] == 0:
            raise InputError(f"empty batch (shape {list(x.shape)}): expected at least one frame")
        if x.shape[1] != c:
            raise InputError(f"a float32 batch of shape {list(x.shape)} has {x.shape[1]} channel(s): expected {want}")
        if x.shape[2:] != (h, w):
            raise InputError(f"a float32 batch of shape {list(x.shape)}: frames of {x.shape[2]} x {x.shape[3]}, "
                             f"expected {want} (pass uint8 frames to have them resized)")
        bad = ~np.isfinite(x)
        if bad.any():
            rows = np.flatnonzero(bad.reshape(len(x), -1).any(1))
            raise InputError(f"{int(bad.sum())} non-finite value(s) (NaN or inf) in frame(s) "
                             f"{', '.join(map(str, rows[:8]))}{' ...' if len(rows) > 8 else ''}: expected values in "
                             f"[{self._range[0]:g}, {self._range[1]:g}]")
        lo, hi = float(x.min()), float(x.max())
        if lo < self._range[0] or hi > self._range[1]:
            raise InputError(f"values from {lo:g} to {hi:g}: expected {want} in [{self._range[0]:g}, "
                             f"{self._range[1]:g}]")
        return np.ascontiguousarray(x)

    # -- calls -----------------------------------------------------------------------------------------------
    def purify(self, frames, bgr: bool = False) -> PurifyResult:
        """Purify ``frames`` (see ``prepare``) without classifying them."""
        x = self.prepare(frames, bgr=bgr)
        with self._lock:
            self._require_open()
            out = self._purifier.purify(x)
        return PurifyResult(out.purified, out.loss)

    def __call__(self, frames, bgr: bool = False) -> DefenseResult:
        """Purify and classify ``frames`` (see ``prepare``)."""
        x = self.prepare(frames, bgr=bgr)
        with self._lock:
            self._require_open()
            if self._classifier is None:
                raise RuntimeUsageError("this Defense was loaded with classify=False: call purify() instead")
            out = self._purifier.purify(x)
            ids, conf, _ = self._classifier(out.purified, self.max_batch)
        classes = self.classes
        return DefenseResult(out.purified, out.loss, labels=ids.astype(np.int64),
                             class_names=[classes[int(k)] for k in ids], confidence=conf.astype(np.float32))

    # -- lifecycle -------------------------------------------------------------------------------------------
    def _require_open(self) -> None:
        if not self._open:
            raise RuntimeUsageError("this Defense is closed: load another one (Defense.load)")

    def close(self) -> None:
        """Free the sessions (waits for a call in progress); closing twice is fine."""
        with self._lock:
            if not self._open:
                return
            self._open = False
            try:
                self._purifier.deactivate()
            finally:
                if self._classifier is not None:
                    self._classifier.runner.deactivate()

    def __enter__(self) -> "Defense":
        self._require_open()
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"Defense({str(self.artifacts.root)!r}, backend={self.backend!r}, {state})"


def _is_pil_image(x) -> bool:
    from PIL import Image

    return isinstance(x, Image.Image)
