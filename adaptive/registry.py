"""The adaptive attacks: one table of every attack's name, label, budget and scoring, torch-free (the config and the
CLI read it for validation and ``--help``; ``runner`` imports the attack's module only when it runs).

Each entry names the module under ``vaegan.adaptive.attacks`` that runs it and the function there, called as
``fn(ctx, eps) -> (x_adv, fooled, record)`` (``ctx``: ``vaegan.adaptive.evaluate.Context``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class AttackInfo:
    name: str
    label: str            # the report's row name
    budget: tuple         # the AdaptiveConfig fields that set its budget: recorded per result, kept by merges
    runner: str           # "module:function" under vaegan.adaptive.attacks
    randomized: bool = False  # attacked and scored on the randomized purifier: not in the worst-case row
    default: bool = True      # run when --attacks is not given
    needs_purifier: bool = False  # attacks the purifier itself: refused with --no-purifier


_PGD = ("steps", "restarts", "alpha_ratio", "loss")
_EOT = ("steps", "alpha_ratio", "loss", "eot_samples", "eot_restarts")

REGISTRY: dict[str, AttackInfo] = {a.name: a for a in (
    AttackInfo("bpda", "BPDA + PGD", _PGD, "bpda:run_bpda"),
    AttackInfo("bpda_eot", "BPDA + EOT + PGD (randomized purifier)", _EOT, "bpda:run_bpda_eot", randomized=True,
               needs_purifier=True),
    AttackInfo("full", "full-gradient PGD (unrolled T steps)", _PGD, "full:run_full"),
    # opt-in: eot_samples times the cost of ``full`` per step
    AttackInfo("full_eot", "full-gradient EOT + PGD (randomized purifier)", _EOT, "full:run_full_eot",
               randomized=True, default=False, needs_purifier=True),
    AttackInfo("apgd", "APGD-CE + APGD-T", ("steps", "apgd_targets"), "apgd:run_apgd"),
    AttackInfo("fab", "FAB-T", ("steps", "fab_targets"), "fab:run_fab"),
    AttackInfo("square", "Square (runtime, scores)", ("square_queries",), "square:run_square"),
    AttackInfo("transfer", "transfer from surrogate", ("steps", "alpha_ratio", "loss"), "transfer:run_transfer"),
    AttackInfo("latent", "latent-space PGD", ("steps", "alpha_ratio"), "latent:run_latent", needs_purifier=True),
)}

ATTACKS = tuple(REGISTRY)  # the order of the report's rows
DEFAULT_ATTACKS = tuple(a for a, info in REGISTRY.items() if info.default)
# attacked and scored on the randomized purifier (eot_restarts noisy restarts), not the deployed one
RANDOMIZED = tuple(a for a, info in REGISTRY.items() if info.randomized)
# scored on the deterministic defense: the "any" (worst-case) row
WORST_CASE = tuple(a for a, info in REGISTRY.items() if not info.randomized)
BUDGET = {a: info.budget for a, info in REGISTRY.items()}
# what --no-purifier (the classifier alone) can run: the attacks that do not reach into the purifier
WITHOUT_PURIFIER = tuple(a for a, info in REGISTRY.items() if not info.needs_purifier)
LABELS = {a: info.label for a, info in REGISTRY.items()}


def attack_budget(name: str, config: dict) -> dict:
    """The budget of attack ``name`` under an AdaptiveConfig given as a dict (a report's "config")."""
    return {k: config[k] for k in BUDGET[name] if k in config}


def runner(name: str):
    """The function that runs attack ``name`` (imports its module, and torch, on first use)."""
    module, fn = REGISTRY[name].runner.split(":")
    return getattr(importlib.import_module(f"vaegan.adaptive.attacks.{module}"), fn)
