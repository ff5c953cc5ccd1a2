"""Both onnxruntime purifier backends against the torch reference ``vaegan.train.purifier.purify`` (same noise),
on 64 real Fashion-MNIST test images: pixels within 1e-4, identical class predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaegan.runtime.artifacts import load_artifacts
from vaegan.runtime.purify import PurifyParams, make_classifier, make_purifier, restart_noise
from vaegan.train import checkpoint
from vaegan.train.config import PurifyConfig
from vaegan.train.purifier import purify

# The export's tolerance for the T-step loop (export/specs.py TOL_LOOP): atol + rtol * max|pixel| = 2e-4 on images.
PIXEL_ATOL = 1e-4 + 1e-4 * 1.0


def _torch_reference(vg_ckpt, clf_ckpt, x, noise, params: PurifyParams):
    vg, _ = checkpoint.load_model(vg_ckpt, "vaegan")
    clf, _ = checkpoint.load_model(clf_ckpt, "classifier")
    cfg = PurifyConfig(steps=params.steps, eta=params.eta, lam=params.lam, momentum=params.momentum,
                       restarts=noise.shape[0])
    with torch.no_grad():
        r = purify(vg, torch.from_numpy(x), cfg, noise=torch.from_numpy(noise))
        logits = clf(r.x)
    return r.x.numpy(), r.loss.numpy(), logits.argmax(1).numpy()


BACKENDS = {"fused": ("fused", {"shard": False}),  # fast path on the default engine (OpenVINO when installed)
            "fused-ort-sharded": ("fused", {"threads": 3, "shard": True, "fast_path_engine": "onnxruntime"}),
            "fused-openvino": ("fused", {"threads": 3, "fast_path_engine": "openvino"}),
            "fused-loop": ("fused", {"threads": 3, "shard": True, "fast_path": False}), "modular": ("modular", {})}
OPENVINO_REASON = "OpenVINO is the optional [openvino] extra (make test installs it)"


def _needs(variant):
    if BACKENDS[variant][1].get("fast_path_engine") == "openvino":
        pytest.importorskip("openvino", reason=OPENVINO_REASON)


def _check(arts_dir, vg_ckpt, clf_ckpt, x, variant, params=None, restarts=1):
    backend, kw = BACKENDS[variant]
    _needs(variant)
    arts = load_artifacts(arts_dir)
    params = params or PurifyParams.from_manifest(arts)
    noise = restart_noise(PurifyParams(**{**params.__dict__, "restarts": restarts, "noise": 0.5}),
                          x.shape[0], arts.latent_dim)
    ref_x, ref_loss, ref_cls = _torch_reference(vg_ckpt, clf_ckpt, x, noise, params)
    with make_purifier(arts, backend, params, **kw) as pur:
        out = pur.purify(x, noise=noise)
        if backend == "fused":  # which graph ran: the unrolled fast path for one restart (CPU default), else the Loop
            fast = restarts == 1 and kw.get("fast_path", True)
            graph = f"purify_fast_T{params.steps}" if fast else "purify"
            # OpenVINO's fast path runs a batch whole (no shard runner); the Loop graph and onnxruntime's shard
            sharded = pur.shards > 1 and not (fast and pur.fast_path.engine_for(params.steps) == "openvino")
            used = {k for k, r in pur.runners.items() if r.last_inference_time() is not None}
            assert used == ({graph + "_shard"} if sharded else {graph}), used
            if kw.get("shard"):  # the rows really went through the one-thread shard sessions
                assert pur.shards == 3
            if "fast_path_engine" in kw and kw.get("fast_path", True):
                assert pur.describe()["fast_path_engine"] == kw["fast_path_engine"]
    clf = make_classifier(arts, backend)
    with clf.runner:
        ids, conf, _ = clf(out.purified, arts.max_batch)
    err = float(np.abs(out.purified - ref_x).max())
    print(f"{variant} R={restarts} T={params.steps}: max |purified - torch| = {err:.2e}, "
          f"max |loss - torch| = {np.abs(out.loss - ref_loss).max():.2e}")
    assert out.purified.shape == x.shape and out.purified.dtype == np.float32
    assert err <= PIXEL_ATOL
    np.testing.assert_allclose(out.loss, ref_loss, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(ids, ref_cls)
    assert np.all((conf > 0) & (conf <= 1))
    return out


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_backend_matches_torch_reference(backend, artifacts_dir, tiny_vaegan_ckpt, tiny_classifier_ckpt, fmnist64):
    x, _ = fmnist64
    out = _check(artifacts_dir, tiny_vaegan_ckpt, tiny_classifier_ckpt, x, backend)
    assert np.abs(out.purified - x).max() > 1e-3  # it really did something


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_restarts_momentum_and_runtime_params(backend, artifacts_dir, tiny_vaegan_ckpt, tiny_classifier_ckpt,
                                              fmnist64):
    """R=3 restarts (restart-major noise), momentum, and T / eta / lam other than the manifest's, without
    re-export."""
    x, _ = fmnist64
    arts = load_artifacts(artifacts_dir)
    params = PurifyParams.from_manifest(arts, steps=4, eta=0.05, lam=0.5, momentum=0.5)
    _check(artifacts_dir, tiny_vaegan_ckpt, tiny_classifier_ckpt, x[:31], backend, params, restarts=3)  # 31 = 10+11+10


def test_fused_and_modular_agree_with_default_noise(artifacts_dir, fmnist64):
    x, _ = fmnist64
    arts = load_artifacts(artifacts_dir)
    params = PurifyParams.from_manifest(arts, restarts=2)
    outs = {}
    for b in ("fused", "modular"):
        with make_purifier(arts, b, params) as pur:
            outs[b] = pur.purify(x[:20])
    np.testing.assert_allclose(outs["fused"].purified, outs["modular"].purified, atol=PIXEL_ATOL)


def test_sharding_single_image_uses_the_threaded_session(artifacts_dir, fmnist64):
    """One image cannot be split: it runs on the intra-op-threaded session, same output as the sharded batch row."""
    x, _ = fmnist64
    arts = load_artifacts(artifacts_dir)
    with make_purifier(arts, "fused", threads=2, shard=True, fast_path=False) as pur:
        one = pur.purify(x[:1])
        assert pur.runners["purify"].last_inference_time() is not None
        many = pur.purify(x[:4])
        assert pur.describe()["shards"] == 2
    np.testing.assert_allclose(one.purified, many.purified[:1], atol=1e-5)
    with make_purifier(arts, "fused", threads=1) as pur:  # one thread: nothing to shard over
        assert pur.shards == 1 and "purify_shard" not in pur.runners


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_fast_path_runs_one_restart_calls_at_their_T(engine, artifacts_dir, fmnist64):
    """The CPU fast path (the Loop unrolled at T, on OpenVINO or onnxruntime 'all'): built for the configured T at
    activation, on first use for another T (at most FAST_PATH_CACHE kept, least recently used dropped), never for
    R > 1; the same rows as the Loop graph. onnxruntime's has a one-thread shard runner, OpenVINO's none."""
    from dataclasses import replace

    from vaegan.runtime.purify import FAST_PATH_CACHE

    if engine == "openvino":
        pytest.importorskip("openvino", reason=OPENVINO_REASON)
    x, _ = fmnist64
    arts = load_artifacts(artifacts_dir)
    params = PurifyParams.from_manifest(arts)
    with make_purifier(arts, "fused", params, threads=2, fast_path=False) as loop, \
            make_purifier(arts, "fused", params, threads=2, fast_path_engine=engine) as pur:
        assert pur.describe()["fast_path"] and loop.describe()["fast_path"] is None
        assert pur.describe()["fast_path_engine"] == engine
        t0 = params.steps
        assert f"purify_fast_T{t0}" in pur.runners  # at activation
        assert (f"purify_fast_T{t0}_shard" in pur.runners) == (engine == "onnxruntime")
        assert not pur.runners["purify"].is_active  # the Loop graph's sessions: built on first use only
        np.testing.assert_allclose(pur.purify(x[:5]).purified, loop.purify(x[:5]).purified, atol=PIXEL_ATOL)
        ran = f"purify_fast_T{t0}" + ("_shard" if engine == "onnxruntime" else "")  # 5 rows: sharded on onnxruntime
        assert pur.runners[ran].last_inference_time() is not None
        assert pur.runners["purify_shard"].last_inference_time() is None  # the Loop graph did not run
        two = replace(params, restarts=2)
        np.testing.assert_allclose(pur.purify(x[:1], params=two).purified, loop.purify(x[:1], params=two).purified,
                                   atol=1e-6)  # R = 2: the Loop graph at 'extended', like `loop`
        assert pur.runners["purify"].last_inference_time() is not None
        ts = [t0 + 1 + k for k in range(FAST_PATH_CACHE)]
        for t in ts:
            p = replace(params, steps=t)
            np.testing.assert_allclose(pur.purify(x[:3], params=p).purified, loop.purify(x[:3], params=p).purified,
                                       atol=PIXEL_ATOL)
        fast = sorted(int(k[len("purify_fast_T"):]) for k in pur.runners if k.startswith("purify_fast_T")
                      and not k.endswith("_shard"))
        assert fast == ts  # the configured T was the least recently used: dropped
    assert not any(k.startswith("purify_fast") for k in pur.runners)  # deactivated with the purifier
    assert not pur.runners["purify"].is_active
    with pytest.raises(RuntimeError, match="not active"):
        pur.purify(x[:1])


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_fast_path_binds_the_settings_of_each_call(engine, artifacts_dir, fmnist64):
    """The fast path's graphs have eta, lam and momentum bound (not fed): a call with other settings at the same T
    gets its own graph, named with them, whose rows are the Loop graph's fed those settings; the configured graph
    keeps its name and its values."""
    from dataclasses import replace

    if engine == "openvino":
        pytest.importorskip("openvino", reason=OPENVINO_REASON)
    x, _ = fmnist64
    arts = load_artifacts(artifacts_dir)
    params = PurifyParams.from_manifest(arts)
    other = replace(params, eta=params.eta * 20, lam=params.lam / 3, momentum=0.5)
    with make_purifier(arts, "fused", params, threads=1, fast_path=False) as loop, \
            make_purifier(arts, "fused", params, threads=1, fast_path_engine=engine) as pur:
        base = f"purify_fast_T{params.steps}"
        assert {m.name for m in pur.runners[base].get_input_metadata()} == {"x", "noise"}
        a, b = pur.purify(x[:4]), pur.purify(x[:4], params=other)
        named = f"{base}_eta{np.float32(other.eta):g}_lam{np.float32(other.lam):g}_mom0.5"
        assert set(k for k in pur.runners if k.startswith("purify_fast")) == {base, named}
        assert pur.runners[named].last_inference_time() is not None
        np.testing.assert_allclose(a.purified, loop.purify(x[:4]).purified, atol=PIXEL_ATOL)
        np.testing.assert_allclose(b.purified, loop.purify(x[:4], params=other).purified, atol=PIXEL_ATOL)
        assert np.abs(a.z - b.z).max() > 1e-2  # the settings reached the graph
        np.testing.assert_array_equal(pur.purify(x[:4]).purified, a.purified)  # the configured graph, unchanged


def test_auto_engine_caps_openvino_at_max_steps(artifacts_dir, fmnist64):
    """``auto``: OpenVINO's fast path up to AUTO_OPENVINO_MAX_STEPS (its compile grows with T), onnxruntime's
    above it (with its shard runner); an explicit engine has no cap."""
    from dataclasses import replace

    from vaegan.runtime.purify import AUTO_OPENVINO_MAX_STEPS

    pytest.importorskip("openvino", reason=OPENVINO_REASON)
    x, _ = fmnist64
    arts = load_artifacts(artifacts_dir)
    params = PurifyParams.from_manifest(arts)
    hi = AUTO_OPENVINO_MAX_STEPS + 1
    with make_purifier(arts, "fused", params, threads=2) as pur:
        assert pur.describe()["fast_path_engine"] == "openvino"
        assert f"T <= {AUTO_OPENVINO_MAX_STEPS}" in pur.describe()["fast_path"]
        pur.purify(x[:2], params=replace(params, steps=AUTO_OPENVINO_MAX_STEPS))
        pur.purify(x[:2], params=replace(params, steps=hi))
        assert pur.runners[f"purify_fast_T{AUTO_OPENVINO_MAX_STEPS}"].name.startswith("openvino:")
        assert f"purify_fast_T{AUTO_OPENVINO_MAX_STEPS}_shard" not in pur.runners
        assert pur.runners[f"purify_fast_T{hi}"].name.startswith("onnxruntime:")
        assert pur.runners[f"purify_fast_T{hi}_shard"].last_inference_time() is not None
    with make_purifier(arts, "fused", params, threads=2, fast_path_engine="openvino") as pur:
        assert pur.fast_path.engine_for(hi) == "openvino"


def test_restart_noise_layout():
    p = PurifyParams(steps=0, eta=0.0, lam=0.0, momentum=0.0, restarts=3, noise=0.5, seed=7)
    a, b = restart_noise(p, 5, 4), restart_noise(p, 5, 4)
    assert a.shape == (3, 5, 4) and a.dtype == np.float32
    assert np.all(a[0] == 0) and np.abs(a[1:]).max() > 0
    np.testing.assert_array_equal(a, b)  # seeded
    assert abs(float(a[1:].std()) - 0.5) < 0.25


@pytest.mark.parametrize("backend", ["fused", "modular"])
def test_shipped_weights_match_torch_reference(backend, shipped_artifacts_dir, shipped_vaegan, shipped_classifier,
                                               fmnist64):
    x, _ = fmnist64
    _check(shipped_artifacts_dir, shipped_vaegan, shipped_classifier, x, backend)
