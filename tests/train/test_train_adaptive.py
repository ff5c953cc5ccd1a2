"""Adaptive attacks (vaegan.train.adaptive) on the tiny random-init nets and a handful of images."""

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from vaegan.train import checkpoint
from vaegan.train.adaptive import (AdaptiveConfig, RandomizedPurifier, RuntimeModel, StraightThrough, TrackedPGD,
                                   _full_fp32, fab, margin, merge_reports, pack_mask, unpack_mask,
                                   write_adaptive)
from vaegan.train.cli import adaptive_cli
from vaegan.train.config import PurifyConfig
from vaegan.train.errors import VaeganError
from vaegan.train.purifier import Defended, Purifier, purify

from ..conftest import requires_data

CFG = PurifyConfig(steps=3, eta=0.05)


def _calibrate_bn(net, *batches):
    """Set every BatchNorm's statistics to those of one batch per callable (training-mode forward)."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics to that batch's
    net.train()
    with torch.no_grad():
        for fn in batches:
            fn()
    return net.eval()


@pytest.fixture(scope="module")
def live_ckpts(tmp_path_factory, tiny_vaegan_ckpt, tiny_classifier_ckpt):
    """The tiny checkpoints with BatchNorm statistics calibrated on one batch of noise: with the init statistics
    the classifier's activations vanish through 13 layers (logits independent of the input) and G(z) is a flat grey
    image whatever z, so there would be nothing to attack."""
    g = torch.Generator().manual_seed(2)
    out = tmp_path_factory.mktemp("live")
    paths = []
    for kind, src in (("vaegan", tiny_vaegan_ckpt), ("classifier", tiny_classifier_ckpt)):
        net, raw = checkpoint.load_model(src, kind)
        if kind == "classifier":
            _calibrate_bn(net, lambda: net(torch.rand(64, 1, 28, 28, generator=g)))
        else:
            _calibrate_bn(net, lambda: net.encoder(torch.rand(64, 1, 28, 28, generator=g)),
                          lambda: net.decoder(torch.randn(64, net.args.latent_dim, generator=g)))
        path = out / f"live_{kind}.pt"
        checkpoint.save(path, {**{k: v for k, v in raw.items() if k != "format"}, "model": net.state_dict()})
        paths.append(path)
    return tuple(paths)


@pytest.fixture(scope="module")
def nets(live_ckpts):
    return checkpoint.load_model(live_ckpts[0], "vaegan")[0], checkpoint.load_model(live_ckpts[1], "classifier")[0]


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 1, 28, 28, generator=g), torch.tensor([0, 3, 5, 7])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, live_ckpts):
    from vaegan.export import export_all

    out = tmp_path_factory.mktemp("adaptive_artifacts")
    export_all(*live_ckpts, out, opset=18, max_batch=16, echo=lambda *a, **k: None)
    return out


def test_bpda_gradient_is_the_classifier_gradient_at_purify_x(nets, batch):
    vg, clf = nets
    x, y = batch
    xg = x.clone().requires_grad_(True)
    out = Defended(StraightThrough(Purifier(vg, CFG)), clf)(xg)
    g_bpda, = torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), xg)
    p = purify(vg, x, CFG).x.detach().requires_grad_(True)
    ref_logits = clf(p)
    g_ref, = torch.autograd.grad(F.cross_entropy(ref_logits, y, reduction="sum"), p)
    assert torch.allclose(out, ref_logits, atol=1e-5)  # forward: the real defended model
    assert g_bpda.abs().sum() > 0
    assert torch.allclose(g_bpda, g_ref, atol=1e-6)


def test_full_gradient_pgd_through_all_steps_lowers_the_defended_margin(nets, batch):
    vg, clf = nets
    x, y = batch
    full = Defended(Purifier(vg, CFG, differentiable=True), clf).eval()
    defended = Defended(Purifier(vg, CFG), clf).eval()
    atk = TrackedPGD(full, eps=0.1, alpha=0.02, steps=3, loss="margin", checkpoints=(1, 2), seed=0)
    g, _ = atk.gradient(x, y)
    bpda_g, _ = TrackedPGD(Defended(StraightThrough(Purifier(vg, CFG)), clf).eval(), loss="margin").gradient(x, y)
    assert g.abs().sum() > 0 and not torch.allclose(g, bpda_g)  # it goes through the unrolled loop
    x_adv = atk(x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        before, after = margin(defended(x), y), margin(defended(x_adv), y)
        assert defended(x).std(0).max() > 1e-5  # the logits depend on the input (weakly: a random-init G)
    assert after.mean() < before.mean() - 1e-4
    assert set(atk.curve) == {1, 2, 3} and atk.fooled.shape == (4,)
    assert not clf.training  # torchattacks restores the wrapper's mode: it must have been eval


def test_fab_t_keeps_only_perturbations_that_fool_within_eps(nets, batch):
    _, clf = nets
    clf = clf.eval()
    x, _ = batch
    with torch.no_grad():
        y = clf(x).argmax(1)  # labels = the classifier's own predictions: every image starts correct
    x_adv = fab(clf, eps=0.3, steps=5, seed=0, targets=2)(x, y)
    changed = (x_adv - x).flatten(1).abs().amax(1) > 0
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        pred = clf(x_adv).argmax(1)
    assert changed.any()                          # a random-init classifier is fooled within 0.3 somewhere
    assert (pred[changed] != y[changed]).all()    # FAB returns a perturbed image only where it fools
    assert (pred[~changed] == y[~changed]).all()


def test_full_eot_gradient_goes_through_the_randomized_loop_with_its_draws(nets, batch):
    """full_eot's model: the exact gradient through the T steps of the randomized purifier, for the noise it drew
    (the same seed draws the same noise), not BPDA's straight-through gradient."""
    vg, clf = nets
    x, y = batch
    rcfg = PurifyConfig(steps=2, eta=0.05, restarts=2, noise=1.0)
    noise = RandomizedPurifier(vg, rcfg, seed=5).noise(len(x))
    xg = x.clone().requires_grad_(True)
    g, = torch.autograd.grad(F.cross_entropy(clf(RandomizedPurifier(vg, rcfg, seed=5, differentiable=True)(xg)), y,
                                             reduction="sum"), xg)
    xr = x.clone().requires_grad_(True)
    g_ref, = torch.autograd.grad(F.cross_entropy(clf(purify(vg, xr, rcfg, noise=noise, create_graph=True).x), y,
                                                 reduction="sum"), xr)
    xb = x.clone().requires_grad_(True)
    g_bpda, = torch.autograd.grad(F.cross_entropy(clf(StraightThrough(RandomizedPurifier(vg, rcfg, seed=5))(xb)), y,
                                                  reduction="sum"), xb)
    assert g.abs().sum() > 0 and torch.allclose(g, g_ref, atol=1e-6)
    assert not torch.allclose(g, g_bpda, atol=1e-4)


