"""One spec per exported graph (optimum-onnx style): file, input / output names, shapes, dtypes, dynamic axes,
tolerance, the torch function that is traced, the torch reference it is validated against, and dummy inputs.

Shapes use the contract's symbols (docs/ARTIFACTS.md): ``N`` batch, ``R`` restarts, ``L`` latent size (an int once
the checkpoint is known); images are ``N x C x H x W`` and logits ``N x K`` from the image contract
(``vaegan.runtime.contract``, the checkpoint's). The traced functions run on BatchNorm-folded copies of the networks; the references run
on the checkpoint's own (unfolded) modules with ``torch.autograd`` -- so folding is validated too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from vaegan.runtime.contract import FASHION_MNIST, ImageContract
from vaegan.train.purifier import latent_loss, latent_objective


def image_shape(contract: ImageContract, batch="N") -> tuple:
    """An image batch's shape in a spec: (batch, C, H, W) of the contract."""
    return (batch, *contract.shape)

# Tolerances (|onnx - torch| <= atol + rtol * max|torch| over each output, see validate.compare), fp32 on CPU, against the unfolded torch module.
TOL_FORWARD = {"atol": 1e-5, "rtol": 1e-4}
TOL_GRAD = {"atol": 1e-5, "rtol": 1e-4}
TOL_LOOP = {"atol": 1e-4, "rtol": 1e-4}   # T steps of descent accumulate fp32 rounding


@dataclass
class IO:
    name: str
    shape: tuple          # ints and symbol strings
    dtype: str = "float32"

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class GraphSpec:
    name: str
    inputs: list[IO]
    outputs: list[IO]
    tolerance: dict
    # fn(nets) -> the function traced (None for graphs assembled from pieces, i.e. purify)
    build: Callable | None = None
    # ref(nets, **inputs) -> tuple of reference outputs (torch, autograd, unfolded modules)
    reference: Callable | None = None
    kind: str = "forward"                      # forward | gradient | fused
    extra: dict = field(default_factory=dict)

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {io.name: {i: d for i, d in enumerate(io.shape) if isinstance(d, str)}
                for io in self.inputs + self.outputs if any(isinstance(d, str) for d in io.shape)}

    def manifest_entry(self) -> dict:
        return {
            "file": self.file,
            "inputs": [io.to_json() for io in self.inputs],
            "outputs": [io.to_json() for io in self.outputs],
            "dynamic_axes": {k: {str(a): s for a, s in v.items()} for k, v in self.dynamic_axes.items()},
            "tolerance": dict(self.tolerance),
        }


@dataclass
class Nets:
    """The networks: ``vg``/``clf`` as loaded (reference), ``vgf``/``clff`` BatchNorm-folded (exported)."""
    vg: torch.nn.Module
    clf: torch.nn.Module
    vgf: torch.nn.Module
    clff: torch.nn.Module

    @property
    def latent(self) -> int:
        return self.vg.args.latent_dim

    @property
    def contract(self) -> ImageContract:
        return self.vg.contract


# ------------------------------------------------------------------------------------------------ torch functions

def _input_grad(out_fn, inp: torch.Tensor, v=None):
    inp = inp.detach().requires_grad_(True)
    with torch.enable_grad():
        out = out_fn(inp)
        if v is None:
            g, = torch.autograd.grad(out.sum(), inp)
        else:
            g, = torch.autograd.grad(out, inp, v)
    return g


def encoder_fwd(vg):
    return lambda x: vg.encoder(x)


def decoder_fwd(vg):
    return lambda z: vg.decoder(z)


def discriminator_fwd(vg):
    return lambda x: vg.discriminator(x)


def classifier_fwd(clf):
    return lambda x: clf(x)


def encoder_vjp(vg):
    """(x, v) -> J_mu(x)^T v."""
    return lambda x, v: _input_grad(lambda t: vg.encoder(t)[0], x, v)


def decoder_vjp(vg):
    """(z, v) -> J_G(z)^T v."""
    return lambda z, v: _input_grad(vg.decoder, z, v)


def discriminator_grad(vg):
    """x -> (d log sigmoid(D(x)) / dx, D(x))."""
    def fn(x):
        g = _input_grad(lambda t: F.logsigmoid(vg.discriminator(t)), x)
        return g, vg.discriminator(x)
    return fn


def purify_step(vg):
    """One step of latent-mode descent: (z, vel, x, eta, lam, momentum) -> (z', vel'),
    vel' = momentum * vel + grad_z L(z), z' = z - eta * vel' (``vaegan.train.purifier._descend``)."""
    def fn(z, vel, x, eta, lam, momentum):
        g = _input_grad(lambda t: latent_loss(vg, t, x, lam), z)
        vel2 = momentum * vel + g
        return z - eta * vel2, vel2
    return fn


def purify_loss(vg):
    """(z, x, lam) -> (per-row objective L(z), shape (B,); the image G(z)): the final restart selection and the
    purified output share this one decode."""
    return lambda z, x, lam: latent_objective(vg, z, x, lam)


def _ref(make, attr="vg"):
    def ref(nets, *args):
        out = make(getattr(nets, attr))(*args)
        out = out if isinstance(out, tuple) else (out,)
        return tuple(o.detach() for o in out)
    return ref


def _build(make, attr="vgf"):
    return lambda nets: make(getattr(nets, attr))


