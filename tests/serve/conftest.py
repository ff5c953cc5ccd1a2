"""Fixtures for the service tests: ONE two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``, one CPU
per node) with Serve's HTTP proxies on 127.0.0.1 and a free port, shared by every test of the session, and the shared
application deployed on it once: two replicas of the tiny export, one on each node."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "frames"
RAY_MISSING = "Ray Serve is not installed (pip install 'vaegan[serve]'; make venv installs it)"

# the shared application's limits (small, so the hostile-request tests stay small)
MAX_BODY = 256 * 1024
MAX_PIXELS = 512 * 512
MAX_BATCH = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, path: str, body: bytes | None, method: str = "POST", headers: dict | None = None,
         timeout: float = 60.0):
    """(status, headers, parsed JSON) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        raw = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(raw)
    finally:
        conn.close()


def wait_http(url_path: str, port: int, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while True:
        try:
            if post(port, url_path, None, method="GET", timeout=5)[0] == 200:
                return
        except (OSError, http.client.HTTPException, ValueError):
            pass
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{url_path} not healthy after {timeout} s")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray", reason=RAY_MISSING)
    serve = pytest.importorskip("ray.serve", reason=RAY_MISSING)
    from ray.cluster_utils import Cluster

    t0 = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    port = free_port()
    # Serve's default: an HTTP proxy on every node with a replica, each preferring its own node's replicas. On one
    # machine the two proxies share the port (Serve binds it with SO_REUSEPORT) and the kernel spreads connections
    # over them, as a load balancer in front of a cluster's nodes would.
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    info = SimpleNamespace(cluster=cluster, address=cluster.address, port=port, url=f"http://127.0.0.1:{port}",
                           head_id=cluster.head_node.node_id, worker_id=worker.node_id,
                           start_s=time.monotonic() - t0)
    try:
        yield info
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="session")
def shared_app(ray_cluster, tiny_artifacts):
    """The application at ``/`` (name ``shared``): 2 replicas spread over both nodes (at most one a node), batches of
    up to MAX_BATCH frames, small body and pixel limits."""
    from ray import serve

    from vaegan.serve.app import build_app

    args = {"artifacts": str(tiny_artifacts), "replicas": 2, "max_replicas_per_node": 1, "replica_cpus": 0.5,
            "threads": 1, "max_batch_size": MAX_BATCH, "batch_wait_ms": 20, "max_body_bytes": MAX_BODY,
            "max_pixels": MAX_PIXELS}
    serve.run(build_app(args), name="shared", route_prefix="/")
    wait_http("/healthz", ray_cluster.port)
    return SimpleNamespace(url=ray_cluster.url, port=ray_cluster.port, args=args)


@pytest.fixture(scope="session")
def sample_frames() -> list[Path]:
    from vaegan.runtime.io import IMAGE_EXTS

    frames = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    assert frames, f"no sample frames in {SAMPLES}"
    return frames


@pytest.fixture(scope="session")
def run_reference(tiny_artifacts, sample_frames, tmp_path_factory) -> tuple[dict, Path]:
    """vaegan-run's records on the sample frames with the tiny artifacts, by source file name; and its --out."""
    from click.testing import CliRunner

    from vaegan.runtime.cli import main

    out = tmp_path_factory.mktemp("run_ref")
    res = CliRunner().invoke(main, ["--input", str(SAMPLES), "--artifacts", str(tiny_artifacts), "--out", str(out),
                                    "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return {Path(r["source"]).name: r for r in recs}, out
