"""Networks: encoder E, decoder/generator G, discriminator D (the VAE-GAN) and the VGG16-style classifier.

E, G and D use only ops whose input-gradients export cleanly to ONNX and TensorRT: strided Conv / ConvTranspose,
LeakyReLU, eval-mode BatchNorm (folded at export), Linear. No MaxPool, no dropout. All take / return images as
Nx1x28x28 in [0, 1].

Sizes with the default arguments (``VAEGANArgs()``, latent 48, width 24; the previous shipped net): E 208,152 /
G 323,209 / D 61,993 parameters. The shipped weights (``--width 32 --decoder-width 24 --encoder-width 48
--latent-dim 64``): E 634,352 / G 398,473 / D 109,281 (models/MODEL_CARD.md).
Classifier (``ClassifierArgs()``): VGG16 configuration "D" (13 conv + 3 FC) with widths / 4 and BatchNorm,
28x28 input zero-padded to 32x32, 1,022,938 parameters. It normalises its [0, 1] input itself.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from .config import ClassifierArgs, VAEGANArgs

FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530


def _act(args: VAEGANArgs) -> nn.Module:
    return nn.LeakyReLU(args.negative_slope)


class Encoder(nn.Module):
    """E: Nx1x28x28 in [0,1] -> (mu, logvar), each N x latent_dim."""

    def __init__(self, args: VAEGANArgs):
        super().__init__()
        w = args.encoder_width or args.width
        self.width = w
        self.net = nn.Sequential(
            nn.Conv2d(1, w, 4, 2, 1), _act(args),                                    # 14x14
            nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), _act(args),   # 7x7
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1, bias=False), nn.BatchNorm2d(4 * w), _act(args),  # 4x4
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * w * 16, 2 * args.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.net(x)).chunk(2, dim=1)
        return mu, logvar


class Decoder(nn.Module):
    """G: N x latent_dim -> Nx1x28x28 in [0,1]; ``G(z, logits=True)`` gives the pre-sigmoid image (for BCE)."""

    def __init__(self, args: VAEGANArgs):
        super().__init__()
        w = args.decoder_width or args.width
        self.width = w
        self.fc = nn.Linear(args.latent_dim, 4 * w * 7 * 7)
        self.net = nn.Sequential(
            nn.BatchNorm2d(4 * w), _act(args),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), _act(args),  # 14x14
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), _act(args),          # 28x28
            nn.Conv2d(w, 1, 3, 1, 1),
        )

    def forward(self, z: torch.Tensor, logits: bool = False) -> torch.Tensor:
        out = self.net(self.fc(z).view(z.shape[0], 4 * self.width, 7, 7))
        return out if logits else torch.sigmoid(out)


class Discriminator(nn.Module):
    """D: Nx1x28x28 -> logit (N x 1). ``features(x)`` also returns the layer-3 feature map used by the
    VAE-GAN's learned similarity loss (Larsen et al. 2016)."""

    def __init__(self, args: VAEGANArgs):
        super().__init__()
        w = args.width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 4, 2, 1), _act(args),
            nn.Conv2d(w, 2 * w, 4, 2, 1), _act(args),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1), _act(args),
        )
        self.head = nn.Linear(4 * w * 16, 1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(x)
        return f, self.head(f.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[1]


class VAEGAN(nn.Module):
    """Container of E, G, D (one checkpoint, one state dict)."""

    def __init__(self, args: VAEGANArgs | None = None):
        super().__init__()
        self.args = args or VAEGANArgs()
        self.encoder = Encoder(self.args)
        self.decoder = Decoder(self.args)
        self.discriminator = Discriminator(self.args)

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
        new = VAEGAN(args)
    with torch.no_grad():
        for part in ("encoder", "decoder", "discriminator"):
            _grow_into(getattr(vg, part), getattr(new, part))
    return new.eval()


VGG16_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """VGG16 (Simonyan & Zisserman 2015, configuration "D": 13 conv + 3 FC) for 1x28x28 inputs in [0, 1].

    Widths are divided by ``width_div``; BatchNorm after each conv; the input is normalised with the Fashion-MNIST
    mean/std and zero-padded to 32x32 so the five 2x2 max-pools end at 1x1.
    """

    def __init__(self, args: ClassifierArgs | None = None):
        super().__init__()
        self.args = args or ClassifierArgs()
        layers: list[nn.Module] = []
        c = 1
        for v in VGG16_D:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                v = v // self.args.width_div
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        f = self.args.fc_width
        self.classifier = nn.Sequential(
            nn.Linear(c, f), nn.ReLU(inplace=True), nn.Dropout(0.3),
            nn.Linear(f, f), nn.ReLU(inplace=True), nn.Dropout(0.3),
            nn.Linear(f, self.args.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - FMNIST_MEAN) / FMNIST_STD
        x = F.pad(x, (2, 2, 2, 2), value=(0.0 - FMNIST_MEAN) / FMNIST_STD)
        return self.classifier(self.features(x).flatten(1))


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