def _purify_ref(nets, x, noise, steps, eta, lam, momentum):
    from vaegan.train.config import PurifyConfig
    from vaegan.train.purifier import purify

    cfg = PurifyConfig(steps=int(steps), eta=float(eta), lam=float(lam), momentum=float(momentum),
                       restarts=int(noise.shape[0]))
    r = purify(nets.vg, x, cfg, noise=noise)
    return r.x.detach(), r.loss.detach(), r.z.detach()


# ---------------------------------------------------------------------------------------------------------- specs

def graph_specs(latent: int, contract: ImageContract = FASHION_MNIST) -> dict[str, GraphSpec]:
    L = latent
    IMAGE = image_shape(contract)
    specs = [
        GraphSpec("encoder", [IO("x", IMAGE)], [IO("mu", ("N", L)), IO("logvar", ("N", L))], TOL_FORWARD,
                  _build(encoder_fwd), _ref(encoder_fwd)),
        GraphSpec("decoder", [IO("z", ("N", L))], [IO("x", IMAGE)], TOL_FORWARD,
                  _build(decoder_fwd), _ref(decoder_fwd)),
        GraphSpec("discriminator", [IO("x", IMAGE)], [IO("logit", ("N", 1))], TOL_FORWARD,
                  _build(discriminator_fwd), _ref(discriminator_fwd)),
        GraphSpec("classifier", [IO("x", IMAGE)], [IO("logits", ("N", contract.num_classes))], TOL_FORWARD,
                  _build(classifier_fwd, "clff"), _ref(classifier_fwd, "clf")),
        GraphSpec("encoder_vjp", [IO("x", IMAGE), IO("v", ("N", L))], [IO("grad_x", IMAGE)], TOL_GRAD,
                  _build(encoder_vjp), _ref(encoder_vjp), kind="gradient"),
        GraphSpec("decoder_vjp", [IO("z", ("N", L)), IO("v", IMAGE)], [IO("grad_z", ("N", L))], TOL_GRAD,
                  _build(decoder_vjp), _ref(decoder_vjp), kind="gradient"),
        GraphSpec("discriminator_grad", [IO("x", IMAGE)], [IO("grad_x", IMAGE), IO("logit", ("N", 1))], TOL_GRAD,
                  _build(discriminator_grad), _ref(discriminator_grad), kind="gradient"),
        GraphSpec("purify",
                  [IO("x", IMAGE), IO("noise", ("R", "N", L)), IO("steps", (), "int64"), IO("eta", ()),
                   IO("lam", ()), IO("momentum", ())],
                  [IO("purified", IMAGE), IO("loss", ("N",)), IO("z", ("N", L))], TOL_LOOP,
                  None, _purify_ref, kind="fused"),
    ]
    return {s.name: s for s in specs}


def piece_specs(latent: int, contract: ImageContract = FASHION_MNIST) -> dict[str, GraphSpec]:
    """Graphs exported only to be assembled into purify.onnx (not written on their own)."""
    L = latent
    B = ("B", L)
    XB = image_shape(contract, "B")
    return {
        "purify_step": GraphSpec(
            "purify_step",
            [IO("z", B), IO("vel", B), IO("x", XB), IO("eta", ()), IO("lam", ()), IO("momentum", ())],
            [IO("z_next", B), IO("vel_next", B)], TOL_GRAD, _build(purify_step), _ref(purify_step), kind="gradient"),
        "purify_loss": GraphSpec(
            "purify_loss", [IO("z", B), IO("x", XB), IO("lam", ())],
            [IO("loss", ("B",)), IO("xg", XB)],
            TOL_FORWARD, _build(purify_loss), _ref(purify_loss)),
    }


# ---------------------------------------------------------------------------------------------------- dummy inputs

def dummy_inputs(spec: GraphSpec, n: int, latent: int, images: torch.Tensor, gen: torch.Generator,
                 purify_cfg=None, restarts: int = 2) -> dict[str, torch.Tensor]:
    """Inputs for ``spec`` at batch ``n``: real images where the graph takes images, N(0, 1) elsewhere.
    Scalars of the purification loop come from ``purify_cfg``; the restart noise from ``restart_noise``."""
    from vaegan.train.config import PurifyConfig
    from vaegan.train.purifier import restart_noise

    cfg = purify_cfg or PurifyConfig()
    x = images[:n]
    if x.shape[0] < n:
        x = x.repeat((n + x.shape[0] - 1) // x.shape[0], 1, 1, 1)[:n]
    sizes = {"N": n, "B": n, "R": restarts}
    out = {}
    for io in spec.inputs:
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in io.shape)
        if io.name == "x":
            out["x"] = x.clone()
        elif io.name == "noise":
            out["noise"] = restart_noise(PurifyConfig(restarts=restarts, noise=cfg.noise, seed=cfg.seed), n, latent)
        elif io.name == "steps":
            out["steps"] = torch.tensor(cfg.steps, dtype=torch.int64)
        elif io.name in ("eta", "lam", "momentum"):
            val = getattr(cfg, io.name)
            if io.name == "momentum" and spec.name == "purify_step":
                val = 0.5  # exercise the momentum path of the step
            out[io.name] = torch.tensor(val, dtype=torch.float32)
        else:
            out[io.name] = torch.randn(shape, generator=gen)
    return out