@pytest.mark.parametrize("eot_rows", [2000, 4])
def test_eot_averages_the_configured_number_of_samples(nets, batch, eot_rows):
    vg, clf = nets
    x, y = batch
    rcfg = PurifyConfig(steps=1, restarts=3, noise=1.0)
    rp = RandomizedPurifier(vg, rcfg, seed=7)
    atk = TrackedPGD(Defended(StraightThrough(rp), clf).eval(), eot_iter=20, eot_rows=eot_rows)
    g, logits = atk.gradient(x, y)
    assert rp.draws == 20 * len(x)
    assert rp.calls == (1 if eot_rows == 2000 else 20)
    assert logits.shape == (4, 10)
    with pytest.raises(VaeganError, match="no randomness"):
        RandomizedPurifier(vg, PurifyConfig(restarts=1), noisy_seed=False)
    # the gradient is the mean of the per-sample BPDA gradients (replayed with the same noise stream)
    if eot_rows == 4:
        ref = RandomizedPurifier(vg, rcfg, seed=7)
        grads = []
        for _ in range(20):
            xs = x.clone().requires_grad_(True)
            out = clf(xs + (ref(xs) - xs).detach())  # = clf(purify_s(x)); d/dx = the classifier's gradient there
            grads.append(torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), xs)[0])
        err = (g - torch.stack(grads).mean(0)).abs().max().item()
        assert err < 1e-5 * g.abs().max().item() + 1e-6, err
        assert not all(torch.allclose(grads[0], gs) for gs in grads[1:])  # the draws really differ


def test_square_queries_the_runtime_wrapper_for_scores_only(nets, batch, artifacts):
    import torchattacks

    vg, clf = nets
    x, y = batch
    rt = RuntimeModel(artifacts, PurifyConfig()).eval()
    outputs = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rt = rt

        def forward(self, inp):
            out = self.rt(inp)
            outputs.append(out)
            return out

    spy = Spy().eval()
    xg = x.clone().requires_grad_(True)
    out = rt(xg)
    assert out.grad_fn is None and not out.requires_grad  # no gradient path from the runtime's scores
    with torch.no_grad():
        ref = Defended(Purifier(vg, PurifyConfig()), clf).eval()(x)
    assert torch.allclose(out, ref, atol=1e-3)  # the wrapper is the same model
    q0 = rt.queries
    x_adv = torchattacks.Square(spy, norm="Linf", eps=0.1, n_queries=4, seed=0)(x, y)
    rt.close()
    assert rt.queries > q0 and outputs and all(o.grad_fn is None and not o.requires_grad for o in outputs)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6


