"""The service over real HTTP on 127.0.0.1, on a real two-node Ray cluster (tests/serve/conftest.py): answers equal
vaegan-run's, both nodes answer, batching, and hostile requests."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'vaegan[serve]')")
pytestmark = pytest.mark.slow  # a Ray cluster (shared by the session)

from .conftest import MAX_BATCH, MAX_BODY, MAX_PIXELS, post  # noqa: E402

from vaegan.export.specs import TOL_LOOP  # noqa: E402


def close(got: float, ref: float) -> bool:
    """vaegan-run's value (rounded to 6 decimals) against the service's, within the purify loop's export tolerance."""
    return abs(got - ref) <= TOL_LOOP["atol"] + TOL_LOOP["rtol"] * abs(ref) + 1e-6


def check_same(answer: dict, ref: dict, name: str) -> None:
    assert (answer["class_id"], answer["class_name"]) == (ref["class_id"], ref["class_name"]), name
    assert close(answer["confidence"], ref["confidence"]), (name, answer["confidence"], ref["confidence"])
    assert close(answer["loss"], ref["loss"]), (name, answer["loss"], ref["loss"])


def test_predict_equals_vaegan_run(shared_app, sample_frames, run_reference):
    """Every sample frame through the documented client, 8 at a time (so they batch): labels, confidences and losses
    as vaegan-run's; ?purified=1 returns vaegan-run's purified PNG."""
    from PIL import Image

    from vaegan.serve.client import predict

    refs, out = run_reference
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: predict(shared_app.url, p.read_bytes(), retries=0), sample_frames))
    assert len(answers) == len(sample_frames) == len(refs)
    for p, a in zip(sample_frames, answers):
        check_same(a, refs[p.name], p.name)
        assert "purified" not in a

    p = sample_frames[0]
    a = predict(shared_app.url, p.read_bytes(), retries=0, purified=True)
    check_same(a, refs[p.name], p.name)
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(a["purified"]))), dtype=np.int16)
    ref = np.asarray(Image.open(out / refs[p.name]["purified"]), dtype=np.int16)
    assert got.shape == ref.shape == (28, 28)
    assert np.abs(got - ref).max() <= 1  # one grey level: the same float image, rounded once each


def test_both_nodes_answer_and_batch(ray_cluster, shared_app, sample_frames, run_reference):
    """The two replicas sit on the two nodes; concurrent requests are answered by both (X-Vaegan-Node), with the same
    results as vaegan-run, in batches of more than one frame and at most --max-batch-size."""
    refs, _ = run_reference
    bodies = [(p.name, p.read_bytes()) for p in sample_frames] * 2
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda nb: (nb[0], *post(shared_app.port, "/predict", nb[1])), bodies))
    nodes, batches = {}, []
    for name, status, headers, body in got:
        assert status == 200, (name, body)
        check_same(body, refs[name], name)
        nodes.setdefault(headers["x-vaegan-node"], set()).add(headers["x-vaegan-replica"])
        batches.append(int(headers["x-vaegan-batch"]))
    assert set(nodes) == {ray_cluster.head_id, ray_cluster.worker_id}
    assert all(len(replicas) == 1 for replicas in nodes.values())  # one replica per node
    assert 1 < max(batches) <= MAX_BATCH


def test_healthz(ray_cluster, shared_app):
    status, headers, body = post(shared_app.port, "/healthz", None, method="GET")
    assert status == 200 and body["status"] == "ok"
    assert body["node_id"] == headers["x-vaegan-node"] in (ray_cluster.head_id, ray_cluster.worker_id)


