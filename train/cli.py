"""Thin click commands over the library: ``vaegan-train``, ``vaegan-attack``, ``vaegan-eval``.

User errors (``VaeganError``, bad options) print one ``Error: ...`` line and exit 2, as in every vaegan CLI
(``vaegan.errors``); nothing heavy is imported for ``--help`` / ``--version``.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path

import click

from vaegan import __version__
from vaegan.errors import friendly_errors
from vaegan.extras import requires_extra

from .errors import VaeganError


def _field_type(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def _tuple_item(tp):
    """``tuple[X, ...]`` -> X (such a field is one comma-separated option); anything else -> None."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


def _option_name(f) -> str:
    """The field's option: ``metadata["option"]`` where given (``--attack-steps`` for a field ``steps``), else
    ``--field-name``."""
    return f.metadata.get("option") or "--" + f.name.replace("_", "-")


def _dest(f) -> str:
    return _option_name(f)[2:].replace("-", "_")


def dataclass_options(cls, skip=()):
    """Add one option per scalar field of the dataclass ``cls`` (nested dataclasses flattened): ``--field-name``,
    or the field's ``metadata["option"]``, with ``metadata["help"]`` and ``metadata["choices"]`` where given; a
    ``tuple[X, ...]`` field is one comma-separated option (parsed by ``build_config``)."""

    def deco(fn):
        hints = typing.get_type_hints(cls)
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip:
                continue
            tp = _field_type(hints[f.name])
            if dataclasses.is_dataclass(tp):
                fn = dataclass_options(tp)(fn)
                continue
            name = _option_name(f)
            default = ",".join(map(str, f.default)) if _tuple_item(tp) else f.default
            doc = f"default {default}"
            if "help" in f.metadata:  # a None default is explained by the help itself
                doc = f.metadata["help"] + ("" if default is None else f"; {doc}")
            if tp is bool:
                fn = click.option(f"{name}/--no-{name[2:]}", default=None, help=doc)(fn)
            else:
                kind = (click.Choice(f.metadata["choices"]) if "choices" in f.metadata
                        else str if _tuple_item(tp) else tp)
                fn = click.option(name, type=kind, default=None, show_default=False, help=doc)(fn)
        return fn

    return deco


def build_config(cls, values: dict):
    """Instantiate ``cls`` from click values (None = keep the default), nested dataclasses included; a comma-separated
    ``tuple[X, ...]`` option becomes a tuple of X (a one-line VaeganError naming the option otherwise)."""
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        tp = _field_type(hints[f.name])
        value = values.get(_dest(f))
        if dataclasses.is_dataclass(tp):
            kw[f.name] = build_config(tp, values)
        elif value is not None:
            item = _tuple_item(tp)
            if item is str:
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            elif item is not None:
                value = parse_numbers(_option_name(f), value, item)
            kw[f.name] = value
    return cls(**kw)


DATASET_HELP = ("fashion-mnist (default), mnist, cifar10, svhn, or a folder PATH with train/<class>/* and "
                "test/<class>/*")


def data_options(fn):
    """``--dataset``, ``--image-size``, ``--channels``, ``--download`` (the train commands get them from their config
    dataclasses); the command receives them as one dict ``data`` (keyword arguments of ``vaegan.train.data``)."""

    @functools.wraps(fn)
    def wrapper(*a, dataset, image_size, channels, download, **k):
        return fn(*a, data={"dataset": dataset, "image_size": image_size, "channels": channels,
                            "download": download}, **k)

    for opt in reversed((
            click.option("--dataset", default="fashion-mnist", show_default=True, help=DATASET_HELP),
            click.option("--image-size", type=click.IntRange(1), default=None,
                         help="resize every image to S x S (default: the data set's own)"),
            click.option("--channels", type=click.Choice(["1", "3"]), callback=lambda c, p, v: v and int(v),
                         default=None, help="convert to 1 (grayscale) or 3 (RGB) channels (default: the set's own)"),
            click.option("--download", is_flag=True, help="let torchvision download a missing data set"))):
        wrapper = opt(wrapper)
    return wrapper


def operating_point(checkpoint: str, pvalues: dict):
    """The purifier's operating point: the checkpoint's (key ``purify``), the options given on top."""
    from .checkpoint import load_raw, purify_config

    return purify_config(load_raw(checkpoint), **pvalues)


def parse_grid(text: str) -> dict:
    """``"steps=0,5;lam=0,10"`` -> ``{"steps": (0, 5), "lam": (0.0, 10.0)}`` (types from PurifyConfig)."""
    from .config import PurifyConfig

    hints = typing.get_type_hints(PurifyConfig)
    grid = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, values = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in hints or hints[key] not in (int, float):
            numeric = sorted(k for k, t in hints.items() if t in (int, float))
            raise VaeganError(f"--grid: '{part}' is not FIELD=V1,V2,... with FIELD one of {', '.join(numeric)}")
        grid[key] = parse_numbers(f"--grid {key}", values, hints[key])
    if not grid:
        raise VaeganError("--grid: empty")
    return grid


