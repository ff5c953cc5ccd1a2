"""Thin click commands over the library: ``vaegan-train``, ``vaegan-attack``, ``vaegan-eval``.

User errors (``VaeganError``, bad options) print one line and exit non-zero; nothing heavy is imported for
``--help`` / ``--version``.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import typing

import click

from vaegan import __version__

from .errors import VaeganError


def _friendly(fn):
    """Turn VaeganError into a one-line ``Error: ...`` and exit code 1 (click prints it, no traceback)."""

    @functools.wraps(fn)
    def wrapper(*a, **k):
        try:
            return fn(*a, **k)
        except VaeganError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


def _field_type(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def dataclass_options(cls, skip=()):
    """Add one ``--field-name`` option per scalar field of the dataclass ``cls`` (nested dataclasses flattened)."""

    def deco(fn):
        hints = typing.get_type_hints(cls)
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip:
                continue
            tp = _field_type(hints[f.name])
            if dataclasses.is_dataclass(tp):
                fn = dataclass_options(tp)(fn)
                continue
            name = "--" + f.name.replace("_", "-")
            if tp is bool:
                fn = click.option(f"{name}/--no-{f.name.replace('_', '-')}", default=None, help=f"default {f.default}")(fn)
            else:
                fn = click.option(name, type=tp, default=None, show_default=False, help=f"default {f.default}")(fn)
        return fn

    return deco


def build_config(cls, values: dict):
    """Instantiate ``cls`` from click values (None = keep the default), nested dataclasses included."""
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        tp = _field_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            kw[f.name] = build_config(tp, values)
        elif values.get(f.name) is not None:
            kw[f.name] = values[f.name]
    return cls(**kw)


# ---------------------------------------------------------------------------------------------------- vaegan-train

@click.group(help="Train the VGG16 classifier or the VAE-GAN purifier (runs under torchrun for DDP).")
@click.version_option(__version__)
def train_cli():
    pass


def _train_command(name: str, cfg_name: str, fn_name: str, doc: str):
    from . import config

    cfg_cls = getattr(config, cfg_name)

    @train_cli.command(name, help=doc)
    @dataclass_options(cfg_cls)
    @click.option("--resume", is_flag=True, help="continue from OUT/ckpt.pt if it exists")
    @click.option("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    @_friendly
    def cmd(resume, threads, **values):
        import torch

        if threads:
            torch.set_num_threads(threads)
        cfg = build_config(cfg_cls, values)
        from . import trainer

        getattr(trainer, fn_name)(cfg, resume=resume)

    return cmd


def _lazy_train_commands():
    _train_command("classifier", "ClassifierConfig", "train_classifier",
                   "Train the VGG16-D classifier (the target model).")
    _train_command("vaegan", "VAEGANConfig", "train_vaegan", "Train the VAE-GAN purifier (E, G, D).")


_lazy_train_commands()


def _main_guard():
    try:
        train_cli()
    except VaeganError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
