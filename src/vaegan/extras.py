"""The optional parts of the distribution, and the one check a command makes before it needs one.

``pip install vaegan`` is the torch-free runtime (``vaegan-run``, ``vaegan.runtime.Defense``); the PyTorch side
(training, attacks, evaluation, export) is the ``train`` extra. ``requires_extra("train")`` wraps a click command's
callback: when a package of the extra cannot be found, the command stops with a ``MissingExtra`` (a ``UserError``:
``friendly_errors`` prints it as one ``Error: ...`` line saying what to install, exit 2). ``--help`` and
``--version`` are answered by click before the callback runs, so they work without the extra.
The extra's packages are read from the installed distribution's metadata (pyproject.toml's optional-dependencies),
so the list is written once.
"""

from __future__ import annotations

import functools
import importlib.util
import re

from .errors import UserError


class MissingExtra(UserError):
    """A command needs an extra whose packages are not installed."""


def extra_requirements(extra: str) -> list[str]:
    """Names of the packages the installed ``vaegan`` lists under ``extra`` (empty when the metadata is absent)."""
    from importlib import metadata

    try:
        reqs = metadata.requires("vaegan") or []
    except metadata.PackageNotFoundError:
        return []
    names = []
    for req in reqs:
        spec, _, marker = req.partition(";")
        if not re.search(r"""extra\s*==\s*["']%s["']""" % re.escape(extra), marker):
            continue
        if not _applies(req, extra):
            continue  # e.g. a backport for older Pythons
        names.append(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec).group(1))
    return names


def _applies(req: str, extra: str) -> bool:
    """Whether ``req``'s environment marker holds here with ``extra`` asked for (``packaging``, which onnxruntime
    depends on, evaluates it; without it only a marker that is the extra clause alone counts)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        marker = req.partition(";")[2]
        return re.fullmatch(r"""\s*extra\s*==\s*["']%s["']\s*""" % re.escape(extra), marker) is not None
    r = Requirement(req)
    return r.marker is None or r.marker.evaluate({"extra": extra})


def missing_packages(extra: str) -> list[str]:
    """The packages of ``extra`` that Python cannot find (by import name: the extras' names are their modules')."""
    return [n for n in extra_requirements(extra) if importlib.util.find_spec(n.replace("-", "_")) is None]


def requires_extra(extra: str):
    """Decorator for a click command's callback, under ``friendly_errors``: without ``extra``'s packages, a
    ``MissingExtra`` "<command> needs the '<extra>' extra (not installed: ...): pip install 'vaegan[<extra>]'",
    before the command imports any of them."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            missing = missing_packages(extra)
            if missing:
                import click

                ctx = click.get_current_context(silent=True)
                prog = ctx.command_path if ctx is not None else "vaegan"
                raise MissingExtra(f"{prog} needs the '{extra}' extra (not installed: {', '.join(missing)}): "
                                   f"pip install 'vaegan[{extra}]'")
            return fn(*a, **k)

        return wrapper

    return deco
