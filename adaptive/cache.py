"""``BatchCache``: the finished batches of every attack on disk, so that an interrupted run resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch


def tensor_sha256(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class BatchCache:
    """The finished batches of every attack (bpda, full, apgd, fab, square, transfer, latent on the deterministic
    defense; bpda_eot, full_eot on the randomized one), one file each under ``OUT/partial/``, so that an interrupted run resumes at its first unfinished batch
    (a Square run at AutoAttack's budget takes hours). Each batch of these attacks is a function of its images,
    labels and seed alone (torchattacks seeds every call, ``TrackedPGD`` takes the batch's seed), so a resumed run
    writes what an uninterrupted one would. The EOT attacks (bpda_eot, full_eot) also depend on the randomized
    purifiers' generators, which draw across batches: ``map(..., generators=...)`` keys each batch on the generators'
    states at its start and keeps their states at its end, restored when the batch is reused, so a resumed EOT run
    continues the same random streams. A file is reused only when its key matches: attack, eps, budget, seed, device,
    checkpoints, purifier settings, the sha256 of the batch's images and labels (and of the generator states); anything
    else (another budget, corrupt file) is recomputed and overwritten. ``evaluate_adaptive`` removes the folder once
    the report is written."""

    def __init__(self, root: Path, base: dict, echo=print):
        self.root = Path(root)
        self.base = base
        self.echo = echo
        self.reused = 0  # batches the last ``map`` took from disk

    def _key(self, tag: str, budget: dict, index: int, xb: torch.Tensor, yb: torch.Tensor, generators=()) -> str:
        rng = {"rng": tensor_sha256(*(g.get_state() for g in generators))} if generators else {}
        return json.dumps({**self.base, "tag": tag, "budget": budget, "batch": index, "inputs": tensor_sha256(xb, yb),
                           **rng}, sort_keys=True, default=str)

    def map(self, tag: str, budget: dict, fn, x: torch.Tensor, y: torch.Tensor, batch_size: int, generators=()):
        """``fn(start, xb, yb) -> (x_adv_b, extras)`` over the batches (``start``: the batch's first image; extras: a
        dict of numbers, CPU tensors and dicts of numbers); returns (x_adv, the batches' extras in order) and sets
        ``reused`` to the number of batches taken from an earlier run. ``budget``: what else sets the result (part
        of the key). ``generators``: the ``torch.Generator`` s that ``fn`` draws from (their states enter the key,
        and a reused batch leaves them where the batch that wrote it did)."""
        advs, extras, reused = [], [], 0
        batches = list(zip(x.split(batch_size), y.split(batch_size)))
        for i, (xb, yb) in enumerate(batches):
            path = self.root / f"{tag}_b{i:04d}.pt"
            key = self._key(tag, budget, i, xb, yb, generators)
            hit = None
            if path.is_file():
                try:
                    saved = torch.load(path, map_location="cpu", weights_only=True)
                    if (saved.get("key") == key and saved["x_adv"].shape == xb.shape
                            and len(saved.get("rng_after", [])) == len(generators)):
                        hit = saved
                except Exception as e:  # a truncated file from a killed run: recompute it
                    self.echo(f"{path}: unreadable ({type(e).__name__}: {e}); recomputing that batch")
            if hit is None:
                t0 = time.perf_counter()
                xa, ex = fn(i * batch_size, xb, yb)
                hit = {"key": key, "x_adv": xa.detach().cpu(), "rng_after": [g.get_state() for g in generators],
                       "extras": {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in ex.items()}}
                self.root.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save(hit, tmp)
                os.replace(tmp, path)  # a kill mid-write leaves the .tmp, never a half-written batch file
                self.echo(f"{tag}: batch {i + 1}/{len(batches)} done ({time.perf_counter() - t0:.0f}s), "
                          f"kept in {path}")
            else:
                reused += 1
                for g, state in zip(generators, hit["rng_after"]):
                    g.set_state(state)
            advs.append(hit["x_adv"].to(x.device))
            extras.append(hit["extras"])
        if reused:
            self.echo(f"{tag}: {reused} of {len(batches)} batches reused from {self.root}")
        self.reused = reused
        return torch.cat(advs), extras

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