def test_bad_input_is_a_one_line_error():
    with pytest.raises(VaeganError, match="unknown adaptive attack 'pgd'"):
        AdaptiveConfig(attacks=("bpda", "pgd"))
    with pytest.raises(VaeganError, match="eps 1.5 out of range"):
        AdaptiveConfig(eps=(0.1, 1.5))
    r = CliRunner().invoke(adaptive_cli, ["--attacks", "bpda,deepfool"])
    assert r.exit_code == 1 and r.output.strip() == (
        "Error: unknown adaptive attack 'deepfool' (expected one of bpda, bpda_eot, full, full_eot, apgd, fab, square, "
        "transfer, latent)")
    for bad in ("-0.1", "0.1,2"):
        r = CliRunner().invoke(adaptive_cli, ["--eps", bad])
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "out of range" in r.output
    r = CliRunner().invoke(adaptive_cli, ["--eps", "a"])
    assert r.exit_code == 1 and "expected comma-separated numbers" in r.output and "Traceback" not in r.output
    with pytest.raises(VaeganError, match="unknown device 'gpu0'"):
        AdaptiveConfig(device="gpu0")
    if not torch.cuda.is_available():
        r = CliRunner().invoke(adaptive_cli, ["--device", "cuda"])
        assert r.exit_code == 1 and r.output.startswith("Error: device 'cuda': torch sees no CUDA device")


@pytest.mark.parametrize("before", [True, False])
def test_fp32_switch_for_cuda_restores_the_callers_tf32_settings(before):
    """evaluate_adaptive on CUDA turns TF32 off for its own run only (no GPU needed: these are plain flags)."""
    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = [f.allow_tf32 for f in flags]
    try:
        for f in flags:
            f.allow_tf32 = before
        with _full_fp32(torch.device("cpu")):
            assert [f.allow_tf32 for f in flags] == [before, before]
        with pytest.raises(RuntimeError, match="inside"):
            with _full_fp32(torch.device("cuda")):
                assert [f.allow_tf32 for f in flags] == [False, False]
                raise RuntimeError("inside")
        assert [f.allow_tf32 for f in flags] == [before, before]
    finally:
        for f, v in zip(flags, saved):
            f.allow_tf32 = v


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_attacks_on_cuda_match_the_cpu(live_ckpts, tmp_path):
    """The same attacks, seeds and images on the CPU and on the GPU (fp32, no TF32): the same random starts and
    restart noise, so the iterates agree to float tolerance and the scored accuracies match."""
    from vaegan.train.adaptive import evaluate_adaptive

    x = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    y = torch.arange(10)  # every class once: the latent attack's target pool
    reps = {}
    for dev in ("cpu", "cuda"):
        cfg = AdaptiveConfig(n=len(x), eps=(0.1,), attacks=("bpda", "bpda_eot", "full", "apgd", "latent"), steps=3,
                             checkpoints=(1, 3), eot_samples=2, eot_restarts=2, apgd_targets=1, device=dev,
                             purify=replace(CFG), out=str(tmp_path / dev), batch_size=4)
        reps[dev] = evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=lambda *a, **k: None)
    assert reps["cuda"]["device"].startswith("cuda (") and reps["cpu"]["device"].startswith("cpu (")
    assert reps["cuda"]["clean"] == pytest.approx(reps["cpu"]["clean"])
    for name, per in reps["cpu"]["attacks"].items():
        g = reps["cuda"]["attacks"][name]["0.1"]
        assert g["device"] == reps["cuda"]["device"]
        assert g["accuracy"] == pytest.approx(per["0.1"]["accuracy"], abs=100 / len(x) + 1e-9), name


