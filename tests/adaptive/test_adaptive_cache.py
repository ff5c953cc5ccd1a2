"""Resuming an interrupted adaptive run (vaegan.adaptive.cache.BatchCache) to the uninterrupted run's report."""

from dataclasses import replace

import pytest
import torch

from vaegan.adaptive import evaluate
from vaegan.adaptive.attacks import apgd as apgd_module
from vaegan.adaptive.attacks.pgd import TrackedPGD
from vaegan.adaptive.cache import BatchCache
from vaegan.adaptive.config import AdaptiveConfig

from .conftest import CFG


def test_batch_cache_resumes_an_interrupted_attack_at_its_first_unfinished_batch(tmp_path):
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
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    y = torch.arange(8)
    cfg = AdaptiveConfig(n=8, eps=(0.1,), attacks=("apgd",), steps=3, apgd_targets=1, apgd_grad="full",
                         purify=replace(CFG), batch_size=4, out=str(tmp_path / "whole"))
    whole = evaluate.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=lambda *a, **k: None)
    assert not (tmp_path / "whole" / "partial").exists()  # removed once the report is written

    real, made = apgd_module.apgd, []

    def killed_on_second_batch(*args, **kwargs):
        made.append(1)
        if len(made) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    cfg = replace(cfg, out=str(tmp_path / "split"))
    monkeypatch.setattr(apgd_module, "apgd", killed_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=lambda *a, **k: None)
    assert len(list((tmp_path / "split" / "partial").glob("*.pt"))) == 1
    monkeypatch.setattr(apgd_module, "apgd", real)
    log = []
    split = evaluate.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=log.append)
    a, b = whole["attacks"]["apgd"]["0.1"], split["attacks"]["apgd"]["0.1"]
    assert b["resumed_batches"] == 1 and "resumed_batches" not in a
    assert (b["accuracy"], b["fooled"], b["linf"]) == (a["accuracy"], a["fooled"], a["linf"])
    assert any("1 of 2 batches reused" in m for m in log)
    assert not (tmp_path / "split" / "partial").exists()


def test_eot_batches_resume_with_the_randomized_purifiers_random_streams(live_ckpts, tmp_path, monkeypatch):
    """bpda_eot / full_eot draw fresh purifier noise across batches and eps; their batches keep the generators'
    states, so a run stopped mid-way finishes with the uninterrupted run's accuracy, fooled mask and curve."""
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    y = torch.arange(6)
    cfg = AdaptiveConfig(n=6, eps=(0.1, 0.3), attacks=("bpda_eot", "full_eot"), steps=2, checkpoints=(1, 2),
                         eot_samples=2, eot_restarts=2, purify=replace(CFG), batch_size=3, out=str(tmp_path / "whole"))
    whole = evaluate.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=lambda *a, **k: None)

    real, runs = TrackedPGD.run, []

    def stop_on_sixth_batch(self, *a, **k):  # bpda_eot's 2 x 2 batches, full_eot's first; killed on its second
        runs.append(1)
        if len(runs) == 6:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    cfg = replace(cfg, out=str(tmp_path / "split"))
    monkeypatch.setattr(TrackedPGD, "run", stop_on_sixth_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=lambda *a, **k: None)
    assert len(list((tmp_path / "split" / "partial").glob("*.pt"))) == 5
    monkeypatch.setattr(TrackedPGD, "run", real)
    split = evaluate.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=lambda *a, **k: None)
    assert [split["attacks"][a][e].get("resumed_batches") for a in ("bpda_eot", "full_eot") for e in ("0.1", "0.3")] \
        == [2, 2, 1, None]
    for name in ("bpda_eot", "full_eot"):
        for e in ("0.1", "0.3"):
            a, b = whole["attacks"][name][e], split["attacks"][name][e]
            assert (b["accuracy"], b["fooled"], b["curve"]) == (a["accuracy"], a["fooled"], a["curve"]), (name, e)
    # a batch written from other generator states is not reused: the noise it saw is not the noise due now
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
    x = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(6))
    y = torch.arange(10)  # every class once: the latent attack's target pool is x itself
    cfg = AdaptiveConfig(n=10, eps=(0.1,), attacks=("bpda", "full", "latent"), steps=2, checkpoints=(1, 2),
                         purify=replace(CFG), batch_size=5, out=str(tmp_path / "whole"))
    whole = evaluate.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=lambda *a, **k: None)

    real, runs = TrackedPGD.run, []

    def stop_on_sixth_batch(self, *a, **k):  # bpda's 2 batches, full's 2, latent's first; killed on its second
        runs.append(1)
        if len(runs) == 6:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    cfg = replace(cfg, out=str(tmp_path / "split"))
    monkeypatch.setattr(TrackedPGD, "run", stop_on_sixth_batch)  # LatentPGD inherits it
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=lambda *a, **k: None)
    assert len(list((tmp_path / "split" / "partial").glob("*.pt"))) == 5
    monkeypatch.setattr(TrackedPGD, "run", real)
    split = evaluate.evaluate_adaptive(*live_ckpts, cfg, data=(x, y), echo=lambda *a, **k: None)
    assert split["attacks"]["bpda"]["0.1"]["resumed_batches"] == 2
    assert split["attacks"]["full"]["0.1"]["resumed_batches"] == 2
    assert split["attacks"]["latent"]["0.1"]["resumed_batches"] == 1
    for name in ("bpda", "full", "latent"):
        a, b = whole["attacks"][name]["0.1"], split["attacks"][name]["0.1"]
        assert (b["accuracy"], b["fooled"], b["curve"]) == (a["accuracy"], a["fooled"], a["curve"]), name
