"""Purifier backends over the runners, and the classifier.

The algorithm is the default mode of ``vaegan.train.purifier.purify`` (latent descent seeded by the encoder):

    z_r(0) = mu_E(x) + noise[r]                      restart-major rows: row r*N + i is restart r of image i
    repeat T times:  xg = G(z);  grad_x L = 2 (xg - x) - lam * d log sigmoid(D(xg)) / dxg
                     grad_z = J_G(z)^T grad_x L;  vel = momentum * vel + grad_z;  z = z - eta * vel
    L = sum((G(z) - x)^2) + lam * softplus(-D(G(z)));  per image keep the restart with the lowest L; output G(z*).

Backends (exactly one definition of the algorithm each):

- ``fused``   -- ``purify.onnx`` (the whole loop inside one ONNX graph) on onnxruntime. On the CPU with ``threads``
  > 1, a batch of n >= 2 images is cut into min(threads, n) shards run at once on one-thread sessions (batch
  sharding); a single image runs on one session with ``threads`` intra-op threads. Rows are independent, so the
  shards give the same rows as one call; onnxruntime's intra-op threading of these small convolutions scales less
  than sharding does (docs/benchmarks.md, levers). CPU fast path: a call with
  one restart and T <= ``limits.FAST_PATH_MAX_STEPS`` runs ``purify.onnx`` with its Loop unrolled at that call's T (``backend/onnxrt/unroll.py``) on
  OpenVINO's CPU plugin when the ``openvino`` package is installed (one compiled model per batch size, no
  sharding), else under onnxruntime's ``all`` level (NCHWc kernels), built once per T (the configured T at
  activation, up to ``FAST_PATH_CACHE`` of them); the same function, validated by ``vaegan-export`` at the shipped T
  on each engine present.
- ``modular`` -- the loop above on the host in numpy, over ``encoder``, ``decoder``, ``discriminator_grad`` and
  ``decoder_vjp``; T, eta, lam, momentum, restarts change at run time without re-export.
- ``trt``     -- the purify TensorRT engine (``manifest["engines"]["purify"]``) through ``TrtRunner``; the same
  graph as ``fused``, so it shares ``GraphPurifier``.

``auto`` picks ``trt`` when TensorRT, cuda-python, a GPU and a purify engine are all present, else ``fused``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

import numpy as np

from .artifacts import Artifacts
from .backend.base import Activatable, BaseRunner
from .backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from .backend.onnxrt.loader import SessionOptionsFromConfig
from .errors import RuntimeUsageError
from .limits import FAST_PATH_MAX_STEPS, MAX_RESTARTS, MAX_STEPS
from .names import FAST_PATH_ENGINE_LABELS, unsupported_purifier
from .policy import (AUTO_OPENVINO_MAX_STEPS, BackendOptions, Plan, check_precision, check_threads,  # noqa: F401
                     resolve_backend, resolve_fast_path_engine, resolve_plan, trt_usable)


@dataclass(frozen=True)
class PurifyParams:
    """The loop's settings. No defaults here: they come from the manifest's ``purify_defaults`` (what the export
    wrote from ``train.config.PurifyConfig``), so the shipped operating point has one definition."""

    steps: int
    eta: float
    lam: float
    momentum: float
    restarts: int
    noise: float
    seed: int

    @classmethod
    def from_settings(cls, d: dict, **overrides) -> "PurifyParams":
        """From a ``PurifyConfig`` as a dict (a manifest's ``purify_defaults``, or ``dataclasses.asdict`` of one);
        ``overrides`` that are not None replace fields."""
        why = unsupported_purifier(d.get("mode", "latent"), d.get("init", "encoder"))
        if why:
            raise RuntimeUsageError(f"purify_defaults: {why}")
        try:
            p = cls(steps=int(d["steps"]), eta=float(d["eta"]), lam=float(d["lam"]), momentum=float(d["momentum"]),
                    restarts=int(d["restarts"]), noise=float(d["noise"]), seed=int(d["seed"]))
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise RuntimeUsageError(f"purify settings {d!r}: {type(e).__name__}: {e}") from None
        p = replace(p, **{k: v for k, v in overrides.items() if v is not None})
        p.check()
        return p

    @classmethod
    def from_manifest(cls, artifacts: Artifacts, **overrides) -> "PurifyParams":
        return cls.from_settings(artifacts.purify_defaults, **overrides)

    def check(self) -> None:
        """Every setting finite and in range (``limits.py`` states the bounds on T and R); a ``RuntimeUsageError``
        naming the first one that is not. This is the one check: the CLI, the library and the manifest's
        ``purify_defaults`` all go through it."""
        for name, lo, hi in (("steps", 0, MAX_STEPS), ("restarts", 1, MAX_RESTARTS), ("seed", 0, 2 ** 63 - 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                raise RuntimeUsageError(f"{name} must be an integer in {lo}..{hi} (got {v!r})")
        # eta > 0 (a zero step leaves the encoder's guess), lam >= 0 (a negative weight rewards unrealistic
        # images), 0 <= momentum < 1 (heavy ball diverges at 1), noise >= 0 (a standard deviation)
        for name, ok, rule in (("eta", lambda v: v > 0, "> 0"), ("lam", lambda v: v >= 0, ">= 0"),
                               ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"), ("noise", lambda v: v >= 0, ">= 0")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                    or not math.isfinite(v) or not ok(v):
                raise RuntimeUsageError(f"{name} must be a finite number {rule} (got {v!r})")


def restart_noise(params: PurifyParams, n: int, latent_dim: int) -> np.ndarray:
    """R x N x L float32 restart noise: restart 0 is zero, the others ``params.noise * N(0, I)`` from a numpy
    generator seeded with ``params.seed`` (a fresh generator per call, so a batch's result does not depend on what
    was purified before it). The torch reference (``vaegan.train.purifier.restart_noise``) draws the same
    distribution from torch's generator, which the runtime cannot import: other values, so comparisons feed one
    noise to both; at R = 1 (the shipped default) both are zero."""
    noise = np.zeros((params.restarts, n, latent_dim), dtype=np.float32)
    if params.restarts > 1:
        rng = np.random.default_rng(params.seed)
        noise[1:] = rng.standard_normal((params.restarts - 1, n, latent_dim), dtype=np.float32) * np.float32(params.noise)
    return noise


@dataclass
class PurifyOutput:
    purified: np.ndarray  # N x C x H x W float32 in [0, 1] (the manifest's contract)
    loss: np.ndarray      # N, final objective of the chosen restart
    z: np.ndarray         # N x L, chosen latent

    @staticmethod
    def concat(parts: list["PurifyOutput"]) -> "PurifyOutput":
        """Row blocks (chunks or shards of one batch), in order, as one output."""
        return PurifyOutput(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("purified", "loss", "z")))


def activate_all(runners) -> None:
    """Activate ``runners`` together: if one fails, those already started are deactivated again."""
    done = []
    try:
        for r in runners:
            r.activate()
            done.append(r)
    except BaseException:
        for r in done:
            r.deactivate()
        raise


class Purifier(Activatable):
    """Base: owns runners, activates them together, splits a batch into chunks the graphs accept."""

    name = "purifier"

    def __init__(self, artifacts: Artifacts, params: PurifyParams):
        self.artifacts = artifacts
        self.params = params
        self.runners: dict[str, BaseRunner] = {}

    def activate(self) -> None:
        activate_all(self.runners.values())

    def deactivate(self) -> None:
        for r in self.runners.values():
            r.deactivate()

    def rows_per_call(self, restarts: int) -> int:
        """Most images per graph call: a call runs R x N rows, at most ``max_batch`` of them (at least one image)."""
        return max(1, self.artifacts.max_batch // restarts)

    def purify(self, x: np.ndarray, noise: np.ndarray | None = None, params: PurifyParams | None = None) -> PurifyOutput:
        """Purify N x C x H x W float32 images. ``noise`` (R x N x L) overrides ``restart_noise``; ``params``
        overrides this purifier's parameters for this call."""
        params = params or self.params
        params.check()
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, L = x.shape[0], self.artifacts.latent_dim
        if noise is None:
            noise = restart_noise(params, n, L)
        noise = np.ascontiguousarray(noise, dtype=np.float32)
        if noise.ndim != 3 or noise.shape[1:] != (n, L):
            raise RuntimeUsageError(f"noise has shape {list(noise.shape)}, expected [R, {n}, {L}]")
        step = max(1, self.rows_per_call(noise.shape[0]))
        parts = [self._purify_chunk(x[i:i + step], noise[:, i:i + step], params) for i in range(0, n, step)]
        if len(parts) == 1:
            return parts[0]
        return PurifyOutput.concat(parts)

    def _purify_chunk(self, x, noise, params) -> PurifyOutput:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"backend": self.name, **asdict(self.params)}