@requires_data
def test_cli_writes_the_report_on_4_images(live_ckpts, tiny_vaegan_ckpt, artifacts, tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"n": 4, "table": {
        "none": {"clean": 10.0, "pgd40_eps0.1": 0.0},
        "vaegan (T=10, eta=0.02, lam=1, R=1)": {"clean": 9.0, "pgd40_eps0.1": 50.0}}}))
    r = CliRunner().invoke(adaptive_cli, [
        "--checkpoint", str(live_ckpts[0]), "--classifier", str(live_ckpts[1]), "--n", "4",
        "--eps", "0.1,0.3", "--attack-steps", "2", "--curve", "1,2", "--eot-samples", "2", "--eot-restarts", "2",
        "--attacks", "bpda,bpda_eot,full,full_eot,apgd,fab,square,transfer,latent",
        "--apgd-targets", "1", "--fab-targets", "2", "--square-queries", "3", "--artifacts", str(artifacts),
        "--surrogate", str(live_ckpts[1]), "--steps", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    # artifacts exported from other weights are refused: square must query the model under test
    r2 = CliRunner().invoke(adaptive_cli, ["--checkpoint", str(tiny_vaegan_ckpt), "--classifier", str(live_ckpts[1]),
                                           "--n", "4", "--attacks", "square", "--artifacts", str(artifacts),
                                           "--out", str(tmp_path / "other")])
    assert r2.exit_code == 1 and "exported from another checkpoint" in r2.output
    rep = json.loads((out / "adaptive.json").read_text())
    assert rep["n"] == 4 and set(rep["attacks"]) == {"bpda", "bpda_eot", "full", "full_eot", "apgd", "fab", "square",
                                                     "transfer", "latent"}
    for name, per in rep["attacks"].items():
        assert set(per) == {"0.1", "0.3"}
        for e, v in per.items():
            assert 0 <= v["accuracy"] <= 100 and v["linf"] <= float(e) + 1e-5
            assert v["accuracy"] == pytest.approx(100 * (1 - unpack_mask(v["fooled"], 4).mean()))
    assert set(rep["attacks"]["bpda"]["0.1"]["curve"]) == {"1", "2"}
    # each targeted attack records its own number of target classes
    assert rep["attacks"]["apgd"]["0.1"]["budget"] == {"steps": 2, "apgd_targets": 1}
    assert rep["attacks"]["fab"]["0.1"]["budget"] == {"steps": 2, "fab_targets": 2}
    for name in ("bpda", "full", "transfer", "latent"):  # deterministic scoring: the table agrees with the curve
        for e in ("0.1", "0.3"):
            assert rep["attacks"][name][e]["accuracy"] == pytest.approx(rep["attacks"][name][e]["curve"]["2"])
    assert rep["any"]["0.3"] <= min(rep["attacks"][a]["0.3"]["accuracy"] for a in ("bpda", "full", "apgd", "fab", "square"))
    md = (out / "adaptive.md").read_text()
    assert "full_eot attacks and is scored on a *randomized* purifier" in md
    assert "BPDA + PGD" in md and "oblivious pgd40 (purified), first 4" in md and "Convergence" in md
    assert (out / "adaptive.png").stat().st_size > 1000


def _report(attacks: dict, eps, any_=None, n=8, ck="a", purify_steps=3):
    return {"n": n, "eps": eps, "clean": {"classifier": 90.0, "defended": 80.0},
            "config": {"purify": {"steps": purify_steps}, "steps": 5, "alpha_ratio": 0.1, "restarts": 1, "loss": "ce",
                       "eot_samples": 2, "square_queries": 3},
            "attacks": attacks, "any": any_ or {}, "checkpoints": {"vaegan": ck, "classifier": ck}, "threads": 1,
            "oblivious": None}


def test_merge_joins_runs_split_by_eps_and_attack(tmp_path):
    a = _report({"full": {"0.1": {"accuracy": 60.0, "curve": {"5": 60.0}}}}, [0.1], {"0.1": 55.0})
    b = _report({"apgd": {"0.1": {"accuracy": 58.0, "gradient": "full"}, "0.3": {"accuracy": 5.0, "gradient": "full"}}},
                [0.1, 0.3], {"0.1": 58.0, "0.3": 5.0})
    c = _report({"transfer": {"0.3": {"accuracy": 70.0, "undefended_accuracy": 20.0}}}, [0.3])
    c["surrogate"] = {"path": "surrogate.pt", "sha256": "s", "clean_accuracy": 85.0}
    for name, rep in zip("abc", (a, b, c)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adaptive.json").write_text(json.dumps(rep))
    out = tmp_path / "merged"
    r = CliRunner().invoke(adaptive_cli, ["--merge", str(tmp_path / "a"), "--merge", str(tmp_path / "b"),
                                          "--merge", str(tmp_path / "c"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "adaptive.json").read_text())
    assert m["eps"] == [0.1, 0.3] and list(m["attacks"]) == ["full", "apgd", "transfer"]
    # the worst-case row: lowest over the attacks and over each run's own per-image worst case
    assert m["any"] == {"0.1": 55.0, "0.3": 5.0} and m["any_kind"] == "min" and m["merged_from"] == 3
    md = (out / "adaptive.md").read_text()
    assert "lowest over the attacks above (merged runs" in md and "| full-gradient PGD (unrolled T steps) | 60.00 | – |" in md
    # runs that do not describe the same experiment are refused, naming the difference and the reports
    with pytest.raises(VaeganError, match="report 1 and report 2 differ in checkpoints"):
        merge_reports([a, _report({}, [0.1], ck="b")])
    with pytest.raises(VaeganError, match="merge: x.json and y.json were measured with different purifier settings"):
        merge_reports([a, _report({}, [0.1], purify_steps=0)], names=["x.json", "y.json"])
    with pytest.raises(VaeganError, match=r"full at eps 0.1 with the same budget \(5 steps\) on the same device is in "
                                          r"more than one report \(report 1 and report 3\)"):
        merge_reports([a, _report({}, [0.3]), a])
    # the same budget on another device is a second measurement (CPU and GPU arithmetic differ): both are kept
    # and told apart by their device; the per-image worst case takes both masks
    cpu = _report({"full": {"0.1": {"accuracy": 62.5, "device": "cpu", "curve": {"5": 62.5},
                                    "fooled": pack_mask(torch.tensor([1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.bool))}}},
                  [0.1])
    gpu = _report({"full": {"0.1": {"accuracy": 62.5, "device": "cuda (H200)", "curve": {"5": 62.5},
                                    "fooled": pack_mask(torch.tensor([0, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool))}}},
                  [0.1])
    both = merge_reports([cpu, gpu])
    assert [r["device"] for r in both["attacks"]["full"]["0.1"]["runs"]] == ["cpu", "cuda (H200)"]
    assert both["any"]["0.1"] == 50.0 and both["any_kind"] == "union"
    write_adaptive(both, tmp_path / "both")
    md_both = (tmp_path / "both" / "adaptive.md").read_text()
    assert "full eps 0.1: 5 steps on cpu 62.50, 5 steps on cuda (H200) 62.50" in md_both
    assert "| full (5 steps on cuda (H200)) | 0.1 | 62.50 |" in md_both
    # the same attack with another budget: the stronger run is reported, both are listed with their budgets
    longer = _report({"full": {"0.1": {"accuracy": 52.0, "curve": {"5": 60.0, "20": 52.0},
                                       "budget": {"steps": 20, "restarts": 1}}}}, [0.1])
    m2 = merge_reports([a, longer])
    rec = m2["attacks"]["full"]["0.1"]
    assert rec["accuracy"] == 52.0 and [r["budget"]["steps"] for r in rec["runs"]] == [5, 20]
    assert m2["any"]["0.1"] == 52.0
    m3 = merge_reports([longer, a])  # order does not matter: the lower accuracy wins
    assert m3["attacks"]["full"]["0.1"]["accuracy"] == 52.0 and len(m3["attacks"]["full"]["0.1"]["runs"]) == 2
    write_adaptive(m2, tmp_path / "m2")
    md2 = (tmp_path / "m2" / "adaptive.md").read_text()
    assert "| full (20 steps) | 0.1 | 60.00 | 52.00 |" in md2
    assert "full eps 0.1: 5 steps 60.00, 20 steps 52.00" in md2
    # a run on another device and with the randomized purifier's clean accuracy: both survive the merge, eps sorted
    gpu = _report({"bpda_eot": {"0.3": {"accuracy": 40.0, "device": "cuda (H200)", "defense": "R=2",
                                        "budget": {"steps": 5}},
                               "0.1": {"accuracy": 70.0, "device": "cuda (H200)", "defense": "R=2",
                                       "budget": {"steps": 5}}}}, [0.3, 0.1])
    gpu["clean"]["defended_randomized"] = 77.0
    m4 = merge_reports([a, gpu])
    assert m4["clean"] == {"classifier": 90.0, "defended": 80.0, "defended_randomized": 77.0}
    assert list(m4["attacks"]["bpda_eot"]) == ["0.1", "0.3"] and m4["eps"] == [0.1, 0.3]
    write_adaptive(m4, tmp_path / "m4")
    md4 = (tmp_path / "m4" / "adaptive.md").read_text()
    assert "randomized purifier 77.00%" in md4
    assert "device of each result in the table: cuda (H200): bpda_eot (eps 0.1, 0.3); cpu: full (eps 0.1)" in md4
    # per-image outcomes recorded: the worst-case row is their union across runs; without them, the lowest
    f1 = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
    f2 = torch.tensor([0, 1, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
    assert (unpack_mask(pack_mask(f1), 8) == f1.numpy()).all()
    u1 = _report({"full": {"0.1": {"accuracy": 75.0, "fooled": pack_mask(f1), "budget": {"steps": 5}}}}, [0.1])
    u2 = _report({"apgd": {"0.1": {"accuracy": 75.0, "fooled": pack_mask(f2), "gradient": "full",
                                   "budget": {"steps": 7}}}}, [0.1])
    m5 = merge_reports([u1, u2])
    assert m5["any"] == {"0.1": 62.5} and m5["any_kind"] == "union"
    write_adaptive(m5, tmp_path / "m5")
    assert "| **worst case over the attacks above and their runs (per image)** | **62.50** |" in (
        tmp_path / "m5" / "adaptive.md").read_text()
    m6 = merge_reports([u1, u2, b])  # b recorded no masks: its apgd 58.0 at eps 0.1 is lower than the union
    assert m6["any"]["0.1"] == 58.0 and m6["any_kind"] == "union+min"
    r2 = CliRunner().invoke(adaptive_cli, ["--merge", str(tmp_path / "missing"), "--out", str(out)])
    assert r2.exit_code == 1 and "missing/adaptive.json: not a readable adaptive report" in r2.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "adaptive.json").write_text(json.dumps({"n": 8, "table": {}}))
    r3 = CliRunner().invoke(adaptive_cli, ["--merge", str(tmp_path / "other"), "--out", str(out)])
    assert r3.exit_code == 1 and "other/adaptive.json: not an adaptive report (no eps, clean, attacks" in r3.output


def test_merge_cuts_runs_over_more_images_to_the_common_first_images(tmp_path):
    # a 4-image run and an 8-image run over the first test images: merged over the first 4, the larger run's
    # results recomputed from their per-image masks
    small = _report({"apgd": {"0.1": {"accuracy": 75.0, "gradient": "full", "budget": {"steps": 7},
                                      "fooled": pack_mask(torch.tensor([0, 0, 1, 0], dtype=torch.bool))}}},
                    [0.1], {"0.1": 75.0}, n=4)
    small["clean"] = {"classifier": 100.0, "defended": 75.0}
    big = _report({"square": {"0.1": {"accuracy": 62.5, "budget": {"queries": 3}, "curve": {"3": 62.5},
                                      "fooled": pack_mask(torch.tensor([1, 0, 0, 0, 1, 1, 0, 0], dtype=torch.bool))}}},
                  [0.1], {"0.1": 62.5}, n=8)
    big["attacks"]["square"]["0.1"]["torch_reference_accuracy"] = 62.5  # over its 8 images: not kept
    big["runtime"] = {"backend": "fused", "clean_accuracy": 87.5}
    for order in ([small, big], [big, small]):
        m = merge_reports(order)
        assert m["n"] == 4 and m["clean"] == {"classifier": 100.0, "defended": 75.0}
        sq = m["attacks"]["square"]["0.1"]
        assert sq["accuracy"] == 75.0 and sq["cut_from"] == 8 and "curve" not in sq
        assert (unpack_mask(sq["fooled"], 4) == [True, False, False, False]).all()
        assert m["attacks"]["apgd"]["0.1"]["accuracy"] == 75.0 and "cut_from" not in m["attacks"]["apgd"]["0.1"]
        assert m["any"] == {"0.1": 50.0} and m["any_kind"] == "union"  # images 0 and 2; big's own 62.5 is not used
    write_adaptive(m, tmp_path / "m")
    md = (tmp_path / "m" / "adaptive.md").read_text()
    assert "first 4 test images" in md and "Cut to these 4 images from runs over more" in md
    assert "square eps 0.1 (8 images)" in md
    assert ("square queried the runtime (fused backend); torch reference accuracy on its outputs: not kept "
            "(results cut from runs over more images)") in md
    for name, rep in (("small", small), ("big", big)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adaptive.json").write_text(json.dumps(rep))
    r = CliRunner().invoke(adaptive_cli, ["--merge", str(tmp_path / "big"), "--merge", str(tmp_path / "small"),
                                          "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0 and "merged 2 reports over the first 4 images (runs over 8 cut to them)" in r.output
    # a larger run without per-image outcomes cannot be cut: refused, naming the result
    old = _report({"full": {"0.1": {"accuracy": 60.0}}}, [0.1], n=8)
    with pytest.raises(VaeganError, match=r"full at eps 0.1 over 8 images recorded no per-image outcomes"):
        merge_reports([small, old])
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "adaptive.json").write_text(json.dumps(old))
    r = CliRunner().invoke(adaptive_cli, ["--merge", str(tmp_path / "small"), "--merge", str(tmp_path / "old"),
                                          "--out", str(tmp_path / "refused")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"merge: {tmp_path / 'old' / 'adaptive.json'}: full at eps 0.1 over 8 images recorded no per-image" in r.output
    assert merge_reports([old, old | {"attacks": {}}])["n"] == 8  # same n: nothing is cut, masks not needed


def test_batch_cache_resumes_an_interrupted_attack_at_its_first_unfinished_batch(tmp_path):
    from vaegan.train.adaptive import BatchCache

    x = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    y = torch.arange(10)
    calls, starts = [], []

    def attack(start, xb, yb, fail_at=None):
        starts.append(start)
        calls.append(int(yb[0]))
        if fail_at is not None and int(yb[0]) == fail_at:
            raise KeyboardInterrupt  # the run is killed while it works on this batch
        return (xb * 0.5).clamp(0, 1), {"queries": len(xb)}

    budget = {"square_queries": 7}
    first = BatchCache(tmp_path / "fresh", {"seed": 0}, echo=lambda *a: None)
    fresh, counted = first.map("square_eps0.1", budget, attack, x, y, 4)
    assert first.reused == 0 and counted == [{"queries": 4}, {"queries": 4}, {"queries": 2}] and calls == [0, 4, 8]
    assert starts == [0, 4, 8]  # each batch is told where it starts (TrackedPGD seeds it with seed + start)

    cache = BatchCache(tmp_path / "p", {"seed": 0}, echo=lambda *a: None)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        cache.map("square_eps0.1", budget, lambda i, xb, yb: attack(i, xb, yb, fail_at=4), x, y, 4)
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["square_eps0.1_b0000.pt"]
    calls.clear()
    out, counted = cache.map("square_eps0.1", budget, attack, x, y, 4)
    assert calls == [4, 8] and cache.reused == 1  # batch 0 came from disk
    assert torch.equal(out, fresh) and counted == [{"queries": 4}, {"queries": 4}, {"queries": 2}]  # its count too

    # another budget, other images or a corrupt file: recomputed, never reused
    calls.clear()
    cache.map("square_eps0.1", {"square_queries": 8}, attack, x, y, 4)
    assert calls == [0, 4, 8]
    calls.clear()
    cache.map("square_eps0.1", {"square_queries": 8}, attack, x.flip(0), y.flip(0), 4)
    assert calls == [9, 5, 1]
    (tmp_path / "p" / "square_eps0.1_b0001.pt").write_bytes(b"truncated")
    seen = []
    calls.clear()
    BatchCache(tmp_path / "p", {"seed": 0}, echo=seen.append).map("square_eps0.1", {"square_queries": 8}, attack,
                                                                  x.flip(0), y.flip(0), 4)
    assert calls == [5] and any("square_eps0.1_b0001.pt: unreadable" in m for m in seen)
    cache.clear()
    assert not (tmp_path / "p").exists()


def test_an_interrupted_adaptive_run_resumes_and_gives_the_uninterrupted_report(live_ckpts, tmp_path, monkeypatch):
    from vaegan.train import adaptive

    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    y = torch.arange(8)
    cfg = AdaptiveConfig(n=8, eps=(0.1,), attacks=("apgd",), steps=3, apgd_targets=1, apgd_grad="full",
                         purify=replace(CFG), batch_size=4, out=str(tmp_path / "whole"))
    whole = adaptive.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=lambda *a, **k: None)
    assert not (tmp_path / "whole" / "partial").exists()  # removed once the report is written

    real, made = adaptive.apgd, []

    def killed_on_second_batch(*args, **kwargs):
        made.append(1)
        if len(made) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    cfg = replace(cfg, out=str(tmp_path / "split"))
    monkeypatch.setattr(adaptive, "apgd", killed_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        adaptive.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=lambda *a, **k: None)
    assert len(list((tmp_path / "split" / "partial").glob("*.pt"))) == 1
    monkeypatch.setattr(adaptive, "apgd", real)
    log = []
    split = adaptive.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=log.append)
    a, b = whole["attacks"]["apgd"]["0.1"], split["attacks"]["apgd"]["0.1"]
    assert b["resumed_batches"] == 1 and "resumed_batches" not in a
    assert (b["accuracy"], b["fooled"], b["linf"]) == (a["accuracy"], a["fooled"], a["linf"])
    assert any("1 of 2 batches reused" in m for m in log)
    assert not (tmp_path / "split" / "partial").exists()


def test_eot_batches_resume_with_the_randomized_purifiers_random_streams(live_ckpts, tmp_path, monkeypatch):
    """bpda_eot / full_eot draw fresh purifier noise across batches and eps; their batches keep the generators'
    states, so a run stopped mid-way finishes with the uninterrupted run's accuracy, fooled mask and curve."""
    from vaegan.train import adaptive

    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    y = torch.arange(6)
    cfg = AdaptiveConfig(n=6, eps=(0.1, 0.3), attacks=("bpda_eot", "full_eot"), steps=2, checkpoints=(1, 2),
                         eot_samples=2, eot_restarts=2, purify=replace(CFG), batch_size=3, out=str(tmp_path / "whole"))
    whole = adaptive.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=lambda *a, **k: None)

    real, runs = adaptive.TrackedPGD.run, []

    def stop_on_sixth_batch(self, *a, **k):  # bpda_eot's 2 x 2 batches, full_eot's first; killed on its second
        runs.append(1)
        if len(runs) == 6:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    cfg = replace(cfg, out=str(tmp_path / "split"))
    monkeypatch.setattr(adaptive.TrackedPGD, "run", stop_on_sixth_batch)
    with pytest.raises(KeyboardInterrupt):
        adaptive.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=lambda *a, **k: None)
    assert len(list((tmp_path / "split" / "partial").glob("*.pt"))) == 5
    monkeypatch.setattr(adaptive.TrackedPGD, "run", real)
    split = adaptive.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=lambda *a, **k: None)
    assert [split["attacks"][a][e].get("resumed_batches") for a in ("bpda_eot", "full_eot") for e in ("0.1", "0.3")] \
        == [2, 2, 1, None]
    for name in ("bpda_eot", "full_eot"):
        for e in ("0.1", "0.3"):
            a, b = whole["attacks"][name][e], split["attacks"][name][e]
            assert (b["accuracy"], b["fooled"], b["curve"]) == (a["accuracy"], a["fooled"], a["curve"]), (name, e)
    # a batch written from other generator states is not reused: the noise it saw is not the noise due now
    from vaegan.train.adaptive import BatchCache

    cache = BatchCache(tmp_path / "g", {"seed": 0}, echo=lambda *a: None)
    g = torch.Generator().manual_seed(1)
    draw = lambda i, xb, yb: (xb + 0 * torch.rand(1, generator=g), {"u": torch.rand(1, generator=g)})  # noqa: E731
    _, first = cache.map("t", {}, draw, x, y, 3, generators=(g,))
    after = g.get_state()
    g.manual_seed(1)
    _, again = cache.map("t", {}, draw, x, y, 3, generators=(g,))
    assert cache.reused == 2 and torch.equal(g.get_state(), after) and again == first
    g.manual_seed(2)
    cache.map("t", {}, draw, x, y, 3, generators=(g,))
    assert cache.reused == 0


def test_pgd_batches_are_kept_and_resume_to_the_same_curve_and_mask(live_ckpts, tmp_path, monkeypatch):
    """bpda / full / latent (TrackedPGD and LatentPGD, each batch seeded by its first index) resume like apgd: a run
    stopped mid-way finishes with the uninterrupted run's accuracy, fooled mask and convergence curve."""
    from vaegan.train import adaptive

    x = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(6))
    y = torch.arange(10)  # every class once: the latent attack's target pool is x itself
    cfg = AdaptiveConfig(n=10, eps=(0.1,), attacks=("bpda", "full", "latent"), steps=2, checkpoints=(1, 2),
                         purify=replace(CFG), batch_size=5, out=str(tmp_path / "whole"))
    whole = adaptive.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=lambda *a, **k: None)

    real, runs = adaptive.TrackedPGD.run, []

    def stop_on_sixth_batch(self, *a, **k):  # bpda's 2 batches, full's 2, latent's first; killed on its second
        runs.append(1)
        if len(runs) == 6:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    cfg = replace(cfg, out=str(tmp_path / "split"))
    monkeypatch.setattr(adaptive.TrackedPGD, "run", stop_on_sixth_batch)  # LatentPGD inherits it
    with pytest.raises(KeyboardInterrupt):
        adaptive.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=lambda *a, **k: None)
    assert len(list((tmp_path / "split" / "partial").glob("*.pt"))) == 5
    monkeypatch.setattr(adaptive.TrackedPGD, "run", real)
    split = adaptive.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=lambda *a, **k: None)
    assert split["attacks"]["bpda"]["0.1"]["resumed_batches"] == 2
    assert split["attacks"]["full"]["0.1"]["resumed_batches"] == 2
    assert split["attacks"]["latent"]["0.1"]["resumed_batches"] == 1
    for name in ("bpda", "full", "latent"):
        a, b = whole["attacks"][name]["0.1"], split["attacks"][name]["0.1"]
        assert (b["accuracy"], b["fooled"], b["curve"]) == (a["accuracy"], a["fooled"], a["curve"]), name
