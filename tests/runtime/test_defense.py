"""``vaegan.runtime.Defense`` on the tiny exported artifacts: result fields and shapes, frames of any size through
the one preprocessing function, batches above ``max_batch``, purify-only, the same labels as ``vaegan-run``,
concurrent calls, and each kind of bad input."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vaegan.runtime import BackendOptions, Defense, InputError, RuntimeUsageError, VaeganRuntimeError
from vaegan.runtime.errors import ArtifactError
from vaegan.runtime.io import to_model_input

STEPS = 2  # a short loop keeps the tests fast; the algorithm is the artifacts', whatever T


@pytest.fixture(scope="module")
def defense(artifacts_dir):
    with Defense.load(artifacts_dir, threads=1, steps=STEPS) as d:
        yield d


def _frames(fmnist64, n: int) -> list[np.ndarray]:
    """n uint8 frames of mixed sizes and layouts: 28 x 28 grayscale, 60 x 45 RGB, 33 x 40 x 1, 30 x 50 RGBA."""
    x, _ = fmnist64
    out = []
    for i in range(n):
        g = (x[i % len(x), 0] * 255).round().astype(np.uint8)
        kind = i % 4
        if kind == 0:
            out.append(g)
        elif kind == 1:
            big = np.asarray(Image.fromarray(g).resize((45, 60), Image.BILINEAR))
            out.append(np.stack([big, big // 2, big // 3], -1))
        elif kind == 2:
            out.append(np.asarray(Image.fromarray(g).resize((40, 33), Image.BILINEAR))[..., None])
        else:
            a = np.asarray(Image.fromarray(g).resize((50, 30), Image.BILINEAR))
            out.append(np.stack([a, a, a, np.full_like(a, 255)], -1))
    return out


def test_result_fields_and_shapes(defense, fmnist64):
    frames = _frames(fmnist64, 6)
    r = defense(frames)
    c, h, w = defense.contract
    assert (c, h, w) == (1, 28, 28) and len(r) == 6
    assert r.purified.shape == (6, c, h, w) and r.purified.dtype == np.float32
    assert r.purified.min() >= 0 and r.purified.max() <= 1
    assert r.labels.shape == (6,) and r.labels.dtype == np.int64
    assert r.class_names == [defense.classes[k] for k in r.labels]
    assert r.confidence.shape == (6,) and np.all((r.confidence > 0) & (r.confidence <= 1))
    assert r.loss.shape == (6,) and np.all(np.isfinite(r.loss))
    assert [rec["class_name"] for rec in r.records()] == r.class_names
    # one frame alone is a batch of one, with the same result as inside the batch (rows are independent)
    one = defense(frames[1])
    assert len(one) == 1 and one.labels[0] == r.labels[1]
    np.testing.assert_allclose(one.purified[0], r.purified[1], atol=1e-5)
    assert defense.backend == "fused" and defense.params.steps == STEPS
    assert defense.describe()["steps"] == STEPS


def test_arrays_go_through_the_one_preprocessing_function(defense, fmnist64):
    """uint8 arrays become exactly what ``to_model_input`` (vaegan-run's function) makes of the same image."""
    pre = defense.artifacts.preprocess
    for f in _frames(fmnist64, 4):
        img = Image.fromarray(f[..., 0] if f.ndim == 3 and f.shape[2] == 1 else f)
        np.testing.assert_array_equal(defense.prepare(f)[0], to_model_input(img, pre))
        np.testing.assert_array_equal(defense.prepare([img])[0], to_model_input(img, pre))
    rgb = _frames(fmnist64, 2)[1]
    np.testing.assert_array_equal(defense.prepare(rgb[..., ::-1].copy(), bgr=True), defense.prepare(rgb))
    stacked = np.stack([f for f in _frames(fmnist64, 8) if f.ndim == 3 and f.shape[:2] == (60, 45)])
    np.testing.assert_array_equal(defense.prepare(stacked), defense.prepare(list(stacked)))  # N x H x W x C


def test_float_batch_in_the_contract_is_taken_as_is(defense, fmnist64):
    x, _ = fmnist64
    r = defense(x[:5])
    np.testing.assert_array_equal(defense.prepare(x[:5]), x[:5])
    p = defense.purify(x[:5])
    np.testing.assert_allclose(p.purified, r.purified, atol=1e-6)
    np.testing.assert_allclose(p.loss, r.loss, rtol=1e-5)


def test_batches_above_max_batch_are_split(artifacts_dir, fmnist64, tmp_path):
    """With the manifest's max_batch at 4, 11 frames run as graph calls of at most 4 rows and give the results of
    one call."""
    small = tmp_path / "artifacts"
    shutil.copytree(artifacts_dir, small)
    m = json.loads((small / "manifest.json").read_text())
    m["max_batch"] = 4
    (small / "manifest.json").write_text(json.dumps(m))
    x, _ = fmnist64
    with Defense.load(artifacts_dir, threads=1, steps=STEPS) as whole:
        ref = whole(x[:11])
    with Defense.load(small, threads=1, steps=STEPS) as d:
        rows = []
        runners = list(d._purifier.runners.values()) + [d._classifier.runner]
        for runner in runners:
            infer = runner.infer

            def spy(feed, _infer=infer, **kw):
                rows.append(feed["x"].shape[0])
                return _infer(feed, **kw)

            runner.infer = spy
        r = d(x[:11])
    assert d.max_batch == 4 and len(r) == 11 and max(rows) <= 4 and sum(rows) == 2 * 11, rows  # purify + classify
    np.testing.assert_array_equal(r.labels, ref.labels)
    np.testing.assert_allclose(r.purified, ref.purified, atol=1e-5)


def test_purify_only(artifacts_dir, fmnist64):
    x, _ = fmnist64
    with Defense.load(artifacts_dir, threads=1, steps=STEPS, classify=False) as d:
        p = d.purify(x[:3])
        assert p.purified.shape == (3, 1, 28, 28) and p.loss.shape == (3,) and not hasattr(p, "labels")
        with pytest.raises(RuntimeUsageError, match="classify=False: call purify"):
            d(x[:3])


def test_same_labels_as_vaegan_run(artifacts_dir, frames_dir, tmp_path):
    """The API on the frames decoded by Pillow, and vaegan-run on the files: same labels, losses and pixels."""
    from vaegan.runtime.cli import main

    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["--input", str(frames_dir), "--artifacts", str(artifacts_dir), "--out", str(out),
                                    "--quiet", "--steps", str(STEPS), "--threads", "1", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    files = sorted(frames_dir.iterdir())
    assert [Path(r["source"]).name for r in recs] == [f.name for f in files]
    frames = [np.asarray(Image.open(f)) for f in files]
    with Defense.load(artifacts_dir, threads=1, steps=STEPS) as d:
        r = d(frames)
    assert [rec["class_id"] for rec in recs] == r.labels.tolist()
    assert [rec["class_name"] for rec in recs] == r.class_names
    np.testing.assert_allclose([rec["loss"] for rec in recs], r.loss, rtol=1e-4, atol=1e-5)
    for rec, p in zip(recs, r.purified):
        png = np.asarray(Image.open(out / rec["purified"]), dtype=np.int16)
        assert np.abs(png - np.rint(p[0] * 255)).max() <= 1


def test_concurrent_calls_match_sequential(artifacts_dir, fmnist64):
    """Four threads calling one Defense at once (two-thread sharded sessions underneath) get what sequential calls
    get."""
    x, _ = fmnist64
    batches = [x[i:i + 3 + i % 4] for i in range(0, 40, 8)]
    with Defense.load(artifacts_dir, threads=2, steps=STEPS) as d:
        assert d.describe()["shards"] == 2
        want = [d(b) for b in batches]
        got, errors = {}, []
        start = threading.Barrier(4)

        def worker(k):
            try:
                start.wait()
                for rep in range(3):
                    for i in range(k % 2, len(batches), 2):
                        got[(k, rep, i)] = d(batches[i])
            except BaseException as e:  # re-raised below in the test's thread
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert len(got) == 3 * sum(len(range(k % 2, len(batches), 2)) for k in range(4))
    for (_, _, i), r in got.items():
        np.testing.assert_array_equal(r.labels, want[i].labels)
        np.testing.assert_allclose(r.purified, want[i].purified, atol=1e-6)


BAD = {
    "float64": (lambda x: x[:2].astype(np.float64), r"dtype float64: expected uint8 frames .* or float32 N x 1 x 28 x 28"),
    "int16": (lambda x: np.zeros((28, 28), np.int16), r"dtype int16"),
    "uint8 2 channels": (lambda x: np.zeros((28, 28, 2), np.uint8),
                         r"frame 0: a uint8 frame of shape \[28, 28, 2\]: expected H x W or H x W x C with C 1, 3 or 4"),
    "float 3 channels": (lambda x: np.repeat(x[:2], 3, axis=1),
                         r"shape \[2, 3, 28, 28\] has 3 channel\(s\): expected float32 N x 1 x 28 x 28"),
    "float wrong size": (lambda x: np.zeros((2, 1, 32, 32), np.float32), r"frames of 32 x 32, expected float32 N x 1"),
    "float one frame": (lambda x: x[0], r"shape \[1, 28, 28\]: expected float32 N x 1 x 28 x 28 \(one frame: x\[None\]\)"),
    "uint8 rank 5": (lambda x: np.zeros((1, 2, 28, 28, 1), np.uint8), r"shape \[1, 2, 28, 28, 1\]: expected one H x W"),
    "empty list": (lambda x: [], r"empty batch: expected at least one frame"),
    "empty float batch": (lambda x: x[:0], r"empty batch \(shape \[0, 1, 28, 28\]\)"),
    "empty frame": (lambda x: np.zeros((0, 5), np.uint8), r"frame 0: a uint8 frame of shape \[0, 5\] is empty"),
    "NaN": (lambda x: np.where(np.arange(784).reshape(1, 1, 28, 28) == 5, np.nan, x[:2]).astype(np.float32),
            r"2 non-finite value\(s\) \(NaN or inf\) in frame\(s\) 0, 1: expected values in \[0, 1\]"),
    "inf": (lambda x: np.concatenate([x[:1], np.full((1, 1, 28, 28), np.inf, np.float32)]),
            r"784 non-finite value\(s\) \(NaN or inf\) in frame\(s\) 1"),
    "out of range": (lambda x: x[:2] * np.float32(255), r"values from 0 to 255: expected float32 N x 1 x 28 x 28 in \[0, 1\]"),
    "float frame in a list": (lambda x: [np.zeros((28, 28), np.uint8), x[0, 0]],
                              r"frame 1: a frame has dtype float32: expected uint8 H x W or H x W x C"),
    "not an array": (lambda x: "frame.png", r"frames of type str: expected a numpy array or a list of uint8 arrays"),
    "not an array in a list": (lambda x: [[1, 2, 3]], r"frame 0: a frame is a list: expected a uint8 numpy array"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_clear_error(defense, fmnist64, case):
    make, msg = BAD[case]
    with pytest.raises(InputError, match=msg) as e:
        defense(make(fmnist64[0]))
    assert isinstance(e.value, VaeganRuntimeError) and isinstance(e.value, ValueError)
    with pytest.raises(InputError, match=msg):
        defense.purify(make(fmnist64[0]))


def test_load_options_and_lifecycle(artifacts_dir, tmp_path, fmnist64):
    with pytest.raises(RuntimeUsageError, match=r"unknown purify setting\(s\) step \(choose from steps, eta"):
        Defense.load(artifacts_dir, step=3)
    with pytest.raises(ArtifactError, match="artifacts directory not found"):
        Defense.load(tmp_path / "nowhere")
    with pytest.raises(RuntimeUsageError, match="unknown backend 'fast'"):
        Defense.load(artifacts_dir, backend="fast")
    d = Defense.load(artifacts_dir, "modular", options=BackendOptions(threads=2), threads=1, steps=1, eta=0.01)
    assert d.backend == "modular" and d.options.threads == 1 and d.params.eta == 0.01
    with d:
        assert len(d(fmnist64[0][:2])) == 2
    assert "closed" in repr(d)
    with pytest.raises(RuntimeUsageError, match="this Defense is closed"):
        d(fmnist64[0][:2])
    d.close()  # twice is fine
    with Defense.load(artifacts_dir, options=BackendOptions(fast_path=False), threads=1, steps=1) as d2:
        assert d2.describe()["fast_path"] is None
