"""Fault: a replica is killed while requests wait in it; every request is answered (through the documented client
retry), each failed attempt was a 5xx or a lost connection, and Serve brings the replica back."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'vaegan[serve]')")
pytestmark = pytest.mark.slow  # a Ray cluster (shared by the session)

from .conftest import wait_http  # noqa: E402


def replica_actors(app: str) -> dict[str, str]:
    """Serve's replica actors of ``app``: replica id -> actor name (namespace ``serve``)."""
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    prefix = f"SERVE_REPLICA::{app}#"
    return {n.rsplit("#", 1)[1]: n for n in names if n.startswith(prefix)}


def test_killed_replica_loses_no_request(ray_cluster, tiny_artifacts, sample_frames, run_reference):
    import ray
    from ray import serve

    from vaegan.serve.app import build_app
    from vaegan.serve.client import predict

    # a long batch wait holds requests inside the replicas, so the kill finds some of them in flight (no warm-up of
    # the 64 batch sizes: not what this test is about)
    args = {"artifacts": str(tiny_artifacts), "replicas": 2, "max_replicas_per_node": 1, "replica_cpus": 0.5,
            "threads": 1, "max_batch_size": 64, "batch_wait_ms": 1500, "warmup": False}
    serve.run(build_app(args), name="fault", route_prefix="/fault")
    try:
        wait_http("/fault/healthz", ray_cluster.port)
        before = replica_actors("fault")
        assert len(before) == 2
        refs, _ = run_reference
        frames = sample_frames[:16]
        failures, lock = [], threading.Lock()

        def on_retry(attempt, status, message):
            with lock:
                failures.append((status, message))

        url = f"{ray_cluster.url}/fault"
        with ThreadPoolExecutor(len(frames)) as pool:
            futures = [pool.submit(predict, url, p.read_bytes(), retries=6, timeout=60, on_retry=on_retry)
                       for p in frames]
            time.sleep(0.6)  # every request is waiting in a replica's batch queue
            victim = sorted(before)[0]
            ray.kill(ray.get_actor(before[victim], namespace="serve"), no_restart=True)
            answers = [f.result() for f in futures]  # raises if a request stayed unanswered after its retries

        for p, a in zip(frames, answers):
            assert (a["class_id"], a["class_name"]) == (refs[p.name]["class_id"], refs[p.name]["class_name"])
        assert failures, "no request was in flight on the killed replica"
        for status, message in failures:
            assert status is None or 500 <= status < 600, (status, message)
        print(f"\nkilled replica {victim}: {len(failures)} failed attempt(s) retried: "
              f"{sorted({str(s) for s, _ in failures})} ({failures[0][1][:120]}); all {len(frames)} requests answered")

        t0 = time.monotonic()  # Serve's controller replaces the dead replica
        while True:
            now = replica_actors("fault")
            if len(now) == 2 and victim not in now and serve.status().applications["fault"].status == "RUNNING":
                break
            assert time.monotonic() - t0 < 60, f"replica not replaced: {now}"
            time.sleep(0.5)
    finally:
        serve.delete("fault")
