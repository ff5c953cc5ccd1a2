"""The Ray Serve application: one deployment, ``VaeganDefense``, whose replicas each hold the runtime's ``Defense``.

HTTP (FastAPI as Serve's ingress; Serve's proxies do the serving, routing and load balancing):

- ``POST /predict[?purified=1]``: the body is one encoded image (``decode.FORMATS``), decoded in memory and
  preprocessed by the runtime's ``Defense.prepare`` (vaegan-run's preprocessing). 200 with JSON ``class_id``,
  ``class_name``, ``confidence``, ``loss`` (and ``purified``: the purified frame as base64 PNG). Headers
  ``X-Vaegan-Node`` (Ray node id), ``X-Vaegan-Replica`` (replica id) and ``X-Vaegan-Batch`` (frames in the purify
  call that served it) say where and how it ran.
- ``GET /healthz``: 200 ``{"status": "ok", ...}`` once the replica's Defense is loaded.
- Refused requests (empty, not an image, truncated, over ``max_pixels`` by its header, body over
  ``max_body_bytes``, bad query, wrong path or method): 4xx with ``{"error": "<one line>"}``. A failure inside the
  purify call: 500 with the same shape (and the traceback in the replica's log). Serve itself answers 5xx while a
  replica is lost; ``vaegan.serve.client.predict`` retries those.

Concurrent requests to a replica are gathered by ``@serve.batch`` into one purify call of up to ``max_batch_size``
frames, waiting at most ``batch_wait_ms`` for a batch to fill; the call runs in a worker thread, so the replica keeps
accepting and decoding requests (the next batch) meanwhile.

``build_app(args)`` is the application builder for ``serve run`` / ``serve deploy`` (``deploy/serve_config.yaml``)
and ``vaegan-serve``; ``args`` is a dict or ``ServeArgs``.
"""

import asyncio
import base64
import io
import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from vaegan.runtime import BackendOptions, Defense

from .decode import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_PIXELS, BadRequest, decode_image

logger = logging.getLogger("ray.serve")

DEPLOYMENT = "VaeganDefense"


class ServeArgs(BaseModel):
    """The application's arguments (``vaegan-serve``'s options; ``args:`` in a Serve config file)."""

    model_config = ConfigDict(extra="forbid")

    artifacts: str = Field(description="directory written by `vaegan-export --out DIR`, at this path on every node")
    replicas: Optional[int] = Field(None, ge=1, description="fixed replica count (default 1 without autoscaling)")
    min_replicas: Optional[int] = Field(None, ge=0, description="autoscaling lower bound (with max_replicas)")
    max_replicas: Optional[int] = Field(None, ge=1, description="autoscaling upper bound (with min_replicas)")
    max_batch_size: int = Field(16, ge=1, description="most frames per purify call (1: no batching)")
    batch_wait_ms: float = Field(5.0, ge=0, description="longest wait for a batch to fill after its first frame")
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1, description="largest request body accepted")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="largest image (width x height, from its header)")
    backend: str = Field("auto", description="the runtime's backend (vaegan-run --backend)")
    fast_path_engine: str = Field("auto", description="the fused CPU fast path's engine (vaegan-run "
                                                      "--fast-path-engine)")
    warmup: bool = Field(True, description="before taking requests, one call per batch size 1..max_batch_size "
                                           "(OpenVINO compiles a model per batch size on first use)")
    threads: Optional[int] = Field(None, ge=1, description="runtime threads per replica (default: replica_cpus)")
    replica_cpus: float = Field(1.0, gt=0, description="Ray CPUs reserved per replica")
    max_replicas_per_node: Optional[int] = Field(None, ge=1, description="spread replicas: at most this many a node")

    @model_validator(mode="after")
    def _scaling(self):
        auto = (self.min_replicas, self.max_replicas)
        if (auto[0] is None) != (auto[1] is None):
            raise ValueError("min_replicas and max_replicas go together")
        if auto[0] is not None:
            if self.replicas is not None:
                raise ValueError("give replicas or min_replicas/max_replicas, not both")
            if auto[0] > auto[1]:
                raise ValueError(f"min_replicas {auto[0]} is above max_replicas {auto[1]}")
        return self

    def deployment_options(self) -> dict:
        """Serve deployment options for these arguments."""
        opts = {
            "ray_actor_options": {"num_cpus": self.replica_cpus},
            # room for a full batch being purified and the next one gathering
            "max_ongoing_requests": max(2 * self.max_batch_size, 4),
            "max_replicas_per_node": self.max_replicas_per_node,
        }
        if self.min_replicas is not None:
            opts["autoscaling_config"] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                          "target_ongoing_requests": self.max_batch_size}
        else:
            opts["num_replicas"] = self.replicas or 1
        return opts


