"""``python bench/serve.py``: what ``vaegan-serve`` costs over calling ``Defense`` in-process, on localhost.

In-process: one ``Defense`` (``--threads`` threads) called on the decoded sample frames, one frame per call
(latency) and ``--max-batch-size`` frames per call (throughput); decoding from bytes is included, as the service
does it. Service: a local Ray instance and Serve on 127.0.0.1, the application that ``vaegan-serve`` deploys, with
1 and 2 replicas and batching on (``--max-batch-size``) and off (1); for each, one client sending requests one at a
time (latency: the service's overhead per frame is its p50 minus the in-process one-frame p50), then
``--clients`` concurrent clients on keep-alive connections for ``--seconds`` (throughput, p50/p99 latency). Every
answer's label is checked against the in-process one.

The clients run on the same machine as the replicas: on a small CPU they compete for the same cores, so read the
numbers as a lower bound of what the service gives on its own hardware.

    python bench/serve.py --artifacts artifacts --json reports/serve_bench.json
    python bench/serve.py --quick            # smoke run
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pct(values) -> dict:
    a = np.asarray(values, dtype=np.float64) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "n": int(a.size)}


def in_process(artifacts: str, bodies: list[bytes], threads: int, batch: int, seconds: float) -> dict:
    from vaegan.runtime import BackendOptions, Defense
    from vaegan.serve.decode import decode_image

    with Defense.load(artifacts, options=BackendOptions(threads=threads)) as d:
        for n in sorted({1, batch}):  # first calls build per-size state (OpenVINO compiles per batch size)
            d([decode_image(bodies[0])] * n)
        labels = [int(d([decode_image(b)]).labels[0]) for b in bodies]
        lat, t_end, i = [], time.perf_counter() + seconds, 0
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            d([decode_image(bodies[i % len(bodies)])])
            lat.append(time.perf_counter() - t0)
            i += 1
        n_frames, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            d([decode_image(bodies[(n_frames + k) % len(bodies)]) for k in range(batch)])
            n_frames += batch
        fps = n_frames / (time.perf_counter() - t0)
    return {"labels": labels, "one_frame": {**pct(lat), "fps": round(len(lat) / sum(lat), 1)},
            f"batch_{batch}": {"fps": round(fps, 1)}}


class Client(threading.Thread):
    """Sends requests on one keep-alive connection until ``stop``; records latencies and checks labels."""

    def __init__(self, port: int, bodies, labels, stop: threading.Event, offset: int):
        super().__init__(daemon=True)
        self.port, self.bodies, self.labels, self.stop, self.i = port, bodies, labels, stop, offset
        self.lat, self.batches, self.errors = [], [], []

    def one(self, conn) -> None:
        k = self.i % len(self.bodies)
        self.i += 1
        t0 = time.perf_counter()
        conn.request("POST", "/predict", body=self.bodies[k], headers={"Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        body = r.read()
        self.lat.append(time.perf_counter() - t0)
        if r.status != 200:
            self.errors.append(f"{r.status} {body[:200]!r}")
        elif json.loads(body)["class_id"] != self.labels[k]:
            self.errors.append(f"label differs on frame {k}")
        else:
            self.batches.append(int(r.getheader("X-Vaegan-Batch")))

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            while not self.stop.is_set():
                self.one(conn)
        finally:
            conn.close()


def load(port: int, bodies, labels, clients: int, seconds: float) -> dict:
    stop = threading.Event()
    threads = [Client(port, bodies, labels, stop, offset=7 * j) for j in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = [x for t in threads for x in t.lat]
    batches = [x for t in threads for x in t.batches]
    errors = [x for t in threads for x in t.errors]
    return {"clients": clients, **pct(lat), "fps": round(len(lat) / wall, 1),
            "mean_batch": round(float(np.mean(batches)), 2) if batches else None, "errors": errors[:5],
            "n_errors": len(errors)}


@click.command()
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(file_okay=False))
@click.option("--frames", default=str(ROOT / "samples" / "frames"), show_default=True,
              type=click.Path(file_okay=False))
@click.option("--threads", type=int, default=1, show_default=True, help="runtime threads per replica / in-process")
@click.option("--max-batch-size", type=int, default=16, show_default=True)
@click.option("--batch-wait-ms", type=float, default=5.0, show_default=True)
@click.option("--clients", type=int, default=16, show_default=True, help="concurrent clients of the load phase")
@click.option("--seconds", type=float, default=10.0, show_default=True, help="per measurement")
@click.option("--port", type=int, default=8123, show_default=True)
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False))
@click.option("--quick", is_flag=True, help="smoke run: 2 s per measurement, 1 replica only")
def main(artifacts, frames, threads, max_batch_size, batch_wait_ms, clients, seconds, port, json_out, quick):
    import ray
    from ray import serve

    from vaegan.runtime.io import IMAGE_EXTS
    from vaegan.serve.app import build_app

    if quick:
        seconds = 2.0
    bodies = [p.read_bytes() for p in sorted(Path(frames).iterdir()) if p.suffix.lower() in IMAGE_EXTS]
    report = {"artifacts": str(artifacts), "threads": threads, "max_batch_size": max_batch_size,
              "batch_wait_ms": batch_wait_ms, "clients": clients, "seconds": seconds, "cpus": os.cpu_count()}
    ref = in_process(artifacts, bodies, threads, max_batch_size, seconds)
    labels = ref.pop("labels")
    report["in_process"] = ref
    click.echo(f"in-process: one frame p50 {ref['one_frame']['p50_ms']} ms p99 {ref['one_frame']['p99_ms']} ms "
               f"({ref['one_frame']['fps']} frames/s); batch {max_batch_size}: "
               f"{ref[f'batch_{max_batch_size}']['fps']} frames/s")

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows = []
    try:
        for replicas in ((1,) if quick else (1, 2)):
            for batch in (max_batch_size, 1):
                args = {"artifacts": artifacts, "replicas": replicas, "threads": threads, "replica_cpus": 1,
                        "max_batch_size": batch, "batch_wait_ms": batch_wait_ms}
                t0 = time.perf_counter()
                serve.run(build_app(args), name="bench", route_prefix="/")
                ready_s = time.perf_counter() - t0
                single = load(port, bodies, labels, 1, seconds)
                many = load(port, bodies, labels, clients, seconds)
                row = {"replicas": replicas, "max_batch_size": batch, "deploy_s": round(ready_s, 1),
                       "one_client": single, f"{clients}_clients": many,
                       "overhead_ms_per_frame": round(single["p50_ms"] - ref["one_frame"]["p50_ms"], 3)}
                rows.append(row)
                click.echo(f"{replicas} replica(s), batch {'off' if batch == 1 else f'<= {batch}'}: "
                           f"1 client p50 {single['p50_ms']} ms p99 {single['p99_ms']} ms "
                           f"(overhead {row['overhead_ms_per_frame']} ms/frame); {clients} clients "
                           f"{many['fps']} frames/s p50 {many['p50_ms']} ms p99 {many['p99_ms']} ms, mean batch "
                           f"{many['mean_batch']}; errors {single['n_errors'] + many['n_errors']}")
                serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    report["service"] = rows
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(report, indent=2) + "\n")
    if any(r["one_client"]["n_errors"] or r[f"{clients}_clients"]["n_errors"] for r in rows):
        raise SystemExit("some answers were errors or differed from the in-process labels (see the JSON)")


if __name__ == "__main__":
    main()