def _png(size, mode="L", text: str | None = None) -> bytes:
    from PIL import Image, PngImagePlugin

    info = None
    if text is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("comment", text)
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _raw(port: int, head: bytes, body_part: bytes):
    """Send a request head and only part of a body, then read the answer (a client that announces a huge body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + body_part)
        r = http.client.HTTPResponse(s)
        r.begin()
        return r.status, json.loads(r.read())


def _chunked(port: int, chunks: list[bytes]):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/predict", body=iter(chunks), encode_chunked=True,
                     headers={"Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


_FRAME = sorted((Path(__file__).resolve().parents[2] / "samples" / "frames").glob("*.png"))[0].read_bytes()

BAD = {
    "empty body": (lambda port: post(port, "/predict", b"")[::2], 400, r"^empty body"),
    "not an image": (lambda port: post(port, "/predict", b"GIF89a? no: plain text")[::2], 400,
                     r"^not an image in a supported format"),
    "truncated": (lambda port: post(port, "/predict", _FRAME[: len(_FRAME) // 2])[::2], 400,
                  r"cannot be decoded: OSError: image file is truncated"),
    "broken header": (lambda port: post(port, "/predict", _FRAME[:20])[::2], 400, r"^(not an image|unreadable)"),
    "decompression bomb": (lambda port: post(port, "/predict", _png((1024, 1024)))[::2], 413,
                           rf"1024 x 1024 = 1048576 pixels, the limit is {MAX_PIXELS}"),
    "body over the limit": (lambda port: _raw(port, f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                                    f"{50 * MAX_BODY}\r\n\r\n".encode(), b"\x89PNG" * 64), 413,
                            rf"body of {50 * MAX_BODY} bytes is over the limit of {MAX_BODY} bytes"),
    "chunked body over the limit": (lambda port: _chunked(port, [b"\0" * (MAX_BODY // 2)] * 2 + [b"\0"]), 413,
                                    rf"body is over the limit of {MAX_BODY} bytes"),
    "wrong path": (lambda port: post(port, "/classify", _FRAME)[::2], 404, r"^no route /classify"),
    "wrong method": (lambda port: post(port, "/predict", None, method="GET")[::2], 405,
                     r"^GET is not allowed on /predict"),
    "wrong method on healthz": (lambda port: post(port, "/healthz", _FRAME, method="PUT")[::2], 405,
                                r"^PUT is not allowed on /healthz"),
    "bad query": (lambda port: post(port, "/predict?purified=maybe", _FRAME)[::2], 400,
                  r"^bad request parameter query\.purified"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_is_a_4xx_and_the_service_goes_on(shared_app, case):
    import re

    send, want_status, pattern = BAD[case]
    status, body = send(shared_app.port)
    assert status == want_status, body
    assert set(body) == {"error"} and "\n" not in body["error"]
    assert re.search(pattern, body["error"]), body["error"]
    ok = post(shared_app.port, "/predict", _FRAME)
    assert ok[0] == 200 and "class_id" in ok[2]


def test_malformed_http_is_refused_by_serve(shared_app):
    """Below the application: Serve's HTTP server (uvicorn) answers a request it cannot parse with 400 itself (plain
    text, not the service's JSON), and the service goes on."""
    with socket.create_connection(("127.0.0.1", shared_app.port), timeout=30) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
        r = http.client.HTTPResponse(s)
        r.begin()
        assert r.status == 400
    assert post(shared_app.port, "/predict", _FRAME)[0] == 200


def test_no_request_data_reaches_the_filesystem(ray_cluster, shared_app):
    """A marker inside a valid PNG (a text chunk) and inside a refused body is found in no file under Ray's session
    folder (replica logs, working folders, spill) after the requests were served."""
    import ray

    marker = uuid.uuid4().hex
    assert post(shared_app.port, "/predict", _png((28, 28), text=marker))[0] == 200
    assert post(shared_app.port, "/predict", f"not an image {marker}".encode() * 8)[0] == 400
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    assert session.is_dir()
    needle, seen = marker.encode(), 0
    for dirpath, _, files in os.walk(session):
        for f in files:
            p = Path(dirpath) / f
            try:
                data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
            except OSError:  # sockets, files removed meanwhile
                continue
            seen += 1
            assert needle not in data, p
    assert seen > 0