api = FastAPI(title="vaegan-serve", docs_url=None, redoc_url=None, openapi_url=None)


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):
    """Wrong path (404) and wrong method (405), in the service's one-line JSON shape."""
    what = {404: f"no route {request.url.path} (POST /predict, GET /healthz)",
            405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return error(exc.status_code, what, headers=getattr(exc, "headers", None))


@api.exception_handler(RequestValidationError)
async def _bad_query(request: Request, exc: RequestValidationError):
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error(400, f"bad request parameter {where}: {first.get('msg', 'invalid')}")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` (from Content-Length, else while it
    streams in), so an oversized upload is never held whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(400, f"bad Content-Length header {declared[:32]!r}")
        if int(declared) > limit:
            raise BadRequest(413, f"body of {int(declared)} bytes is over the limit of {limit} bytes "
                                  f"(the service's --max-body-bytes)")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise BadRequest(413, f"body is over the limit of {limit} bytes (the service's --max-body-bytes)")
    return bytes(buf)


def png_base64(x) -> str:
    from vaegan.runtime.io import from_model_output

    buf = io.BytesIO()
    from_model_output(x).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@serve.deployment(name=DEPLOYMENT, max_constructor_retry_count=3, health_check_period_s=5)
@serve.ingress(api)
class VaeganDefense:
    def __init__(self, args: dict):
        import ray

        self.args = ServeArgs.model_validate(args)
        threads = self.args.threads or max(1, math.ceil(self.args.replica_cpus))
        self.defense = Defense.load(self.args.artifacts, backend=self.args.backend,
                                    options=BackendOptions(threads=threads,
                                                           fast_path_engine=self.args.fast_path_engine))
        if self.args.warmup:
            c, h, w = self.defense.contract
            for n in range(1, self.args.max_batch_size + 1):
                self.defense(np.zeros((n, c, h, w), dtype=np.float32))
        self.predict_batch.set_max_batch_size(self.args.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(self.args.batch_wait_ms / 1000.0)
        ctx = serve.get_replica_context()
        self.headers = {"X-Vaegan-Node": ray.get_runtime_context().get_node_id(),
                        "X-Vaegan-Replica": ctx.replica_id.unique_id}

    def prepare(self, body: bytes):
        """Body -> 1 x C x H x W float32 in the artifacts' contract: decoded in memory, then the runtime's one
        preprocessing (``Defense.prepare``), per request, so a frame it refuses fails alone and a batch holds only
        model-sized frames."""
        im = decode_image(body, self.args.max_pixels)
        try:
            return self.defense.prepare([im])
        except ValueError as e:  # InputError, or a Pillow mode conversion that does not exist
            raise BadRequest(400, f"image cannot be used ({im.format} {im.mode} {im.size[0]} x {im.size[1]}): "
                                  f"{str(e).strip().splitlines()[0]}") from None

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def predict_batch(self, frames: list) -> list:
        res = await asyncio.to_thread(self.defense, np.concatenate(frames))
        n = len(frames)
        return [{"class_id": int(res.labels[i]), "class_name": str(res.class_names[i]),
                 "confidence": float(res.confidence[i]), "loss": float(res.loss[i]),
                 "purified": res.purified[i], "batch": n} for i in range(n)]

    @api.post("/predict")
    async def predict(self, request: Request, purified: bool = False):
        try:
            body = await read_body(request, self.args.max_body_bytes)
            frame = await asyncio.to_thread(self.prepare, body)
        except BadRequest as e:
            return error(e.status, e.message, self.headers)
        try:
            out = await self.predict_batch(frame)
        except Exception as e:  # reported to the client as a 500 and logged with its traceback, never dropped
            logger.exception("vaegan-serve: purify call failed")
            first = str(e).strip().splitlines()
            return error(500, f"purification failed: {type(e).__name__}: {first[0] if first else ''}", self.headers)
        x = out.pop("purified")
        headers = {**self.headers, "X-Vaegan-Batch": str(out.pop("batch"))}
        if purified:
            out["purified"] = png_base64(x)
        return JSONResponse(out, headers=headers)

    @api.get("/healthz")
    async def healthz(self):
        return JSONResponse({"status": "ok", "artifacts": str(self.args.artifacts),
                             "node_id": self.headers["X-Vaegan-Node"],
                             "replica": self.headers["X-Vaegan-Replica"]}, headers=self.headers)

    def __del__(self):
        d = getattr(self, "defense", None)
        if d is not None:
            d.close()


def build_app(args) -> serve.Application:
    """Application builder (``import_path: vaegan.serve.app:build_app``): ``args`` as in ``ServeArgs``."""
    a = args if isinstance(args, ServeArgs) else ServeArgs.model_validate(dict(args))
    a = a.model_copy(update={"artifacts": str(Path(a.artifacts).expanduser().resolve())})
    return VaeganDefense.options(**a.deployment_options()).bind(a.model_dump())