def parse_numbers(option: str, text: str, cast=float) -> tuple:
    """``"0.05,0.1"`` -> ``(0.05, 0.1)``; a one-line VaeganError naming the option otherwise."""
    try:
        return tuple(cast(v) for v in text.split(","))
    except ValueError:
        raise VaeganError(f"{option} {text!r}: expected comma-separated numbers") from None


def parse_eps(text: str) -> tuple:
    from .config import check_eps

    return tuple(check_eps(e) for e in parse_numbers("--eps", text))


# ---------------------------------------------------------------------------------------------------- vaegan-train

@click.group(help="Train the VGG16 classifier or the VAE-GAN purifier (runs under torchrun for DDP).")
@click.version_option(__version__)
def train_cli():
    pass


def load_config_file(path: str) -> dict:
    """Option values from a TOML config file (``configs/*.toml``): top-level keys, and the keys of any table (e.g.
    ``[model]``) flattened, named as the command's options (``lr_decay_epochs`` or ``lr-decay-epochs``)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise VaeganError(f"config {path}: {e}") from None
    values = {}
    for key, value in data.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for k, v in items:
            k = k.replace("-", "_")
            if k in values:
                raise VaeganError(f"config {path}: {k!r} given twice")
            values[k] = v
    return values


def apply_config_file(ctx: click.Context, path: str | None, values: dict) -> dict:
    """``values`` (the command's click parameters) with those not given on the command line taken from ``path``."""
    if path is None:
        return values
    from click.core import ParameterSource

    params = {p.name: p for p in ctx.command.params if p.name != "config_file"}
    out = dict(values)
    for key, value in load_config_file(path).items():
        if key not in params:
            raise VaeganError(f"config {path}: unknown option {key!r} for {ctx.command_path} (see --help)")
        if ctx.get_parameter_source(key) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        try:
            out[key] = params[key].type_cast_value(ctx, value)
        except click.BadParameter as e:
            raise VaeganError(f"config {path}: {key} = {value!r}: {e.message}") from None
    return out


def _train_command(name: str, cfg_name: str, fn_name: str, doc: str):
    from . import config

    cfg_cls = getattr(config, cfg_name)

    @train_cli.command(name, help=doc)
    @dataclass_options(cfg_cls)
    @click.option("--resume", is_flag=True, help="continue from OUT/ckpt.pt if it exists")
    @click.option("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    @click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                  help="TOML file of this command's options (configs/); options on the command line override it")
    @friendly_errors
    @requires_extra("train")
    def cmd(config_file, **values):
        values = apply_config_file(click.get_current_context(), config_file, values)
        resume, threads = values.pop("resume"), values.pop("threads")
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
    _train_command("purifier", "PurifierConfig", "train_purifier",
                   "Fine-tune a trained VAE-GAN into the purifier of one frozen classifier: classifier-guided, on "
                   "clean, noisy, oblivious- and adaptive-adversarial inputs.")


_lazy_train_commands()


# --------------------------------------------------------------------------------------------------- vaegan-attack

ATTACK_NAMES = ("fgsm", "pgd", "tpgd", "cw")


def _default(kind: str) -> str:
    from .checkpoint import default_path

    return str(default_path(kind))


@click.command(help="Craft an adversarial dataset (test: first 2,000 images; train: first 10,000) against the "
                    "classifier, or against the whole defended pipeline with --defended.")
@click.version_option(__version__)
@click.option("--attack", "name", required=True, help=f"one of {', '.join(ATTACK_NAMES)}")
@click.option("--eps", type=float, default=0.1, show_default=True, help="L-inf budget in [0, 1] (pixels in [0, 1])")
@click.option("--steps", type=int, default=40, show_default=True)
@click.option("--alpha", type=float, default=0.01, show_default=True)
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--n", type=int, default=None, help="images (default 2000 test / 10000 train)")
@click.option("--classifier", type=click.Path(dir_okay=False), default=None, help="default: shipped weights")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="VAE-GAN (with --defended)")
@click.option("--defended", is_flag=True, help="attack classifier(purifier(x)) with full gradients")
@click.option("--out", type=click.Path(file_okay=False), default="adv", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data-root", default=None)
@data_options
@friendly_errors
@requires_extra("train")
def attack_cli(name, eps, steps, alpha, split, n, classifier, checkpoint, defended, out, seed, data_root, data):
    from .attacks import AttackSpec  # validates name and eps before anything heavy

    spec = AttackSpec(name, eps=eps, alpha=alpha, steps=steps, seed=seed)
    import torch

    from . import checkpoint as ckpt_io
    from .attacks import run_attack, save_adversarial
    from .data import test_subset, train_subset
    from vaegan.util import file_sha256

    from .evaluate import accuracy

    from .data import dataset_contract

    classifier = classifier or _default("classifier")
    clf, _ = ckpt_io.load_model(classifier, "classifier")
    ckpt_io.check_data(clf.contract, dataset_contract(data_root=data_root, **data), f"classifier {classifier}",
                       data["dataset"])
    model = clf
    if defended:
        from .purifier import Defended, Purifier

        checkpoint = checkpoint or _default("vaegan")
        vg, _ = ckpt_io.load_model(checkpoint, "vaegan")
        ckpt_io.check_pair(vg, clf, checkpoint, classifier)
        model = Defended(Purifier(vg, operating_point(checkpoint, {}), differentiable=True), clf)
    x, y, idx = (test_subset if split == "test" else train_subset)(n or (2000 if split == "test" else 10000),
                                                                    data_root, **data)
    x_adv, targets = run_attack(model, x, y, spec, progress=True)
    with torch.no_grad():
        acc = accuracy(model, x_adv, y)
    path = save_adversarial(Path(out) / f"{split}_{spec.tag}{'_defended' if defended else ''}_seed{seed}.npz",
                            x_adv, y, idx, spec, targets,
                            {"split": split, "classifier_sha256": file_sha256(classifier),
                             "defended": defended, "attacked_accuracy": acc})
    click.echo(f"{path}: {len(x)} images, {spec.tag}, accuracy of the attacked model {acc:.2f}%")


# ----------------------------------------------------------------------------------------------------- vaegan-eval

@click.command(help="Reproduce Table 1: classifier clean / under attack / after purification (oblivious attacker), "
                    "ablations, Defense-GAN, targeted success; writes report.md, report.json and PNGs. The purifier "
                    "options default to the checkpoint's operating point.")
@click.version_option(__version__)
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="VAE-GAN (default: shipped)")
@click.option("--classifier", type=click.Path(dir_okay=False), default=None, help="default: shipped weights")
@click.option("--n", type=click.IntRange(1), default=None, help="first N test images [default: 2000; --sweep: 300]")
@click.option("--eps", "eps_list", default="0.05,0.1,0.2,0.3", show_default=True, help="comma-separated")
@click.option("--no-targeted", is_flag=True, help="skip the targeted PGD sets")
@click.option("--defense-gan-n", type=int, default=100, show_default=True)
@click.option("--defense-gan-steps", type=int, default=200, show_default=True)
@click.option("--defense-gan-restarts", type=int, default=10, show_default=True)
@dataclass_options(__import__("vaegan.train.config", fromlist=["PurifyConfig"]).PurifyConfig)
@click.option("--quick", is_flag=True, help="smoke run: 100 images, eps 0.1/0.3, PGD-10, Defense-GAN on 20")
@click.option("--sweep", "do_sweep", is_flag=True, help="run the purifier-defaults sweep instead (sweep.md)")
@click.option("--grid", default="steps=0,5,10,20;eta=0.01,0.03;lam=0,1,5", show_default=True,
              help="the sweep's grid: PurifyConfig fields and their values")
@click.option("--adv-dir", default="adv", show_default=True, help="cache of adversarial sets ('' to disable)")
@click.option("--out", default="reports", show_default=True)
@click.option("--data-root", default=None)
@data_options
@friendly_errors
@requires_extra("train")
def eval_cli(checkpoint, classifier, n, eps_list, no_targeted, defense_gan_n, defense_gan_steps,
             defense_gan_restarts, quick, do_sweep, grid, adv_dir, out, data_root, data, **pvalues):
    eps = parse_eps(eps_list)
    from .evaluate import EvalConfig, evaluate, markdown_table, sweep

    checkpoint = checkpoint or _default("vaegan")
    classifier = classifier or _default("classifier")
    pcfg = operating_point(checkpoint, pvalues)
    if do_sweep:
        sweep(checkpoint, classifier, parse_grid(grid), n=n or 300, adv_dir=adv_dir or None, out=out,
              data_root=data_root, base=pcfg, data=data)
        click.echo(f"wrote {out}/sweep.md")
        return
    n = n or 2000
    cfg = EvalConfig(n=n, eps=eps, targeted=not no_targeted, defense_gan_n=defense_gan_n,
                     defense_gan_steps=defense_gan_steps, defense_gan_restarts=defense_gan_restarts,
                     purify=pcfg, adv_dir=adv_dir, out=out, data_root=data_root, **data)
    if quick:
        cfg = EvalConfig(n=min(n, 100), eps=(0.1, 0.3), targeted=False, pgd_steps=10, defense_gan_n=20,
                         defense_gan_steps=50, defense_gan_restarts=2, defense_gan_sets=("clean", "pgd10_eps0.1"), purify=pcfg, adv_dir="", out=out,
                         data_root=data_root, **data)
    report = evaluate(checkpoint, classifier, cfg)
    click.echo(markdown_table(report))
    click.echo(f"wrote {out}/report.md, report.json, grid.png, accuracy_vs_eps.png")
