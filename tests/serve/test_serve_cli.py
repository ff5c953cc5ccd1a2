"""``vaegan-serve`` itself: the install hint without Ray, one-line usage errors, and a real run that joins the test
cluster, serves, and on SIGINT deletes its own application only; deploy/serve_config.yaml deploys the same app."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from vaegan.serve.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_without_ray_says_how_to_install(monkeypatch, tiny_artifacts):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    res = CliRunner().invoke(main, ["--artifacts", str(tiny_artifacts)])
    assert res.exit_code == 2
    assert res.output.strip() == "vaegan-serve: error: vaegan-serve needs Ray Serve: pip install 'vaegan[serve]'"


@pytest.mark.parametrize("argv,pattern", [
    (["--artifacts", "/nonexistent/artifacts"], r"/nonexistent/artifacts: artifacts directory not found"),
    (["--replicas", "2", "--min-replicas", "1", "--max-replicas", "3"], r"not both"),
    (["--min-replicas", "1"], r"min_replicas and max_replicas go together"),
    (["--min-replicas", "3", "--max-replicas", "2"], r"min_replicas 3 is above max_replicas 2"),
])
def test_usage_errors_are_one_line(tmp_path, argv, pattern):
    import re

    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'vaegan[serve]')")
    if "--artifacts" not in argv:
        argv = ["--artifacts", str(tmp_path)] + argv  # the options are checked before the artifacts
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaegan-serve: error: ") and re.search(pattern, lines[0]), lines


@pytest.mark.slow
def test_serves_on_a_cluster_until_sigint(ray_cluster, shared_app, tiny_artifacts, sample_frames):
    """vaegan-serve --address joins the running cluster, prints its URL, answers, and on SIGINT exits 0 having
    deleted its own application and left the others running."""
    from ray import serve

    from vaegan.serve.client import predict

    from .conftest import post, wait_http

    cmd = [sys.executable, "-m", "vaegan.serve.cli", "--artifacts", str(tiny_artifacts), "--address",
           ray_cluster.address, "--port", str(ray_cluster.port), "--name", "cli", "--route-prefix", "/cli",
           "--replica-cpus", "0.25", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_http("/cli/healthz", ray_cluster.port, timeout=120)
        answer = predict(f"{ray_cluster.url}/cli", sample_frames[0].read_bytes(), retries=0)
        assert set(answer) == {"class_id", "class_name", "confidence", "loss"}
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == f"{ray_cluster.url}/cli"
    assert "vaegan-serve: shutting down" in err
    apps = serve.status().applications
    assert "cli" not in apps and apps["shared"].status == "RUNNING"
    assert post(ray_cluster.port, "/healthz", None, method="GET")[0] == 200


@pytest.mark.slow
def test_serve_config_deploys_the_same_application(ray_cluster, tiny_artifacts, sample_frames):
    """deploy/serve_config.yaml validates as a Serve deploy config, and its import path and args (artifacts and
    replica CPUs set for this machine) deploy an application that answers."""
    import yaml
    from ray import serve
    from ray._common.utils import import_attr
    from ray.serve.schema import ServeDeploySchema

    from vaegan.serve.client import predict

    from .conftest import wait_http

    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "deploy" / "serve_config.yaml").read_text()))
    (app,) = config.applications
    assert app.import_path == "vaegan.serve.app:build_app"
    args = {**app.args, "artifacts": str(tiny_artifacts), "replica_cpus": 0.25, "threads": 1, "max_replicas": 1}
    serve.run(import_attr(app.import_path)(args), name="config", route_prefix="/config")
    try:
        wait_http("/config/healthz", ray_cluster.port)
        t0 = time.monotonic()
        answer = predict(f"{ray_cluster.url}/config", sample_frames[0].read_bytes(), retries=2)
        assert answer["class_name"] and time.monotonic() - t0 < 60
    finally:
        serve.delete("config")
