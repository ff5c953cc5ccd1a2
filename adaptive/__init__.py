"""Adaptive attacks on the whole defended pipeline ``classifier(purifier(x))`` (L-inf, images N x C x H x W in [0, 1], the image contract).

Purification defenses look strong against attackers who ignore them (``vaegan.train.evaluate``: the oblivious
attacker) and often fall to attackers who do not (Athalye, Carlini & Wagner 2018, "Obfuscated gradients give a false
sense of security"; Croce et al. 2022, "Evaluating the adversarial robustness of adaptive test-time defenses"). Every
attack here targets the defended model, each at every ``eps`` on the first ``n`` test images:

| name       | attacker | gradient / access |
|------------|----------|-------------------|
| ``bpda``     | PGD (``TrackedPGD``) | BPDA: purifier = identity on the backward pass, ``x + (purify(x) - x).detach()`` |
| ``bpda_eot`` | PGD + EOT | BPDA, averaged over ``eot_samples`` draws of a *randomised* purifier (R noisy restarts, fresh noise per draw) |
| ``full``     | PGD | exact gradient through all T unrolled purification steps (``Purifier(differentiable=True)``) |
| ``full_eot`` | PGD + EOT | the exact gradient of ``full`` through the *randomised* purifier of ``bpda_eot``, averaged over its draws |
| ``apgd``     | APGD-CE then APGD-T (torchattacks; AutoAttack's gradient components) | the better of bpda / full |
| ``fab``      | FAB-T (torchattacks; AutoAttack's minimum-norm component), success only within eps | as apgd |
| ``square``   | Square (torchattacks), scores only | queries the deployed runtime (``vaegan.runtime``, fused ONNX backend) |
| ``transfer`` | PGD on an independently trained surrogate classifier | none of the defended model |
| ``latent``   | PGD on ``||mu_E(x + d) - mu_E(x_target)||^2`` (x_target: an image of another class) | encoder only |

Accuracy is the defended model's accuracy on the attack's output. PGD attacks (``TrackedPGD``) keep, per image, the
first iterate that fools the (deterministic) defended model, checked every step where the model's own logits come
for free and at the convergence checkpoints (accuracy vs steps, e.g. 10/20/50/100) otherwise. ``bpda_eot`` attacks
(and is scored on) the randomised purifier, a different defense from the deployed deterministic one: its row says so.
``transfer`` scores the final iterate only (choosing iterates by querying the defended model would not be transfer),
and so do ``bpda_eot`` and ``full_eot``, with a fresh draw of the randomised purifier (a lucky draw must not count as
a success). The ``any`` row is the per-image worst case over the white-box/black-box attacks on the deterministic
defense.

Each result records its budget, its device and the images it fooled (a packed mask), so that ``merge_reports`` can
join runs split by attack, eps or device into one table whose worst-case row is the per-image union. The attacks
run on the CPU or on a CUDA device (``device``); random starts and restart noise are drawn on the CPU from the
seeds, so both devices attack with the same draws.

Outputs: ``OUT/adaptive.md``, ``OUT/adaptive.json``, ``OUT/adaptive.png`` (accuracy vs eps per attack, with the
oblivious numbers from ``OUT/report.json`` when ``vaegan-eval`` wrote one there).

This package sits above ``vaegan.train``, ``vaegan.export`` and ``vaegan.runtime`` (it attacks the torch reference
and queries the exported runtime); none of them imports it. Layout:

- ``registry``  every attack's name, label, budget fields and runner (torch-free)
- ``config``    ``AdaptiveConfig`` (the CLI's options are generated from it)
- ``attacks/``  one module per attack family, and the shared PGD engine
- ``context``, ``cache``, ``evaluate``  the evaluation loop, its shared state and its resumable batch cache
- ``report``, ``plot``, ``merge``  adaptive.md / .json, adaptive.png, and the merge of several runs
- ``cli``       ``vaegan-eval-adaptive``

The names below are imported on first use (``import vaegan.adaptive`` alone imports no torch).
"""

from __future__ import annotations

import importlib

_EXPORTS = {"AdaptiveConfig": "config", "ATTACKS": "registry", "REGISTRY": "registry",
            "evaluate_adaptive": "evaluate", "merge_reports": "merge", "write_adaptive": "report",
            "oblivious_numbers": "report", "pack_mask": "report", "unpack_mask": "report"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
