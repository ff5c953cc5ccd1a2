"""The attacks (vaegan.adaptive.attacks) on the tiny random-init nets and a handful of images."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from vaegan.adaptive.attacks.bpda import StraightThrough
from vaegan.adaptive.attacks.eot import RandomizedPurifier
from vaegan.adaptive.attacks.fab import fab
from vaegan.adaptive.attacks.pgd import TrackedPGD, margin
from vaegan.adaptive.attacks.square import RuntimeModel
from vaegan.adaptive.config import AdaptiveConfig
from vaegan.adaptive.evaluate import _full_fp32
from vaegan.train.errors import VaeganError
from vaegan.train.config import PurifyConfig
from vaegan.train.purifier import Defended, Purifier, purify

from .conftest import CFG


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
    x_adv = fab(clf, eps=0.3, steps=5, seed=0, targets=2, n_classes=10)(x, y)
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
    from vaegan.adaptive.evaluate import evaluate_adaptive

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
