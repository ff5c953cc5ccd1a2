"""Networks: encoder E, decoder/generator G, discriminator D (the VAE-GAN) and the VGG16-style classifier.

E, G and D use only ops whose input-gradients export cleanly to ONNX and TensorRT: strided Conv / ConvTranspose,
LeakyReLU, eval-mode BatchNorm (folded at export), Linear. No MaxPool, no dropout. All take / return images as
N x C x H x W in [0, 1], sized from the image contract (``vaegan.runtime.contract``; Fashion-MNIST's 1 x 28 x 28 by
default). E and D halve the image twice (4x4 stride-2 convs) and once more with a 3x3 stride-2 conv (28 -> 14 -> 7
-> 4, 32 -> 16 -> 8 -> 4); G starts from an H/4 x W/4 grid and doubles it twice. So H and W must be multiples of 4
(at least 8): ``ImageContract.check_vaegan_size`` is the one check; the data loader resizes (``--image-size``).

Sizes with the default arguments (``VAEGANArgs()``, latent 48, width 24): E 208,152 /
G 323,209 / D 61,993 parameters. The shipped weights (``--width 32 --decoder-width 24 --encoder-width 48
--latent-dim 64``): E 634,352 / G 398,473 / D 109,281 (docs/training.md).
Classifier (``ClassifierArgs()``): VGG16 configuration "D" (13 conv + 3 FC) with widths / 4 and BatchNorm, the
input zero-padded to the next multiple of 32 in each dimension (28x28 -> 32x32), 1,022,938 parameters for
Fashion-MNIST. It normalises its [0, 1] input itself with the contract's per-channel mean / std.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from vaegan.runtime.contract import FASHION_MNIST, ContractError, ImageContract

from .config import ClassifierArgs, VAEGANArgs


def _grid(contract: ImageContract, div: int) -> tuple[int, int]:
    return -(-contract.height // div), -(-contract.width // div)


def _act(args: VAEGANArgs) -> nn.Module:
    return nn.LeakyReLU(args.negative_slope)


class Encoder(nn.Module):
    """E: N x C x H x W in [0,1] -> (mu, logvar), each N x latent_dim."""

    def __init__(self, args: VAEGANArgs, contract: ImageContract = FASHION_MNIST):
        super().__init__()
        w = args.encoder_width or args.width
        self.width = w
        self.net = nn.Sequential(
            nn.Conv2d(contract.channels, w, 4, 2, 1), _act(args),                    # H/2 (14x14)
            nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), _act(args),   # H/4 (7x7)
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1, bias=False), nn.BatchNorm2d(4 * w), _act(args),  # ceil(H/8) (4x4)
            nn.Flatten(),
        )
        gh, gw = _grid(contract, 8)
        self.head = nn.Linear(4 * w * gh * gw, 2 * args.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.net(x)).chunk(2, dim=1)
        return mu, logvar


class Decoder(nn.Module):
    """G: N x latent_dim -> N x C x H x W in [0,1]; ``G(z, logits=True)`` gives the pre-sigmoid image (for BCE)."""

    def __init__(self, args: VAEGANArgs, contract: ImageContract = FASHION_MNIST):
        super().__init__()
        w = args.decoder_width or args.width
        self.width = w
        self.grid = (contract.height // 4, contract.width // 4)                                      # 7x7
        self.fc = nn.Linear(args.latent_dim, 4 * w * self.grid[0] * self.grid[1])
        self.net = nn.Sequential(
            nn.BatchNorm2d(4 * w), _act(args),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), _act(args),  # H/2 (14)
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), _act(args),          # H (28)
            nn.Conv2d(w, contract.channels, 3, 1, 1),
        )

    def forward(self, z: torch.Tensor, logits: bool = False) -> torch.Tensor:
        out = self.net(self.fc(z).view(z.shape[0], 4 * self.width, *self.grid))
        return out if logits else torch.sigmoid(out)


class Discriminator(nn.Module):
    """D: N x C x H x W -> logit (N x 1). ``features(x)`` also returns the layer-3 feature map used by the
    VAE-GAN's learned similarity loss (Larsen et al. 2016)."""

    def __init__(self, args: VAEGANArgs, contract: ImageContract = FASHION_MNIST):
        super().__init__()
        w = args.width
        self.body = nn.Sequential(
            nn.Conv2d(contract.channels, w, 4, 2, 1), _act(args),
            nn.Conv2d(w, 2 * w, 4, 2, 1), _act(args),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1), _act(args),
        )
        gh, gw = _grid(contract, 8)
        self.head = nn.Linear(4 * w * gh * gw, 1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(x)
        return f, self.head(f.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[1]


class VAEGAN(nn.Module):
    """Container of E, G, D (one checkpoint, one state dict)."""

    def __init__(self, args: VAEGANArgs | None = None, contract: ImageContract = FASHION_MNIST):
        super().__init__()
        contract.check_vaegan_size("VAE-GAN")
        self.args = args or VAEGANArgs()
        self.contract = contract
        self.encoder = Encoder(self.args, contract)
        self.decoder = Decoder(self.args, contract)
        self.discriminator = Discriminator(self.args, contract)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The VAE's own reconstruction G(mu_E(x)) (purification with T = 0)."""
        return self.decoder(self.encoder(x)[0])


def _grow_into(old: nn.Module, new: nn.Module) -> None:
    """Copy ``old``'s parameters into the same-structured, wider ``new`` so that ``new`` computes ``old``'s function:
    every weight block between old channels is copied; weights from new channels into old ones are zeroed; weights
    into new channels keep ``new``'s fresh init. Channel-major flattening (Linear after / before a feature map) puts
    the old channels first, so the same block rule holds for Linear layers."""
    for a, b in zip(old.modules(), new.modules()):
        if isinstance(a, nn.BatchNorm2d):
            c = a.num_features
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(b, name)[:c] = getattr(a, name)
            b.num_batches_tracked.copy_(a.num_batches_tracked)
        elif isinstance(a, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            # Conv2d / Linear weight: out x in (x k x k); ConvTranspose2d: in x out x k x k
            cin, cout = (0, 1) if isinstance(a, nn.ConvTranspose2d) else (1, 0)
            n_in, n_out = a.weight.shape[cin], a.weight.shape[cout]
            idx = [slice(None)] * a.weight.dim()
            idx[cin], idx[cout] = slice(0, n_in), slice(0, n_out)
            b.weight[tuple(idx)] = a.weight
            idx[cin] = slice(n_in, None)
            b.weight[tuple(idx)] = 0.0  # new channels -> existing ones: zero, the function is unchanged
            if a.bias is not None:
                b.bias[:n_out] = a.bias


def widen(vg: VAEGAN, encoder_width: int | None = None, decoder_width: int | None = None, seed: int = 0) -> VAEGAN:
    """A copy of ``vg`` whose E and / or G have the given (larger) widths and compute the same function (Net2Net-style
    growth, Chen et al. 2016): existing channels keep their weights; each new channel starts with a fresh layer's
    random weights into it and zero weights out of it into the existing channels, so the outputs do not change until
    training moves those zeros. D, and a part whose width is None or unchanged, are copied as they are."""
    widths = {"encoder": (encoder_width, vg.encoder.width), "decoder": (decoder_width, vg.decoder.width)}
    for part, (w, w0) in widths.items():
        if w is not None and w < w0:
            raise ValueError(f"{part} width {w} is smaller than the current {w0}: a part can only grow")
    args = replace(vg.args, encoder_width=encoder_width or vg.args.encoder_width,
                   decoder_width=decoder_width or vg.args.decoder_width)
    with torch.random.fork_rng(devices=[]):  # the new channels' init is seeded; the caller's generator is left alone
        torch.manual_seed(seed)
        new = VAEGAN(args, vg.contract)
    with torch.no_grad():
        for part in ("encoder", "decoder", "discriminator"):
            _grow_into(getattr(vg, part), getattr(new, part))
    return new.eval()


VGG16_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """VGG16 (Simonyan & Zisserman 2015, configuration "D": 13 conv + 3 FC) for the contract's C x H x W inputs in
    [0, 1] (Fashion-MNIST's 1 x 28 x 28 by default).

    Widths are divided by ``width_div``; BatchNorm after each conv; the input is normalised with the contract's
    per-channel mean / std and zero-padded (centred) to the next multiples of 32, so the five 2x2 max-pools end at
    H/32 x W/32 (1 x 1 for 28 x 28 and 32 x 32 inputs).
    """

    def __init__(self, args: ClassifierArgs | None = None, contract: ImageContract = FASHION_MNIST):
        super().__init__()
        self.args = args or ClassifierArgs()
        if self.args.num_classes is not None and self.args.num_classes != contract.num_classes:
            raise ContractError(f"class-count mismatch: the classifier has {self.args.num_classes} outputs, its "
                                f"image contract {contract.num_classes} classes")
        self.contract = contract
        ph, pw = (-(-d // 32) * 32 - d for d in (contract.height, contract.width))
        self.pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        self.register_buffer("mean", torch.tensor(contract.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(contract.std).view(1, -1, 1, 1), persistent=False)
        layers: list[nn.Module] = []
        c = contract.channels
        for v in VGG16_D:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                v = v // self.args.width_div
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        f = self.args.fc_width
        cells = ((contract.height + ph) // 32) * ((contract.width + pw) // 32)
        self.classifier = nn.Sequential(
            nn.Linear(c * cells, f), nn.ReLU(inplace=True), nn.Dropout(0.3),
            nn.Linear(f, f), nn.ReLU(inplace=True), nn.Dropout(0.3),
            nn.Linear(f, contract.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.contract.channels == 1:  # python scalars: the shipped weights' exact arithmetic
            m, s = self.contract.mean[0], self.contract.std[0]
            x = F.pad((x - m) / s, self.pad, value=(0.0 - m) / s)
        else:  # zero padding of the [0, 1] image, then per-channel normalisation: the same function
            x = (F.pad(x, self.pad) - self.mean) / self.std
        return self.classifier(self.features(x).flatten(1))


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
