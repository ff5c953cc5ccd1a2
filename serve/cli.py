"""``vaegan-serve``: deploy the defended classifier on Ray Serve and serve it until interrupted.

Without ``--address`` it starts a local Ray instance (and stops it on exit); with one it joins that cluster, deploys
the application there, and on exit deletes only that application. Exit codes: 0 after a clean shutdown (SIGINT or
SIGTERM), 2 usage, artifact or deployment error (one line on stderr).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import click

from vaegan import __version__
from vaegan.runtime.names import BACKENDS, FAST_PATH_ENGINES

EXIT_OK, EXIT_USAGE = 0, 2
INSTALL_HINT = "vaegan-serve needs Ray Serve: pip install 'vaegan[serve]'"


def fail(message: str) -> None:
    click.echo(f"vaegan-serve: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


@click.command(help="Serve the defended classifier over HTTP on Ray Serve: POST /predict with one encoded image "
                    "(?purified=1 adds the purified frame as base64 PNG), GET /healthz. Runs until interrupted.")
@click.version_option(__version__, prog_name="vaegan-serve")
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(file_okay=False),
              help="directory written by `vaegan-export --out DIR` (the same path on every node of a cluster)")
@click.option("--replicas", type=click.IntRange(1), default=None, help="fixed number of replicas [default: 1]")
@click.option("--min-replicas", type=click.IntRange(0), default=None, help="autoscale between this ...")
@click.option("--max-replicas", type=click.IntRange(1), default=None, help="... and this many replicas")
@click.option("--max-batch-size", type=click.IntRange(1), default=16, show_default=True,
              help="most concurrent requests a replica purifies in one call (1: no batching)")
@click.option("--batch-wait-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="longest wait for a batch to fill after its first request")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address the HTTP proxies bind (0.0.0.0 to accept other machines)")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--address", default=None, metavar="RAY_ADDRESS",
              help="join this Ray cluster (e.g. auto, or HEAD_IP:6379) instead of starting a local one")
@click.option("--max-body-bytes", type=click.IntRange(1), default=None,
              help="largest request body accepted (413 above) [default: 16 MiB]")
@click.option("--max-pixels", type=click.IntRange(1), default=None,
              help="largest image, width x height read from its header before decoding (413 above) "
                   "[default: 2048 x 2048]")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="the runtime's backend (as vaegan-run)")
@click.option("--fast-path-engine", type=click.Choice(FAST_PATH_ENGINES), default="auto", show_default=True,
              help="the fused CPU fast path's engine (as vaegan-run)")
@click.option("--warmup/--no-warmup", default=True, show_default=True,
              help="each replica runs every batch size 1..--max-batch-size once before taking requests")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="runtime threads per replica [default: --replica-cpus, rounded up]")
@click.option("--replica-cpus", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="Ray CPUs reserved per replica")
@click.option("--max-replicas-per-node", type=click.IntRange(1), default=None,
              help="spread replicas: at most this many on one node")
@click.option("--name", default="vaegan", show_default=True, help="Serve application name")
@click.option("--route-prefix", default="/", show_default=True, help="URL prefix of the application")
@click.option("--num-cpus", type=click.IntRange(1), default=None,
              help="CPUs of the local Ray instance (without --address) [default: all]")
def main(artifacts, replicas, min_replicas, max_replicas, max_batch_size, batch_wait_ms, host, port, address,
         max_body_bytes, max_pixels, backend, fast_path_engine, warmup, threads, replica_cpus, max_replicas_per_node,
         name, route_prefix, num_cpus):
    try:
        import ray
        from ray import serve
    except ImportError:
        fail(INSTALL_HINT)
    from pydantic import ValidationError

    from vaegan.runtime.artifacts import load_artifacts
    from vaegan.runtime.errors import VaeganRuntimeError

    from .app import ServeArgs, build_app

    args = {"artifacts": artifacts, "replicas": replicas, "min_replicas": min_replicas, "max_replicas": max_replicas,
            "max_batch_size": max_batch_size, "batch_wait_ms": batch_wait_ms, "backend": backend,
            "fast_path_engine": fast_path_engine, "warmup": warmup,
            "threads": threads, "replica_cpus": replica_cpus, "max_replicas_per_node": max_replicas_per_node}
    args.update({k: v for k, v in (("max_body_bytes", max_body_bytes), ("max_pixels", max_pixels)) if v is not None})
    try:
        sargs = ServeArgs.model_validate(args)
        load_artifacts(sargs.artifacts).verify()  # here, before replicas start: one line instead of a crash loop
    except ValidationError as e:
        err = e.errors()[0]
        fail(f"{'.'.join(map(str, err['loc'])) or 'options'}: {err['msg']}")
    except VaeganRuntimeError as e:
        fail(str(e))

    started = address is None and not os.environ.get("RAY_ADDRESS")
    try:
        ray.init(address=address, num_cpus=num_cpus if started else None, include_dashboard=False,
                 log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        fail(f"cannot {'start' if started else 'join'} Ray{'' if started else ' at ' + address}: {e}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own SIGTERM handler
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(build_app(sargs), name=name, route_prefix=route_prefix)
        except RuntimeError as e:  # a replica that cannot start (Serve gives up after the constructor retries)
            fail(f"deploying {name} failed: {str(e).strip().splitlines()[0]}")
        url = f"http://{host}:{port}{route_prefix.rstrip('/')}"
        click.echo(f"vaegan-serve: serving {sargs.artifacts} at {url}/predict (health: {url}/healthz); "
                   f"Ctrl-C to stop", err=True)
        click.echo(url, err=False)
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
        click.echo("vaegan-serve: shutting down", err=True)
    finally:
        if ray.is_initialized():
            if started:
                serve.shutdown()
            else:
                try:
                    serve.delete(name)
                except Exception as e:  # the cluster may be gone already; say so, the exit still happens
                    click.echo(f"vaegan-serve: could not delete application {name}: {e}", err=True)
            ray.shutdown()
    sys.exit(EXIT_OK)


if __name__ == "__main__":  # pragma: no cover
    main()