FAST_PATH_CACHE = 4  # unrolled graphs (one per T, eta, lam, momentum) a fused purifier keeps; least recently used first
FAST_PATH_BOUND = ("eta", "lam", "momentum")  # purify.onnx's scalar inputs the fast path binds as constants


class GraphPurifier(Purifier):
    """Runs the whole loop as one graph: ``purify.onnx`` on onnxruntime (``fused``) or its TensorRT engine
    (``trt``). T, eta, lam and momentum are graph inputs; R is the noise's first dimension.

    ``shard_runner`` + ``shards`` > 1 (fused on the CPU): batches of two or more images are split into up to
    ``shards`` row blocks that run concurrently on ``shard_runner`` (a one-thread session; onnxruntime releases the
    GIL), one block per core; a single image runs on ``runner``.

    ``fast_path(T, shard, bind)`` (fused on the CPU): returns (runner, shard runner or None) of the same function with
    T fixed and the scalar settings ``bind`` (eta, lam, momentum) bound as constants, for calls with one restart
    and T <= ``FAST_PATH_MAX_STEPS``
    (``UnrolledFastPath``, the Loop unrolled). Built for the configured settings at activation and on first use for
    others (``FAST_PATH_CACHE`` kept, least recently used dropped); its runners are ``runners["purify_fast_T<T>"]``
    (and ``..._shard``) for the configured eta, lam and momentum, ``purify_fast_T<T>_eta<eta>_lam<lam>_mom<m>``
    for others."""

    def __init__(self, artifacts: Artifacts, params: PurifyParams, runner: BaseRunner, name: str,
                 shard_runner: BaseRunner | None = None, shards: int = 1, fast_path=None,
                 limits: dict[str, int] | None = None):
        super().__init__(artifacts, params)
        self.name = name
        self.runners = {"purify": runner}
        self.shards = shards if shard_runner is not None else 1
        if self.shards > 1:
            self.runners["purify_shard"] = shard_runner
        self.fast_path = fast_path
        self.limits = limits or {}  # most T / R the runner accepts (a TensorRT engine's profile: engine_limits)
        self._fast: dict[tuple, tuple[BaseRunner, BaseRunner | None]] = {}  # fast_key -> (runner, shard), LRU order
        self._pool: ThreadPoolExecutor | None = None
        self._active = False

    def activate(self) -> None:
        """With a fast path, the Loop graph's sessions are built on first use (a call with R > 1), not here: a
        one-restart deployment never pays their memory."""
        if self.fast_path is None:
            super().activate()
        self._active = True
        try:
            if self.shards > 1 and self._pool is None:
                self._pool = ThreadPoolExecutor(self.shards, thread_name_prefix="vaegan-shard")
            if self.fast_path is not None and self.params.steps <= FAST_PATH_MAX_STEPS:
                self._fast_runners(self.params)
        except BaseException:
            self.deactivate()
            raise

    def rows_per_call(self, restarts: int) -> int:
        """A TensorRT engine's profile bounds N (``max_batch``) and R separately; onnxruntime: R x N rows a call."""
        return self.artifacts.max_batch if self.limits else super().rows_per_call(restarts)

    def _loop_runners(self) -> tuple[BaseRunner, BaseRunner | None]:
        pair = (self.runners["purify"], self.runners.get("purify_shard"))
        activate_all(r for r in pair if r is not None and not r.is_active)
        return pair

    def deactivate(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        for t in list(self._fast):
            self._drop_fast(t)
        self._active = False
        super().deactivate()

    @staticmethod
    def fast_key(params: PurifyParams) -> tuple:
        """What a fast-path graph fixes: T and the bound scalar settings (as float32, the graph's precision)."""
        return (int(params.steps),) + tuple(float(np.float32(getattr(params, k))) for k in FAST_PATH_BOUND)

    def _fast_name(self, key: tuple) -> str:
        name = f"purify_fast_T{key[0]}"
        if key[1:] == self.fast_key(self.params)[1:]:
            return name
        return name + "".join(f"_{k[:3] if k == 'momentum' else k}{v:g}" for k, v in zip(FAST_PATH_BOUND, key[1:]))

    def _fast_runners(self, params: PurifyParams) -> tuple[BaseRunner, BaseRunner | None]:
        key = self.fast_key(params)
        if key in self._fast:
            self._fast[key] = self._fast.pop(key)  # most recently used last
            return self._fast[key]
        while len(self._fast) >= FAST_PATH_CACHE:
            self._drop_fast(next(iter(self._fast)))
        pair = self.fast_path(key[0], self.shards > 1, dict(zip(FAST_PATH_BOUND, key[1:])))
        activate_all(r for r in pair if r is not None)
        self._fast[key] = pair
        name = self._fast_name(key)
        self.runners[name] = pair[0]
        if pair[1] is not None:
            self.runners[f"{name}_shard"] = pair[1]
        return pair

    def _drop_fast(self, key: tuple) -> None:
        for r in self._fast.pop(key):
            if r is not None:
                r.deactivate()
        name = self._fast_name(key)
        self.runners.pop(name, None)
        self.runners.pop(f"{name}_shard", None)

    @staticmethod
    def _run(runner: BaseRunner, x, noise, params) -> PurifyOutput:
        """One graph call, fed the inputs the graph declares (``infer_declared``: a fast-path graph has T, and unless
        built with ``bind_settings=False`` eta, lam and momentum, bound as constants)."""
        feed = {"x": x, "noise": noise, "steps": np.array(params.steps, dtype=np.int64),
                "eta": np.array(params.eta, dtype=np.float32), "lam": np.array(params.lam, dtype=np.float32),
                "momentum": np.array(params.momentum, dtype=np.float32)}
        out = runner.infer_declared(feed)
        return PurifyOutput(out["purified"], out["loss"], out["z"])

    def _purify_chunk(self, x, noise, params) -> PurifyOutput:
        if not self._active:
            raise RuntimeError(f"{self.name} purifier: not active; call activate() or use it as a context manager")
        for what, value in (("steps", params.steps), ("restarts", noise.shape[0])):
            if what in self.limits and value > self.limits[what]:
                raise RuntimeUsageError(f"{self.name}: {what} {value} is above the engine's profile maximum "
                                        f"({self.limits[what]}); export the engines again with a larger one")
        fast = self.fast_path is not None and noise.shape[0] == 1 and params.steps <= FAST_PATH_MAX_STEPS
        precision = getattr(self.fast_path, "precision", "fp32")
        if precision != "fp32" and not fast:
            raise RuntimeUsageError(f"{self.name}: precision {precision} runs on the fast path, which takes one "
                                    f"restart and steps <= {FAST_PATH_MAX_STEPS} (this call: restarts "
                                    f"{noise.shape[0]}, steps {params.steps})")
        main, shard = self._fast_runners(params) if fast else self._loop_runners()
        k = min(self.shards, x.shape[0])
        if k < 2 or self._pool is None or shard is None:
            return self._run(main, x, noise, params)
        cuts = np.linspace(0, x.shape[0], k + 1).round().astype(int)
        futures = [self._pool.submit(self._run, shard, np.ascontiguousarray(x[a:b]),
                                     np.ascontiguousarray(noise[:, a:b]), params)
                   for a, b in zip(cuts, cuts[1:])]
        parts = [f.result() for f in futures]
        return PurifyOutput.concat(parts)

    def describe(self) -> dict:
        return {**super().describe(), "shards": self.shards,
                "fast_path": None if self.fast_path is None else getattr(self.fast_path, "description", "on"),
                "fast_path_engine": getattr(self.fast_path, "engine", None),
                "precision": getattr(self.fast_path, "precision", "fp32")}


class ModularPurifier(Purifier):
    """The loop on the host (numpy) over the encoder, decoder, discriminator-gradient and decoder-VJP graphs."""

    name = "modular"
    GRAPHS = ("encoder", "decoder", "discriminator_grad", "decoder_vjp")

    def __init__(self, artifacts: Artifacts, params: PurifyParams, runners: dict[str, BaseRunner]):
        super().__init__(artifacts, params)
        missing = [g for g in self.GRAPHS if g not in runners]
        if missing:
            raise ValueError(f"modular purifier needs runners for {missing}")
        self.runners = runners

    def rows_per_call(self, restarts: int) -> int:
        return max(1, self.artifacts.max_batch // restarts)  # the loop runs on R*N rows

    def _purify_chunk(self, x, noise, p) -> PurifyOutput:
        enc, dec, dgrad, vjp = (self.runners[g] for g in self.GRAPHS)
        r, n, L = noise.shape
        mu = enc.infer({"x": x})["mu"]
        z = (mu[None] + noise).reshape(r * n, L)
        xr = np.tile(x, (r, 1, 1, 1))  # restart-major, like torch's x.repeat(r, 1, 1, 1)
        vel = np.zeros_like(z)
        eta, lam, mom = np.float32(p.eta), np.float32(p.lam), np.float32(p.momentum)
        for _ in range(p.steps):
            xg = dec.infer({"z": z})["x"]
            dlogsig = dgrad.infer({"x": xg})["grad_x"]
            gx = np.float32(2.0) * (xg - xr) - lam * dlogsig
            gz = vjp.infer({"z": z, "v": gx})["grad_z"]
            vel = mom * vel + gz if p.momentum else gz
            z = z - eta * vel
        xg = dec.infer({"z": z})["x"]
        logit = dgrad.infer({"x": xg})["logit"][:, 0]
        loss = ((xg - xr) ** 2).reshape(r * n, -1).sum(1) + lam * np.logaddexp(np.float32(0), -logit)
        loss = loss.reshape(r, n).astype(np.float32)
        best = loss.argmin(0)
        cols = np.arange(n)
        return PurifyOutput(xg.reshape(r, n, *xg.shape[1:])[best, cols], loss[best, cols], z.reshape(r, n, L)[best, cols])


class Classifier:
    """``classifier.onnx`` (or its engine) -> class ids, softmax confidences and logits."""

    def __init__(self, runner: BaseRunner, classes: list[str]):
        self.runner = runner
        self.classes = classes

    def __call__(self, x: np.ndarray, max_batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits = np.concatenate([self.runner.infer({"x": np.ascontiguousarray(x[i:i + max_batch])})["logits"]
                                 for i in range(0, x.shape[0], max_batch)])
        e = np.exp(logits - logits.max(1, keepdims=True))
        prob = e / e.sum(1, keepdims=True)
        ids = prob.argmax(1)
        return ids, prob[np.arange(len(ids)), ids], logits


# -- construction ----------------------------------------------------------------------------------------------

def ort_runner(artifacts: Artifacts, graph: str, providers, threads: int | None, allow_spinning: bool) -> OnnxrtRunner:
    so = SessionOptionsFromConfig(intra_op_threads=threads, allow_spinning=allow_spinning)
    return OnnxrtRunner(SessionFromOnnx(artifacts.path(graph), providers=providers, session_options=so),
                        name=f"onnxrt:{graph}")


def fast_path_session(path, steps: int, providers=("cpu",), threads: int | None = None, allow_spinning: bool = True,
                      model=None) -> SessionFromOnnx:
    """The onnxruntime session loader of the CPU fast path: ``path`` (``purify.onnx``) unrolled at ``steps``, graph
    optimisation ``all``. ``model``: an ``UnrolledFromOnnx`` to share between sessions (default: a new one)."""
    from .backend.onnxrt.unroll import UnrolledFromOnnx

    so = SessionOptionsFromConfig(intra_op_threads=threads, allow_spinning=allow_spinning, graph_optimization="all")
    return SessionFromOnnx(path, providers=providers, session_options=so,
                           model=model if model is not None else UnrolledFromOnnx(path, steps))


def fast_path_label(steps: int, engine: str, precision: str = "fp32") -> str:
    return f"unrolled T={steps}, {FAST_PATH_ENGINE_LABELS[engine]}" + ("" if precision == "fp32" else f" {precision}")


def fast_path_runner(path, steps: int, engine: str = "onnxruntime", threads: int | None = None,
                     allow_spinning: bool = True, model=None, providers=("cpu",), precision: str = "fp32",
                     bind: dict[str, float] | None = None) -> BaseRunner:
    """One runner of the CPU fast path: ``path`` (``purify.onnx``) unrolled at ``steps``, with the scalar inputs in
    ``bind`` (``FAST_PATH_BOUND``: eta, lam, momentum) fixed as constants and no longer fed, on onnxruntime at graph
    optimisation ``all`` or on OpenVINO's CPU plugin (``engine``, resolved), in ``precision`` (``bf16``: OpenVINO
    only). ``model``: an ``UnrolledFromOnnx`` to share between runners (default: a new one, from ``steps`` and
    ``bind``). ``vaegan-export`` validates through this same function."""
    from .backend.onnxrt.unroll import UnrolledFromOnnx

    check_precision(precision, engine)
    model = model if model is not None else UnrolledFromOnnx(path, steps, bind)
    name = f"{engine}:purify[{fast_path_label(steps, engine, precision)}]"
    if engine == "openvino":
        from .backend.openvino import OpenvinoRunner

        return OpenvinoRunner(model, threads, name=name, precision=precision)
    return OnnxrtRunner(fast_path_session(path, steps, providers, threads, allow_spinning, model), name=name)


class UnrolledFastPath:
    """``GraphPurifier.fast_path`` of the fused backend on the CPU: ``purify.onnx`` unrolled at T, its eta, lam and
    momentum bound as constants (``backend/onnxrt/unroll.py``), on OpenVINO's CPU plugin or on onnxruntime sessions
    at graph optimisation ``all`` (``fast_path_runner``; ``engine`` resolved by ``resolve_fast_path_engine``). For
    one restart only: with R > 1 the reordered kernels' summation order can flip a near-tie between restarts
    (docs/benchmarks.md, levers), so those calls run the Loop graph at ``extended``. OpenVINO gets no shard runner: it runs a batch on all its threads, and
    splitting the batch over two requests is no faster (docs/benchmarks.md, levers). ``openvino_max_steps``: calls with
    a larger T run on onnxruntime instead (None: no limit). ``precision``: ``bf16`` runs every T on OpenVINO in
    bf16 (``openvino_max_steps`` ignored: the onnxruntime kernels have no bf16). ``bind_settings`` (default on):
    eta, lam and momentum bound as constants; off, fed as inputs like the Loop graph's (``bench/levers.py``'s A/B)."""

    def __init__(self, artifacts: Artifacts, providers, threads: int | None, allow_spinning: bool,
                 engine: str = "onnxruntime", openvino_max_steps: int | None = None, precision: str = "fp32"):
        check_precision(precision, engine)
        self.path = artifacts.path("purify")  # sha256-checked here, like every graph
        self.providers, self.threads, self.allow_spinning = providers, threads, allow_spinning
        self.engine, self.precision = engine, precision
        self.openvino_max_steps = openvino_max_steps if engine == "openvino" and precision == "fp32" else None
        where = FAST_PATH_ENGINE_LABELS[engine] + ("" if precision == "fp32" else f" in {precision}")
        if self.openvino_max_steps is not None:
            where += f" (T <= {self.openvino_max_steps}; {FAST_PATH_ENGINE_LABELS['onnxruntime']} above)"
        self.bind_settings = True
        self.description = (f"purify.onnx unrolled at the call's T (eta, lam, momentum bound) on {where}, one restart, "
                            f"T <= {FAST_PATH_MAX_STEPS}")

    def engine_for(self, steps: int) -> str:
        cap = self.openvino_max_steps
        return "onnxruntime" if cap is not None and steps > cap else self.engine

    def __call__(self, steps: int, shard: bool,
                 bind: dict[str, float] | None = None) -> tuple[BaseRunner, BaseRunner | None]:
        """(runner with ``threads`` threads, one-thread shard runner or None), unrolled once for both, with the scalar
        inputs in ``bind`` fixed (``fast_path_runner``)."""
        from .backend.onnxrt.unroll import UnrolledFromOnnx

        model = UnrolledFromOnnx(self.path, steps, bind if self.bind_settings else None)
        engine = self.engine_for(steps)

        def runner(threads):
            return fast_path_runner(self.path, steps, engine, threads, self.allow_spinning, model, self.providers,
                                    self.precision)

        return runner(self.threads), runner(1) if shard and engine == "onnxruntime" else None


def engine_limits(artifacts: Artifacts, graph: str = "purify") -> dict[str, int]:
    """The most T and R the TensorRT engine of ``graph`` accepts (its profile's ``steps_profile`` /
    ``restarts_profile`` maxima in the manifest; onnxruntime sessions have no such bound)."""
    entry = (artifacts.manifest.get("engines") or {}).get(graph, {})
    return {k: int(entry[f"{k}_profile"]["max"]) for k in ("steps", "restarts") if f"{k}_profile" in entry}


def make_purifier(artifacts: Artifacts, backend: str = "auto", params: PurifyParams | None = None,
                  options: BackendOptions | None = None, **knobs) -> Purifier:
    """Build (not activate) the purifier ``backend`` with ``options`` (``BackendOptions``; ``knobs``: its fields,
    replacing the options' ones); the graphs it needs are sha256-checked here. ``policy.resolve_plan`` makes the
    choices (see ``BackendOptions`` for the defaults) and refuses what cannot run, e.g. ``precision="bf16"`` off the
    fused CPU fast path, rather than silently running fp32; ``build_purifier`` builds the plan."""
    params = params or PurifyParams.from_manifest(artifacts)
    options = replace(options or BackendOptions(), **knobs)
    return build_purifier(artifacts, params, resolve_plan(artifacts, backend, params.restarts, options))


def build_purifier(artifacts: Artifacts, params: PurifyParams, plan: Plan) -> Purifier:
    """The purifier ``plan`` describes (``policy.resolve_plan``), not activated."""
    if plan.backend == "fused":
        fast = None
        if plan.fast_path_engine is not None:
            fast = UnrolledFastPath(artifacts, plan.providers, plan.threads, plan.spin, plan.fast_path_engine,
                                    plan.openvino_max_steps, plan.precision)
        main = ort_runner(artifacts, "purify", plan.providers, plan.threads, plan.spin)
        if plan.shards < 2:
            return GraphPurifier(artifacts, params, main, "fused", fast_path=fast)
        return GraphPurifier(artifacts, params, main, "fused", ort_runner(artifacts, "purify", plan.providers, 1,
                                                                          plan.spin),
                             shards=plan.shards, fast_path=fast)
    if plan.backend == "modular":
        runners = {g: ort_runner(artifacts, g, plan.providers, plan.threads, plan.spin) for g in ModularPurifier.GRAPHS}
        return ModularPurifier(artifacts, params, runners)
    from .backend.trt import EngineFromPath, TrtRunner

    runner = TrtRunner(EngineFromPath(artifacts.engine_path("purify")), name="trt:purify", cuda_graph=plan.cuda_graph)
    return GraphPurifier(artifacts, params, runner, "trt", limits=engine_limits(artifacts))


def make_classifier(artifacts: Artifacts, backend: str, providers=("cpu",), threads: int | None = None,
                    cuda_graph: bool = True) -> Classifier:
    """The classifier on the same kind of backend: a TensorRT engine when ``backend == 'trt'`` and the manifest has
    one, else onnxruntime with ``providers``."""
    check_threads(threads)
    if backend == "trt" and artifacts.has_engine("classifier"):
        from .backend.trt import EngineFromPath, TrtRunner

        runner = TrtRunner(EngineFromPath(artifacts.engine_path("classifier")), name="trt:classifier",
                           cuda_graph=cuda_graph)
    else:
        runner = ort_runner(artifacts, "classifier", providers, threads, True)
    return Classifier(runner, artifacts.classes)
